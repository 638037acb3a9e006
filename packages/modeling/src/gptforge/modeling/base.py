"""What every gptforge language model shares: parameter counting, tying the LM head to the
token embedding and resizing the vocabulary.

A family module subclasses :class:`CausalLM`, sets the names of its embedding modules and owns
its ``forward`` (embeddings, blocks, final norm, then :func:`~gptforge.modeling.loss.head_and_loss`).
The two transformer families take their KV caches from
:class:`~gptforge.modeling.kv_cache.KVCacheMixin`; MM-Rec has its own recurrent state cache.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from gptforge.modeling.kv_cache import CacheOverflowError
from gptforge.modeling.loss import IGNORE_INDEX
from torch import Tensor, nn


def _dropout(p: float) -> nn.Module:
    """``nn.Dropout(p)``, or ``nn.Identity`` for p == 0 (no per-call work in a decode step)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class CausalLM(nn.Module):
    """Base class of the decoder-only models.

    Subclasses set ``token_embedding_name`` (and ``position_embedding_name`` when positions are
    learned) and own an ``lm_head`` ``nn.Linear`` without bias.
    """

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """GPT-2 initialisation shared by the transformer families: N(0, 0.02), zero biases."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    token_embedding_name: ClassVar[str] = "wte"
    position_embedding_name: ClassVar[str | None] = None
    lm_head: nn.Linear
    config: Any

    # ---- parameters ---------------------------------------------------------------------
    def _embedding_params(self) -> int:
        n = getattr(self, self.token_embedding_name).weight.numel()
        if self.position_embedding_name is not None:
            n += getattr(self, self.position_embedding_name).weight.numel()
        return n

    def num_params(self, non_embedding: bool = False, include_padding: bool = False) -> int:
        """Count parameters (tied weights once).

        Args:
            non_embedding: count only the transformer body: leave out the token and position
                embedding tables and the LM head, tied or not (Kaplan et al.'s ``N``).
            include_padding: count the unused rows of a padded vocabulary (what is allocated).
        """
        seen: set[int] = set()
        allocated = 0
        for p in self.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                allocated += p.numel()
        head = self.lm_head.weight
        if non_embedding:  # every padding row lives in the embedding or the head
            untied_head = 0 if self.config.tie_embeddings else head.numel()
            return allocated - self._embedding_params() - untied_head
        if include_padding:
            return allocated
        pad_rows = head.size(0) - self.config.vocab_size
        return allocated - pad_rows * head.size(1) * (1 if self.config.tie_embeddings else 2)

    # ---- vocabulary ---------------------------------------------------------------------
    def tie_weights(self) -> None:
        """Make ``lm_head`` share the token embedding's weight when the config ties them."""
        if self.config.tie_embeddings:
            self.lm_head.weight = getattr(self, self.token_embedding_name).weight

    @torch.no_grad()
    def resize_token_embeddings(self, new_vocab_size: int) -> None:
        """Grow or shrink the vocabulary; new rows are the mean of the old real rows.

        Updates ``config.vocab_size``; ties are kept.

        Args:
            new_vocab_size: the new real vocabulary size (padding is recomputed).
        """
        if not isinstance(new_vocab_size, int) or new_vocab_size < 1:
            raise ValueError(f"new_vocab_size must be a positive int, got {new_vocab_size!r}")
        old_V = self.config.vocab_size
        self.config.vocab_size = new_vocab_size
        new_Vp = self.config.padded_vocab_size
        keep = min(old_V, new_vocab_size)

        def resized(weight: Tensor) -> Tensor:
            out = weight.new_empty(new_Vp, weight.size(1))  # (Vp', C)
            out[:keep] = weight[:keep]
            out[keep:] = weight[:old_V].mean(dim=0)
            return out

        emb: nn.Embedding = getattr(self, self.token_embedding_name)
        emb.weight = nn.Parameter(resized(emb.weight), requires_grad=emb.weight.requires_grad)
        emb.num_embeddings = new_Vp
        if self.config.tie_embeddings:
            self.lm_head.weight = emb.weight
        else:
            head = self.lm_head.weight
            self.lm_head.weight = nn.Parameter(resized(head), requires_grad=head.requires_grad)
        self.lm_head.out_features = new_Vp


__all__ = ["IGNORE_INDEX", "CacheOverflowError", "CausalLM"]
