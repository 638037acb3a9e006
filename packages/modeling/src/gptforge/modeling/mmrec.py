"""MM-Rec ("Multi-Memory Recurrence"): a decoder without attention over the past.

Each block is ``x = x + Mixer(norm1(x))`` then ``x = x + FFN(norm2(x))``. With ``u = norm1(x)``
the mixer computes, per channel and from the input only,

    z = W_z u,   g = sigmoid(W_g u),   gamma = sigmoid(MLP_gamma(u))
    h_t = g_t * z_t + gamma_t * h_{t-1}                      (MDI, by a chunked scan)
    hn = norm(h);  read = W_o MHA(W_q hn, W_k S, W_v S)      (MultiMemoryAttention)
    out = W_out(hn + read)

where ``S`` are the slots of the HDS: ``M`` learned vectors (a parameter, shape (M, D)) plus
average-pooled coarser levels (M/p, M/p^2, ...). The slots do not depend on the input, so
reading them is causal by construction and they change only through the optimizer. The sum
``hn + read`` is the simplest combination the design allows: the state passes through the
output projection untouched and the memory read is a residual correction on top of it.

Generation keeps one state ``h`` of shape (B, D) per layer, so a decode step costs the same at
position 10 or 100,000 and the cache never grows. The model follows the common interface of
``gptforge.modeling`` (``forward(idx, targets, input_pos)``, ``setup_caches``, ...).
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from gptforge.modeling.base import CausalLM
from gptforge.modeling.kv_cache import CacheOverflowError, reusable_buffer
from gptforge.modeling.linear import Linear
from gptforge.modeling.loss import head_and_loss
from gptforge.modeling.mmrec_config import MMRecConfig
from gptforge.modeling.mmrec_scan import mdi_scan, mdi_step
from torch import Tensor, nn

__all__ = [
    "MMRec",
    "MMRecConfig",
    "MMRecBlock",
    "MDIMixer",
    "HierarchicalMemory",
    "MultiMemoryAttention",
    "RecurrentStateCache",
]


def make_norm(config: MMRecConfig) -> nn.Module:
    """The configured norm over ``n_embd`` channels."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


class GeluMLP(nn.Module):
    """GPT-2 FFN: ``c_proj(gelu(c_fc(x)))`` (names as in HF GPT-2)."""

    def __init__(self, config: MMRecConfig) -> None:
        super().__init__()
        hidden = config.ffn_hidden_size
        self.c_fc = Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = Linear(hidden, config.n_embd, bias=config.bias)
        self.approximate = config.gelu_approximate

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate))  # (B, T, D)


