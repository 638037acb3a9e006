"""What every gptforge language model shares: the interface training, sampling, conversion and
services rely on (caches, parameter counting, the padded LM head, vocabulary resizing).

A family module subclasses :class:`CausalLM`, sets the names of its embedding modules and
implements ``hidden_states`` (embeddings to final norm; :meth:`CausalLM.forward` checks the
inputs, builds the positions and the attention plan and applies the head), or its own
``forward`` (MM-Rec). Everything here works off those names and the ``KVCache`` modules its
attention layers expose as ``kv_cache``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from gptforge.modeling.kv_cache import (
    AttentionPlan,
    CacheOverflowError,
    KVCache,
    attention_plan,
    reusable_buffer,
)
from gptforge.modeling.loss import cross_entropy, linear_cross_entropy
from torch import Tensor, nn

IGNORE_INDEX = -100


def _dropout(p: float) -> nn.Module:
    """``nn.Dropout(p)``, or ``nn.Identity`` for p == 0 (no per-call work in a decode step)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class CausalLM(nn.Module):
    """Base class of the decoder-only models.

    Subclasses set ``token_embedding_name`` (and ``position_embedding_name`` when positions are
    learned), own an ``lm_head`` ``nn.Linear`` without bias and give their attention layers a
    ``kv_cache`` attribute (``None`` until :meth:`setup_caches`) plus ``n_kv_head`` and
    ``head_dim``.
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

    # ---- caches -------------------------------------------------------------------------
    def _attention_layers(self) -> Iterator[Any]:
        for module in self.modules():
            if hasattr(module, "kv_cache") and hasattr(module, "n_kv_head"):
                yield module

    def _first_attention(self) -> Any:
        """The first attention layer (its cache answers for all); looked up once, since
        walking ``modules()`` every decode step costs ~80 us at 12 layers."""
        first = self.__dict__.get("_first_attention_layer")
        if first is None:
            first = next(self._attention_layers(), None)
            self.__dict__["_first_attention_layer"] = first
        return first

    def setup_caches(
        self,
        max_batch_size: int,
        max_seq_len: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        """Attach a :class:`KVCache` to every attention layer; caches of the same shape,
        dtype and device are kept and zeroed instead.

        Args:
            max_batch_size: largest batch decoded at once.
            max_seq_len: prompt + generated tokens; at most ``config.block_size``.
            dtype: cache dtype (default: the dtype of the model's parameters).
            device: cache device (default: the device of the model's parameters).
        """
        if not 1 <= max_seq_len <= self.config.block_size:
            raise ValueError(
                f"max_seq_len={max_seq_len!r} must be in [1, block_size={self.config.block_size}]"
                "; the model has no positions past its context length"
            )
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size!r}")
        ref = self.lm_head.weight
        dtype = dtype or ref.dtype
        device = torch.device(device) if device is not None else ref.device
        layers = list(self._attention_layers())
        if layers and all(
            layer.kv_cache is not None
            and reusable_buffer(
                layer.kv_cache.k_cache,
                (max_batch_size, layer.n_kv_head, max_seq_len, layer.head_dim),
                dtype,
                device,
            )
            for layer in layers
        ):
            # Same shape: zero the buffers in place. Their addresses stay, so CUDA graphs
            # recorded over them replay instead of recording again.
            self.reset_caches()
            return
        for layer in layers:
            layer.kv_cache = KVCache(
                max_batch_size, max_seq_len, layer.n_kv_head, layer.head_dim, dtype, device
            )

    def reset_caches(self) -> None:
        """Zero every layer's cache (keeps the allocation for the next prompt)."""
        for layer in self._attention_layers():
            if layer.kv_cache is not None:
                layer.kv_cache.reset()

    def remove_caches(self) -> None:
        """Drop the caches and free their memory."""
        for layer in self._attention_layers():
            layer.kv_cache = None

    @property
    def max_context(self) -> int | None:
        """Most positions one sequence may span (prompt + generated); None means unbounded
        (a recurrent model). Transformers with learned or trained positions: ``block_size``."""
        return int(self.config.block_size)

    @property
    def has_caches(self) -> bool:
        """Whether :meth:`setup_caches` has attached caches."""
        return any(layer.kv_cache is not None for layer in self._attention_layers())

    def _check_inputs(self, idx: Tensor, input_pos: Tensor | int | None) -> Tensor | None:
        """Validate shapes and positions; returns ``input_pos`` as a (T,) long tensor."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
        T = idx.size(1)
        if input_pos is None:
            if self.config.block_size < T:
                raise ValueError(
                    f"sequence length {T} exceeds block_size={self.config.block_size}; "
                    "crop the input to the last block_size tokens"
                )
            return None
        if isinstance(input_pos, int):
            input_pos = torch.arange(input_pos, input_pos + T, device=idx.device)
        # (B, T) per-row positions serve continuous batching (gptforge.sampling).
        if input_pos.shape != (T,) and input_pos.shape != (idx.size(0), T):
            raise ValueError(
                f"input_pos must have shape (T,)=({T},) or per-row (B, T)=({idx.size(0)}, {T}) "
                f"matching idx, got {tuple(input_pos.shape)}"
            )
        first = self._first_attention()
        if first is None or first.kv_cache is None:
            raise RuntimeError(
                "forward(..., input_pos=...) needs KV caches; call "
                "model.setup_caches(max_batch_size, max_seq_len) first"
            )
        if input_pos.device != idx.device:  # positions given on the CPU for a GPU model
            input_pos = input_pos.to(idx.device)
        if not torch.compiler.is_compiling():
            first.kv_cache.check(input_pos, idx.size(0))
        return input_pos

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        input_pos: Tensor | int | None = None,
        *,
        return_logits: bool = True,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Logits for every position and, with ``targets``, the mean cross-entropy.

        Args:
            idx: (B, T) token ids.
            targets: (B, T) next-token ids; ``-100`` positions are ignored.
            input_pos: (T,) absolute positions of ``idx`` for cached decoding (needs
                :meth:`setup_caches`; an int ``p`` means ``arange(p, p + T)``); None processes
                ``idx`` as a whole sequence from position 0 without touching the caches.
            return_logits: with ``targets``, False skips the (B, T, V) logits (returned as
                None) and computes the loss with the head fused into the cross-entropy: less
                memory and faster training steps, same loss and gradients.

        Returns:
            ``(logits, loss)``: logits (B, T, vocab_size), loss a scalar or None.
        """
        pos_t = self._check_inputs(idx, input_pos)
        pos = pos_t if pos_t is not None else torch.arange(idx.size(1), device=idx.device)
        plan = self._attention_plan(pos_t)  # one mask for all layers
        x = self.hidden_states(idx, pos, pos_t, plan)  # (B, T, C)
        return self._logits_and_loss(x, targets, return_logits)

    def hidden_states(
        self, idx: Tensor, pos: Tensor, input_pos: Tensor | None, plan: AttentionPlan
    ) -> Tensor:
        """The family's body: final-normed hidden states (B, T, C) for ``idx`` at ``pos``.

        Args:
            idx: (B, T) token ids.
            pos: (T,) or per-row (B, T) absolute positions of ``idx``.
            input_pos: ``pos`` when decoding on the caches, None for a whole sequence.
            plan: the attention plan every layer shares.
        """
        raise NotImplementedError

    def _attention_plan(self, input_pos: Tensor | None) -> AttentionPlan:
        """The mask and cache length every layer of this forward shares (built once)."""
        if input_pos is None:
            return attention_plan(None, 0)
        return attention_plan(input_pos, self._first_attention().kv_cache.max_seq_len)

    # ---- head and loss ------------------------------------------------------------------
    def _logits_and_loss(
        self, x: Tensor, targets: Tensor | None, return_logits: bool = True
    ) -> tuple[Tensor | None, Tensor | None]:
        """LM head over the padded vocabulary; padding columns never reach the caller.

        Args:
            x: (B, T, C) final hidden states.
            targets: (B, T) next-token ids or ``IGNORE_INDEX``; None for no loss.
            return_logits: False (with targets) fuses the head into the loss: no (B, T, V)
                logits are built and ``None`` is returned in their place (the training path).
        """
        V, Vp = self.config.vocab_size, self.lm_head.weight.size(0)
        if targets is not None and not return_logits:
            # An adapted head (gptforge.modeling.lora) trains through its merged weight.
            merged = getattr(self.lm_head, "merged_weight", None)
            head = merged() if merged is not None else self.lm_head.weight
            fused = linear_cross_entropy(x.flatten(0, 1), head, targets.flatten(), IGNORE_INDEX, V)
            return None, fused
        logits = self.lm_head(x)  # (B, T, Vp)
        if Vp != V:
            # -inf padding columns get zero probability, so the loss over the padded tensor
            # equals the loss over the real vocabulary, with no (B, T, V) copy.
            logits[..., V:] = float("-inf")
        loss = None
        if targets is not None:
            # Chunked: same value and gradient as F.cross_entropy, far less memory traffic.
            loss = cross_entropy(logits.flatten(0, 1), targets.flatten(), IGNORE_INDEX)
        return (logits[..., :V] if Vp != V else logits), loss

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
