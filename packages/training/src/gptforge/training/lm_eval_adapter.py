"""An lm-evaluation-harness model for gptforge checkpoints, registered as ``gptforge``.

Importing this module registers the model class, so in Python::

    import lm_eval, gptforge.training.lm_eval_adapter  # noqa: F401
    lm_eval.simple_evaluate(model="gptforge", model_args="ckpt=runs/sft", tasks=["hellaswag"])

and on the command line (lm-eval's own CLI, with the class registered first)::

    python -m gptforge.training.lm_eval_adapter --model gptforge --model_args ckpt=runs/sft \
        --tasks hellaswag

Requests are scored the way lm-eval's ``hf`` backend scores them (same context/continuation
split, same left truncation, same rolling windows), so a gptforge checkpoint and its Hugging
Face export get the same numbers. Needs ``pip install lm-eval``.
"""

from __future__ import annotations

from typing import Any

try:
    import lm_eval.models  # noqa: F401 - lm-eval fills its registry lazily only while it is empty
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the lm-evaluation-harness adapter needs lm-eval: pip install lm-eval"
    ) from exc


@register_model("gptforge")
class GPTForgeLM(LM):  # type: ignore[misc]
    """lm-eval model over a gptforge run/model directory (LoRA runs and HF directories too).

    Args:
        ckpt: The directory to load.
        device: ``cpu``, ``cuda``, ``auto``...
        max_gen_toks: Default most new tokens of ``generate_until``.
    """

    def __init__(self, ckpt: str, device: str = "cpu", max_gen_toks: int = 256, **_: Any) -> None:
        super().__init__()
        import torch
        from gptforge.conversion import load_any

        self.model, self.tokenizer, _info = load_any(
            ckpt, device=device, dtype=torch.float32, require_tokenizer=True
        )
        config: Any = self.model.config
        self.max_length = int(config.block_size)
        self.max_gen_toks = int(max_gen_toks)
        self.eot = int(self.tokenizer.eot_token)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> Any:
        """``ckpt=DIR,device=cpu`` -> the model (lm-eval's ``--model_args``)."""
        from lm_eval.utils import simple_parse_args_string

        args = simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if k == "device" and v}
        return cls(**{**args, **extra})

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, disallowed_special=()))

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        from gptforge.training.evaluation import encode_pair

        if context == "":  # score the continuation after the end-of-text token, as hf does
            return [self.eot], self._encode(continuation)
        return encode_pair(self.tokenizer, context, continuation)

    def loglikelihood(
        self, requests: list[Any], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), is_greedy)`` per request."""
        from gptforge.training.evaluation import continuation_logprobs

        pairs = [self._pair(*req.args) for req in requests]
        return continuation_logprobs(self.model, pairs)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, in disjoint windows of the model's context."""
        from gptforge.training.evaluation import continuation_logprobs
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for req in requests:
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self._encode(req.args[0]),
                    prefix_token=self.eot,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            out.append(sum(s for s, _ in continuation_logprobs(self.model, windows)))
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut at the first stop string (and the end-of-text token)."""
        from gptforge.training.textgen import new_tokens

        out = []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0:
                raise ValueError(
                    "the gptforge lm-eval model decodes greedily; drop do_sample/temperature "
                    "from the task's generation_kwargs"
                )
            ids = self._encode(context)[-max(1, self.max_length - max_gen) :]
            new = new_tokens(self.model, [ids], max_new_tokens=max_gen, stop_ids=[self.eot])[0]
            text = self.tokenizer.decode(new)
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
        return out


def main() -> None:
    """lm-eval's command line with the ``gptforge`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