class SwiGLUMLP(nn.Module):
    """LLaMA FFN: ``down_proj(silu(gate_proj(x)) * up_proj(x))`` (names as in HF LLaMA)."""

    def __init__(self, config: MMRecConfig) -> None:
        super().__init__()
        hidden = config.ffn_hidden_size
        self.gate_proj = Linear(config.n_embd, hidden, bias=False)
        self.up_proj = Linear(config.n_embd, hidden, bias=False)
        self.down_proj = Linear(hidden, config.n_embd, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (B, T, D)


class HierarchicalMemory(nn.Module):
    """HDS: ``M`` learned slots and their average-pooled coarser levels."""

    def __init__(self, config: MMRecConfig) -> None:
        super().__init__()
        self.pool = config.memory_pool
        self.n_levels = config.n_memory_levels
        # Unit scale: the slots stand where normalised activations stand in attention, so
        # W_k / W_v (possibly transferred from a transformer) see inputs of the usual size.
        self.slots = nn.Parameter(torch.randn(config.n_memory, config.n_embd))  # (M, D)

    def forward(self) -> Tensor:
        """All levels' slots concatenated, shape (M + M/p + ..., D)."""
        levels: list[Tensor] = [self.slots]
        for i in range(1, self.n_levels):
            group = self.pool**i
            m, d = self.slots.shape
            levels.append(self.slots.view(m // group, group, d).mean(dim=1))  # (M/p^i, D)
        return torch.cat(levels, dim=0)


class MultiMemoryAttention(nn.Module):
    """Multi-head attention from the tokens' states to the memory slots (no mask needed)."""

    def __init__(self, config: MMRecConfig) -> None:
        super().__init__()
        d = config.n_embd
        self.n_head = config.n_head
        self.q_proj = Linear(d, d, bias=config.bias)
        self.k_proj = Linear(d, d, bias=config.bias)
        self.v_proj = Linear(d, d, bias=config.bias)
        self.o_proj = Linear(d, d, bias=config.bias)

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of the slots, each (nh, S, hs); input-independent, so cacheable."""
        s, d = memory.shape
        k = self.k_proj(memory).view(s, self.n_head, d // self.n_head).transpose(0, 1)
        v = self.v_proj(memory).view(s, self.n_head, d // self.n_head).transpose(0, 1)
        return k, v  # (nh, S, hs) each

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor]) -> Tensor:
        """Read the memory for every position of ``x`` (B, T, D); returns (B, T, D)."""
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.n_head, d // self.n_head).transpose(1, 2)  # (B,nh,T,hs)
        k, v = kv
        k = k.unsqueeze(0).expand(b, -1, -1, -1)  # (B, nh, S, hs)
        v = v.unsqueeze(0).expand(b, -1, -1, -1)  # (B, nh, S, hs)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hs)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class DecayMLP(nn.Module):
    """``MLP_gamma``: the pre-sigmoid decay per channel, biased to start in [min, max]."""

    def __init__(self, config: MMRecConfig) -> None:
        super().__init__()
        self.fc1 = Linear(config.n_embd, config.decay_hidden, bias=config.bias)
        self.fc2 = Linear(config.decay_hidden, config.n_embd, bias=True)

    def forward(self, u: Tensor) -> Tensor:
        return self.fc2(F.silu(self.fc1(u)))  # (B, T, D) logits of gamma


class MDIMixer(nn.Module):
    """The MM-Rec token mixer: MDI recurrence, state norm, memory read, output projection."""

    def __init__(self, config: MMRecConfig) -> None:
        super().__init__()
        d = config.n_embd
        self.chunk_size = config.chunk_size
        self.w_z = Linear(d, d, bias=config.bias)
        self.w_g = Linear(d, d, bias=config.bias)
        self.decay = DecayMLP(config)
        self.norm_h = make_norm(config)
        self.memory = HierarchicalMemory(config)
        self.mem_attn = MultiMemoryAttention(config)
        self.w_out = Linear(d, d, bias=config.bias)

    def forward(
        self,
        u: Tensor,
        state: Tensor | None = None,
        memory_kv: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Mix ``u`` (B, T, D) starting from ``state`` (B, D) or zeros.

        Returns the output (B, T, D) and the state after the last position (B, D, fp32 or
        wider). ``memory_kv`` may carry precomputed slot keys/values (a decode-time cache).
        """
        z = self.w_z(u)  # (B, T, D)
        g = torch.sigmoid(self.w_g(u))  # (B, T, D) gate from the input only
        log_gamma = F.logsigmoid(self.decay(u))  # (B, T, D) log decay, <= 0
        if state is not None:
            state = state.to(torch.promote_types(u.dtype, torch.float32))
        if u.shape[1] == 1 and state is not None:  # decode step: no scan needed
            work = state.dtype
            h_last = mdi_step((g * z)[:, 0].to(work), log_gamma[:, 0].to(work).exp(), state)
            h = h_last.unsqueeze(1).to(u.dtype)  # (B, 1, D)
        else:
            h, h_last = mdi_scan(g * z, log_gamma, state, self.chunk_size)  # (B,T,D), (B,D)
            h_last = h_last.to(torch.promote_types(u.dtype, torch.float32))
        hn = self.norm_h(h)  # (B, T, D)
        if memory_kv is None:
            memory_kv = self.mem_attn.memory_kv(self.memory())
        read = self.mem_attn(hn, memory_kv)  # (B, T, D)
        return self.w_out(hn + read), h_last


class MMRecBlock(nn.Module):
    """``x + Mixer(norm1(x))`` then ``x + FFN(norm2(x))``."""

    def __init__(self, config: MMRecConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.mixer = MDIMixer(config)
        self.ln_2 = make_norm(config)
        self.mlp = SwiGLUMLP(config) if config.ffn == "swiglu" else GeluMLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        state: Tensor | None = None,
        memory_kv: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        mixed, new_state = self.mixer(self.ln_1(x), state, memory_kv)
        x = x + self.drop(mixed)  # (B, T, D)
        x = x + self.drop(self.mlp(self.ln_2(x)))  # (B, T, D)
        return x, new_state


class RecurrentStateCache(nn.Module):
    """The generation cache of one layer: the state ``h`` (constant size) and slot keys/values.

    Unlike a KV cache nothing grows with the sequence: ``h`` has shape (max_batch_size, D).
    ``next_pos`` (max_batch_size, 1) is the position each row continues at. Both are
    non-persistent buffers with the cache row as dim 0: continuous batching gives each sequence
    a row (``forward(..., rows=...)``) and a sequence restarting at position 0 zeroes its row.
    """

    h: Tensor
    next_pos: Tensor

    def __init__(self, max_batch_size: int, dim: int, dtype: torch.dtype, device) -> None:
        super().__init__()
        kw = {"device": device}
        self.register_buffer("h", torch.zeros(max_batch_size, dim, dtype=dtype, **kw), False)
        self.register_buffer(
            "next_pos", torch.zeros(max_batch_size, 1, dtype=torch.long, **kw), False
        )
        self.memory_kv: tuple[Tensor, Tensor] | None = None

    def reset(self) -> None:
        """Zero the state and positions and drop the cached slot keys/values."""
        self.h.zero_()
        self.next_pos.zero_()
        self.memory_kv = None


class MMRec(CausalLM):
    """The MM-Rec language model.

    >>> model = MMRec(MMRecConfig.from_name("mmrec-debug"))
    >>> logits, loss = model(torch.zeros(1, 5, dtype=torch.long))
    >>> tuple(logits.shape), loss
    ((1, 5, 256), None)
    """

    token_embedding_name = "wte"

    def __init__(self, config: MMRecConfig) -> None:
        super().__init__()
        if not isinstance(config, MMRecConfig):
            raise TypeError(f"MMRec needs an MMRecConfig, got {type(config).__name__}")
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(MMRecBlock(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.caches: nn.ModuleList | None = None  # of RecurrentStateCache, by setup_caches
        self._max_seq_len = 0
        self.reset_parameters()

    # ----------------------------------------------------------------- initialisation
    def reset_parameters(self) -> None:
        """GPT-2 style init (normal 0.02, residual outputs / sqrt(2 n_layer)), decay bias set."""
        cfg = self.config
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, nn.LayerNorm | nn.RMSNorm):
                module.reset_parameters()
        residual_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        for block in self.h:
            assert isinstance(block, MMRecBlock)
            nn.init.normal_(block.mixer.w_out.weight, std=residual_std)
            mlp = block.mlp
            mlp_out = mlp.down_proj if isinstance(mlp, SwiGLUMLP) else mlp.c_proj
            assert isinstance(mlp_out, nn.Linear)
            nn.init.normal_(mlp_out.weight, std=residual_std)
            nn.init.normal_(block.mixer.memory.slots)
            init_decay_bias(block.mixer.decay.fc2.bias, cfg.decay_init_min, cfg.decay_init_max)

    # ----------------------------------------------------------------- interface
    def setup_caches(
        self,
        max_batch_size: int,
        max_seq_len: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        """Attach one constant-size state per layer; positions up to ``max_seq_len`` accepted.

        The state is kept in fp32 (or fp64 for an fp64 model) whatever ``dtype`` says, because
        it accumulates over the whole sequence.
        """
        if max_batch_size < 1 or max_seq_len < 1:
            raise ValueError(
                f"max_batch_size and max_seq_len must be >= 1, got {max_batch_size!r} and "
                f"{max_seq_len!r}"
            )
        param = self.wte.weight
        dtype = torch.promote_types(dtype or param.dtype, torch.float32)
        device = torch.device(device) if device is not None else param.device
        self._max_seq_len = max_seq_len
        h = cast(RecurrentStateCache, self.caches[0]).h if self.caches else None
        if reusable_buffer(h, (max_batch_size, self.config.n_embd), dtype, device):
            # The same state: zero it in place (CUDA graphs keep their addresses).
            self.reset_caches()
            return
        self.caches = nn.ModuleList(
            RecurrentStateCache(max_batch_size, self.config.n_embd, dtype, device) for _ in self.h
        )

    @property
    def max_context(self) -> int | None:
        """None: the recurrence has no length limit (``block_size`` is the training length)."""
        return None

    def reset_caches(self) -> None:
        """Zero every state so the next call with ``input_pos`` starts a new sequence."""
        for cache in self.caches or []:
            assert isinstance(cache, RecurrentStateCache)
            cache.reset()

    def remove_caches(self) -> None:
        """Drop the states."""
        self.caches = None

    @property
    def has_caches(self) -> bool:
        """Whether :meth:`setup_caches` has attached states."""
        return self.caches is not None

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        input_pos: Tensor | int | None = None,
        *,
        rows: Tensor | None = None,
        return_logits: bool = True,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Logits (B, T, vocab_size) and the loss when ``targets`` (B, T) are given.

        Without ``input_pos`` the sequence is processed from a zero state and no cache is
        touched. With ``input_pos`` (shape (T,) or per-row (B, T), consecutive positions) the
        states of the cache ``rows`` (default 0..B-1) are used and advanced: positions starting
        at 0 begin a new sequence, any other start must continue exactly where the previous
        call stopped, because a recurrent model has no per-position cache to go back to.
        ``return_logits=False`` with ``targets`` fuses the head into the loss and returns
        ``None`` for the logits (see ``GPT.forward``).
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)!r}")
        states: list[Tensor | None] = [None] * len(self.h)
        kvs: list[tuple[Tensor, Tensor] | None] = [None] * len(self.h)
        if input_pos is not None:
            rows = self._start_rows(idx, input_pos, rows)
            caches = self._caches()
            states = [c.h.index_select(0, rows) for c in caches]  # (B, D) each
            kvs = [c.memory_kv for c in caches]
        x = self.drop(self.wte(idx))  # (B, T, D)
        new_states = []
        for block, state, kv in zip(self.h, states, kvs, strict=True):
            x, state = block(x, state, kv)  # (B, T, D), (B, D)
            new_states.append(state)
        if input_pos is not None and rows is not None:
            with torch.no_grad():
                for cache, state in zip(self._caches(), new_states, strict=True):
                    cache.h.index_copy_(0, rows, state.to(cache.h.dtype))
        x = self.ln_f(x)  # (B, T, D)
        return head_and_loss(x, self.lm_head, targets, self.config.vocab_size, return_logits)

    def forward_state(
        self, idx: Tensor, states: list[Tensor] | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """Process ``idx`` (B, T) from explicit per-layer states; return logits and new states.

        Feeding a long sequence chunk by chunk, each call starting from the states the previous
        one returned, gives the same logits as one call over the whole sequence.
        """
        if states is not None and len(states) != len(self.h):
            raise ValueError(f"expected {len(self.h)} states (one per layer), got {len(states)}")
        x = self.drop(self.wte(idx))  # (B, T, D)
        new_states = []
        for i, block in enumerate(self.h):
            x, state = block(x, None if states is None else states[i])
            new_states.append(state)
        return self.lm_head(self.ln_f(x))[..., : self.config.vocab_size], new_states

    # ----------------------------------------------------------------- cache plumbing
    def _caches(self) -> list[RecurrentStateCache]:
        if self.caches is None:
            raise RuntimeError(
                "forward(..., input_pos=...) needs caches; call model.setup_caches("
                "max_batch_size, max_seq_len) first"
            )
        return list(self.caches)  # type: ignore[arg-type]

    def _start_rows(self, idx: Tensor, input_pos: Tensor | int, rows: Tensor | None) -> Tensor:
        """Validate ``input_pos`` against each row's state, zero the rows that restart at 0 and
        advance their positions; returns the (B,) cache rows of the batch."""
        caches = self._caches()
        bsz, seq_len = idx.shape
        device = caches[0].h.device
        if isinstance(input_pos, int):
            input_pos = torch.arange(input_pos, input_pos + seq_len, device=idx.device)
        if input_pos.shape not in ((seq_len,), (bsz, seq_len)):
            raise ValueError(
                f"input_pos must have shape (T,) = ({seq_len},) or (B, T) = ({bsz}, {seq_len}), "
                f"got {tuple(input_pos.shape)!r}"
            )
        max_batch = caches[0].h.shape[0]
        if rows is None:
            if bsz > max_batch:
                raise CacheOverflowError(
                    f"batch size {bsz} exceeds the max_batch_size {max_batch} given to "
                    "setup_caches; call setup_caches again with a larger one"
                )
            rows = torch.arange(bsz, device=device)
        elif rows.shape != (bsz,) or not bool(((rows >= 0) & (rows < max_batch)).all()):
            raise CacheOverflowError(
                f"rows must be {bsz} cache rows in [0, {max_batch}), got {rows.tolist()!r}; "
                "call setup_caches with a larger max_batch_size"
            )
        rows = rows.to(device)
        pos = input_pos.to(torch.long).expand(bsz, seq_len)  # (B, T)
        starts = pos[:, 0]  # (B,)
        steps = torch.arange(seq_len, device=pos.device)
        if not torch.equal(pos, starts[:, None] + steps):
            raise ValueError(
                f"MM-Rec is recurrent: input_pos must be consecutive, got {input_pos.tolist()!r}; "
                "pass positions start, start + 1, ..., start + T - 1"
            )
        expected = caches[0].next_pos[rows, 0].to(pos.device)  # (B,)
        fresh = starts == 0
        bad = ~(fresh | (starts == expected))
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"MM-Rec is recurrent: input_pos must continue at position {int(expected[row])} "
                f"(where the previous call stopped) or restart at 0, got {int(starts[row])} "
                f"(batch row {row}); a recurrent state cannot go back to an earlier position"
            )
        if int(starts.max()) + seq_len > self._max_seq_len:
            raise CacheOverflowError(
                f"positions up to {int(starts.max()) + seq_len - 1} exceed max_seq_len="
                f"{self._max_seq_len} given to setup_caches (the state itself does not grow); "
                "call setup_caches with a larger max_seq_len"
            )
        restart = rows[fresh.to(device)]  # rows beginning a new sequence
        with torch.no_grad():
            for cache, block in zip(caches, self.h, strict=True):
                assert isinstance(block, MMRecBlock)
                cache.h.index_fill_(0, restart, 0.0)
                cache.next_pos[rows, 0] = (starts + seq_len).to(device)
                if cache.memory_kv is None or bool(fresh.all()):
                    mixer = block.mixer
                    k, v = mixer.mem_attn.memory_kv(mixer.memory())
                    cache.memory_kv = (k.detach(), v.detach())
        return rows


def init_decay_bias(bias: Tensor, low: float, high: float) -> None:
    """Set the decay MLP's output bias so that sigmoid(bias) spans [low, high] over channels."""
    with torch.no_grad():
        target = torch.linspace(low, high, bias.numel(), dtype=torch.float64)
        bias.copy_(torch.logit(target).to(bias.dtype))
