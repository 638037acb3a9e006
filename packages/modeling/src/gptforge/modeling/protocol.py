"""The contract every gptforge language model meets, as a type mypy checks.

GPT, LLaMA and MM-Rec satisfy :class:`LanguageModel` structurally (no base class needed);
:func:`~gptforge.modeling.build_model` and the loaders return it, and sampling, training and
the services take it instead of a bare ``nn.Module``. Besides the model's own interface it
lists the few ``nn.Module`` members those callers use, so a caller needs no cast.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol, Self

import torch
from torch import Tensor, nn


class LanguageModel(Protocol):
    """A causal language model: logits and loss, caches for decoding, parameter counts.

    ``forward`` semantics (``docs/contracts.md``): ``idx`` (B, T) token ids; ``targets``
    (B, T) next-token ids (``-100`` ignored) give a mean cross-entropy; ``input_pos`` (T,) or
    per-row (B, T) positions decode on the caches set up by :meth:`setup_caches` (an int ``p``
    means ``arange(p, p + T)``); ``rows`` (B,) picks the cache rows of the batch (default
    0..B-1); ``return_logits=False`` with targets returns ``(None, loss)``.
    """

    config: Any
    training: bool

    def __call__(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        input_pos: Tensor | int | None = None,
        *,
        rows: Tensor | None = None,
        return_logits: bool = True,
    ) -> tuple[Tensor | None, Tensor | None]:
        """``(logits, loss)``: logits (B, T, vocab_size) or None, loss a scalar or None."""
        ...

    def setup_caches(
        self,
        max_batch_size: int,
        max_seq_len: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        """Allocate (or zero, when the shape is unchanged) ``max_batch_size`` cache rows."""
        ...

    def reset_caches(self) -> None:
        """Zero every cache row, keeping the allocation."""
        ...

    def remove_caches(self) -> None:
        """Drop the caches and free their memory."""
        ...

    @property
    def max_context(self) -> int | None:
        """Most positions one sequence may span; None when unbounded (a recurrent model)."""
        ...

    @property
    def has_caches(self) -> bool:
        """Whether :meth:`setup_caches` has attached caches."""
        ...

    def num_params(self, non_embedding: bool = False, include_padding: bool = False) -> int:
        """Parameter count, tied weights once."""
        ...

    def resize_token_embeddings(self, new_vocab_size: int) -> None:
        """Grow or shrink the vocabulary; ``config.vocab_size`` follows."""
        ...

    def tie_weights(self) -> None:
        """Point the LM head at the token embedding when the config ties them."""
        ...

    # The nn.Module members the callers of a model use.
    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]: ...

    def named_buffers(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Tensor]]: ...

    def modules(self) -> Iterator[nn.Module]: ...

    def state_dict(self, *, prefix: str = "", keep_vars: bool = False) -> dict[str, Any]: ...

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any: ...

    def eval(self) -> Self: ...

    def train(self, mode: bool = True) -> Self: ...

    def to(self, *args: Any, **kwargs: Any) -> Self: ...


__all__ = ["LanguageModel"]
