"""The lm-eval ``gptforge`` model gives the numbers of lm-eval's ``hf`` model on our HF export."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

MC = [
    {
        "context": "The quick brown fox",
        "choices": [" jumps", " sleeps", " reads a book"],
        "label": 0,
    },
    {"context": "Note 3: the red", "choices": [" fox", " dog", " lazy fox jumps"], "label": 1},
    {"context": "Two plus two is ", "choices": ["four", "five", "a number"], "label": 0},
]
DOCS = [
    {"text": "The quick brown fox jumps over the lazy dog. " * 4, "context": "Note 1:", "answer": " the"},
    {"text": "Note 5: the tired fox rests, then the happy dog runs.", "context": "The", "answer": " fox"},
]  # fmt: skip


def _tasks(root, data):
    for name, rows in (("mc", MC), ("docs", DOCS)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = f"""
        dataset_path: json
        test_split: test
        dataset_kwargs:
          data_files:
            test: {data}/{{}}.jsonl
    """
    specs = {
        "gf_mc": ("mc", """
            output_type: multiple_choice
            doc_to_text: "{{context}}"
            doc_to_choice: "{{choices}}"
            doc_to_target: "{{label}}"
            metric_list:
              - metric: acc
              - metric: acc_norm
        """),
        "gf_rolling": ("docs", """
            output_type: loglikelihood_rolling
            doc_to_text: ""
            doc_to_target: "{{text}}"
            metric_list:
              - metric: word_perplexity
              - metric: byte_perplexity
              - metric: bits_per_byte
        """),
        "gf_gen": ("docs", """
            output_type: generate_until
            doc_to_text: "{{context}}"
            doc_to_target: "{{answer}}"
            generation_kwargs:
              until: ["."]
              max_gen_toks: 6
              do_sample: false
            metric_list:
              - metric: exact_match
        """),
    }  # fmt: skip
    for task, (file, body) in specs.items():
        text = f"task: {task}\n" + textwrap.dedent(common).format(file) + textwrap.dedent(body)
        (root / f"{task}.yaml").write_text(text)
    return list(specs)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # lm-eval and transformers imports are slow on a busy CPU
def test_lm_eval_gptforge_model_equals_hf_backend(tmp_path, tokenizer_dir):
    import gptforge.training.lm_eval_adapter  # noqa: F401 - registers "gptforge"
    from gptforge.conversion import export_hf
    from gptforge.modeling import build_model, get_config
    from gptforge.modeling.io import save_model_dir
    from gptforge.tokenizer import Tokenizer
    from lm_eval.tasks import TaskManager

    torch.manual_seed(0)
    n_vocab = Tokenizer.from_dir(tokenizer_dir).n_vocab
    model = build_model(get_config("debug", vocab_size=n_vocab, block_size=32))
    ours = save_model_dir(model, tmp_path / "ours", tokenizer_dir=tokenizer_dir)
    hf_dir = export_hf(ours, tmp_path / "hf")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "data").mkdir()
    tasks = _tasks(tmp_path / "tasks", tmp_path / "data")
    manager = TaskManager(include_path=str(tmp_path / "tasks"))

    def run(model_name, model_args):
        return lm_eval.simple_evaluate(
            model=model_name,
            model_args=model_args,
            tasks=tasks,
            task_manager=manager,
            log_samples=True,
            device="cpu",
            batch_size=1,
        )

    got = run("gptforge", f"ckpt={ours}")
    ref = run("hf", f"pretrained={hf_dir},dtype=float32")
    for task in tasks:
        for key, value in ref["results"][task].items():
            if isinstance(value, float) and "stderr" not in key:
                assert got["results"][task][key] == pytest.approx(value, rel=1e-4), (task, key)
        got_resps = [s["filtered_resps"] for s in got["samples"][task]]
        ref_resps = [s["filtered_resps"] for s in ref["samples"][task]]
        if task == "gf_gen":
            assert got_resps == ref_resps
        else:
            for a, b in zip(got_resps, ref_resps, strict=True):
                flat_a = [x[0] if isinstance(x, (list, tuple)) else x for x in a]
                flat_b = [x[0] if isinstance(x, (list, tuple)) else x for x in b]
                assert flat_a == pytest.approx(flat_b, rel=1e-4, abs=1e-4), task
