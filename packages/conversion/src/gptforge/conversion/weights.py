"""Safe, streaming readers and writers of weight files.

Reading never runs code from a checkpoint: safetensors files are memory-mapped, PyTorch pickles
go through ``torch.load(weights_only=True)`` and a pickle that needs code is refused. Readers
yield one tensor at a time so a conversion holds at most one converted tensor beside the
memory-mapped source; :func:`write_safetensors` writes the header first and then streams the
tensors, so the output never has to sit in memory either.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from gptforge import fileio
from gptforge.conversion.errors import ConversionError

__all__ = [
    "PlannedTensor",
    "TensorInfo",
    "WeightSource",
    "atomic_dir",
    "atomic_file",
    "check_output",
    "iter_state_dict",
    "load_state_dict",
    "read_tensor_infos",
    "READABLE_FORMATS",
    "torch_load_object",
    "torch_load_weights",
    "weight_files",
    "write_safetensors",
]

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_TO_SAFETENSORS = {v: k for k, v in SAFETENSORS_DTYPES.items()}

# Names tried, in order, when a directory is given instead of a file.
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth", "ckpt.pt")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# Wrappers seen around state dicts in training checkpoints (nanoGPT's ckpt.pt, Lightning, ...).
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "module")
_COMPILE_PREFIX = "_orig_mod."


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of a stored tensor, read without loading its data."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        """Number of elements."""
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor of a streaming conversion: known shape and dtype, data made on demand."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    produce: Callable[[], torch.Tensor]


def weight_files(path: str | os.PathLike[str]) -> list[Path]:
    """Resolve a weights file or a model directory to the list of files holding its tensors.

    Understands single files (``model.safetensors``, ``pytorch_model.bin``, ``*.pt``), HF sharded
    checkpoints (``*.index.json``) and Meta's ``consolidated.*.pth``.

    Args:
        path: a weights file, an index file, or a directory containing one of those.
    """
    p = Path(path)
    if not p.exists():
        raise ConversionError(
            f"weights path {str(p)!r} does not exist; pass a file or a model directory"
        )
    if p.is_file():
        if p.name.endswith(".index.json"):
            return _index_shards(p)
        return [p]
    for name in _SINGLE_FILES:
        if (p / name).is_file():
            return [p / name]
    for name in _INDEX_FILES:
        if (p / name).is_file():
            return _index_shards(p / name)
    consolidated = sorted(p.glob("consolidated.*.pth"))
    if consolidated:
        return consolidated
    found = sorted(x.name for x in p.iterdir() if x.suffix in _WEIGHT_SUFFIXES)
    raise ConversionError(
        f"no weights found in directory {str(p)!r}: expected one of "
        f"{list(_SINGLE_FILES) + list(_INDEX_FILES) + ['consolidated.*.pth']}; "
        f"weight-like files present: {found or 'none'}"
    )


def _index_shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConversionError(
            f"cannot read shard index {str(index)!r}: {e!r}; expected JSON with a 'weight_map' object"
        ) from e
    shards = [index.parent / f for f in dict.fromkeys(weight_map.values())]
    missing = [str(s) for s in shards if not s.is_file()]
    if missing:
        raise ConversionError(f"shard index {str(index)!r} names missing files: {missing}")
    return shards


#: What the readers understand, for errors about files they cannot read.
READABLE_FORMATS = (
    "safetensors (.safetensors, HF shards with *.index.json)",
    "PyTorch state dicts saved with torch.save (.pt/.pth/.bin/.ckpt: a plain state dict, "
    "nanoGPT's ckpt.pt, the LLMs-from-scratch book's GPTModel state dict)",
    "gptforge, Hugging Face, Meta LLaMA and OpenAI GPT-2 directories",
    "GGUF files written by gptforge",
)


def torch_load_object(path: str | os.PathLike[str]) -> object:
    """``torch.load(path, weights_only=True)``, memory-mapped where possible; errors name the file.

    A pickle that needs code is refused (nothing in it runs); a file that is not a PyTorch
    checkpoint at all gets an error listing the formats gptforge reads.
    """
    p = Path(path)
    try:
        try:
            return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) serialization cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        first = next(
            (ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), type(e).__name__
        )
        if "GLOBAL" not in first:  # not a pickle of allowed objects at all: nothing was run
            raise _unreadable(p, first) from e
        raise ConversionError(
            f"refusing to load {str(p)!r}: the pickle needs code to be unpickled ({first}). "
            "Only tensors, dicts, lists and plain values are loaded (torch.load weights_only=True), "
            "because unpickling arbitrary objects can run any code. Fix: in a trusted environment, "
            "re-save just the state dict (torch.save(model.state_dict(), ...)) or use safetensors."
        ) from e
    # On bytes that are not a checkpoint the weights-only unpickler fails wherever its stack
    # machine stops (IndexError, KeyError, ...): all of them mean "not a file we can read".
    except (RuntimeError, EOFError, ValueError, IndexError, KeyError, TypeError, struct.error) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _unreadable(p, first) from e


def _unreadable(path: Path, why: str) -> ConversionError:
    return ConversionError(
        f"cannot read {str(path)!r} ({path.stat().st_size:,} bytes) as a PyTorch checkpoint "
        f"({why}); gptforge reads: {'; '.join(READABLE_FORMATS)}. If the file was cut short, "
        "copy or save it again"
    )


def torch_load_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a PyTorch checkpoint's tensors with ``weights_only=True``.

    Training checkpoints that wrap the state dict (``{"model": ...}``) are unwrapped and the
    ``_orig_mod.`` prefix of compiled models is removed. A pickle that needs code is refused.
    """
    return _unwrap_state_dict(torch_load_object(path), Path(path))


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if (
            isinstance(obj, Mapping)
            and obj
            and all(isinstance(v, torch.Tensor) for v in obj.values())
        ):
            break
        if isinstance(obj, Mapping):
            inner = next(
                (obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None
            )
            if inner is not None:
                obj = inner
                continue
        keys = list(obj.keys())[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise ConversionError(
            f"{str(path)!r} holds no state dict: top-level keys/type {keys!r}; expected a mapping of "
            f"names to tensors, possibly under one of {list(_WRAPPER_KEYS)}"
        )
    assert isinstance(obj, Mapping)
    out = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[k.removeprefix(_COMPILE_PREFIX)] = v
    return out


def _damaged(path: Path, size: int, expected: str) -> ConversionError:
    return ConversionError(
        f"{str(path)!r} is damaged: it is {size:,} bytes, but {expected}; the file was cut short "
        "or overwritten (an interrupted copy, download or save): copy, download or export it again"
    )


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file, checked to describe exactly the bytes present."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise _damaged(path, size, "a safetensors file starts with an 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ConversionError(
                f"{str(path)!r} is not a safetensors file: header length {n:,} is absurd"
            )
        if 8 + n > size:
            raise _damaged(path, size, f"its safetensors header alone claims {8 + n:,} bytes")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConversionError(f"{str(path)!r} has a corrupt safetensors header: {e}") from e
    if not isinstance(header, dict):
        raise ConversionError(f"{str(path)!r} has a corrupt safetensors header (not an object)")
    end = max(
        (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0
    )
    if 8 + n + end != size:
        raise _damaged(path, size, f"its safetensors header describes {8 + n + end:,} bytes")
    return header, 8 + n


def read_safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` string map of a safetensors file (empty when absent)."""
    header, _ = _safetensors_header(Path(path))
    return dict(header.get("__metadata__") or {})


def read_tensor_infos(path: str | os.PathLike[str]) -> dict[str, TensorInfo]:
    """Names, shapes and dtypes of every tensor under ``path``, without reading tensor data."""
    infos: dict[str, TensorInfo] = {}
    for f in weight_files(path):
        if f.suffix == ".safetensors":
            header, _ = _safetensors_header(f)
            for name, spec in header.items():
                if name == "__metadata__":
                    continue
                dtype = SAFETENSORS_DTYPES.get(spec["dtype"])
                if dtype is None:
                    raise ConversionError(
                        f"tensor {name!r} in {str(f)!r} has dtype {spec['dtype']!r}; "
                        f"supported: {sorted(SAFETENSORS_DTYPES)}"
                    )
                infos[name] = TensorInfo(tuple(spec["shape"]), dtype)
        else:
            for name, t in torch_load_weights(f).items():
                infos[name] = TensorInfo(tuple(t.shape), t.dtype)
    return infos


def iter_state_dict(path: str | os.PathLike[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` pairs one at a time from every weight file under ``path``.

    safetensors files are memory-mapped (a tensor is materialised only when yielded), PyTorch
    files are loaded with ``mmap=True`` where their format allows it.

    >>> for name, t in iter_state_dict("runs/demo/pretrain"):  # doctest: +SKIP
    ...     print(name, tuple(t.shape))
    """
    from safetensors import safe_open

    for f in weight_files(path):
        if f.suffix == ".safetensors":
            _safetensors_header(f)  # a damaged file fails here, naming itself
            with safe_open(str(f), framework="pt", device="cpu") as st:
                for name in st.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                    yield name, st.get_tensor(name)
        else:
            yield from torch_load_weights(f).items()


class WeightSource:
    """Open weight files for random access by name: ``infos`` up front, tensors on demand.

    safetensors shards stay memory-mapped while the source is open; PyTorch files are loaded
    (memory-mapped where their format allows). Use as a context manager.

    >>> with WeightSource("hf_gpt2/") as src:  # doctest: +SKIP
    ...     w = src.get("transformer.wte.weight")
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from safetensors import safe_open

        self.path = Path(path)
        self.infos: dict[str, TensorInfo] = {}
        self.metadata: dict[str, str] = {}
        self._stack = contextlib.ExitStack()
        self._where: dict[str, Callable[[str], torch.Tensor]] = {}
        try:
            for f in weight_files(path):
                if f.suffix == ".safetensors":
                    infos = read_tensor_infos(f)  # checks the file is whole before mapping it
                    handle = self._stack.enter_context(
                        safe_open(str(f), framework="pt", device="cpu")
                    )
                    self.metadata.update(handle.metadata() or {})
                    for name, info in infos.items():
                        self._add(name, info, handle.get_tensor, f)
                else:
                    sd = torch_load_weights(f)
                    for name, t in sd.items():
                        self._add(name, TensorInfo(tuple(t.shape), t.dtype), sd.__getitem__, f)
        except BaseException:
            self._stack.close()
            raise

    def _add(
        self, name: str, info: TensorInfo, get: Callable[[str], torch.Tensor], f: Path
    ) -> None:
        if name in self.infos:
            raise ConversionError(
                f"tensor {name!r} appears twice under {str(self.path)!r} (again in {f.name!r})"
            )
        self.infos[name] = info
        self._where[name] = get

    def get(self, name: str) -> torch.Tensor:
        """Load one tensor by name."""
        if name not in self._where:
            raise ConversionError(
                f"tensor {name!r} is not in {str(self.path)!r}; it has {len(self.infos)} tensors, "
                f"e.g. {sorted(self.infos)[:8]}"
            )
        return self._where[name](name)

    def close(self) -> None:
        """Release the memory maps."""
        self._stack.close()
        self._where.clear()

    def __enter__(self) -> WeightSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load every tensor under ``path`` (a file, an index file or a model directory).

    >>> sd = load_state_dict("hf_gpt2/")  # doctest: +SKIP
    >>> sd["transformer.wte.weight"].shape  # doctest: +SKIP
    torch.Size([50257, 768])
    """
    out: dict[str, torch.Tensor] = {}
    for name, t in iter_state_dict(path):
        if name in out:
            raise ConversionError(
                f"tensor {name!r} appears in more than one shard under {str(path)!r}"
            )
        out[name] = t
    return out


def check_output(path: str | os.PathLike[str], force: bool) -> Path:
    """Refuse to overwrite an existing output unless ``force`` is set."""
    p = Path(path)
    if p.exists() and not force:
        raise ConversionError(
            f"output {str(p)!r} already exists; pass --force (force=True) to overwrite it, "
            "or choose another path"
        )
    return p


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    with fileio.atomic_file(check_output(path, force)) as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it becomes ``path`` only if the block succeeds.

    With ``force`` an existing ``path`` is moved aside first and deleted once the new directory
    is in place, so a failed conversion never leaves a half-written output behind.
    """
    with fileio.atomic_dir(check_output(path, force)) as tmp:
        yield tmp


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Iterable[PlannedTensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a safetensors file tensor by tensor (atomically, through a temporary file).

    The header is computed from the planned shapes and dtypes, then each tensor is produced,
    checked against its plan and written before the next one is produced, so peak memory is one
    tensor. Readable by ``safetensors.safe_open`` and ``transformers``.

    Args:
        path: the output file (replaced atomically; callers check for overwrites).
        tensors: the planned tensors, in file order.
        metadata: optional ``__metadata__`` string map (HF expects ``{"format": "pt"}``).
    """
    plan = list(tensors)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for t in plan:
        if t.name in header:
            raise ConversionError(f"tensor {t.name!r} is planned twice for {str(path)!r}")
        nbytes = TensorInfo(t.shape, t.dtype).numel * torch.empty((), dtype=t.dtype).element_size()
        header[t.name] = {
            "dtype": DTYPE_TO_SAFETENSORS[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    p = Path(path)
    with atomic_file(p, force=True) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in plan:
            value = t.produce()
            if tuple(value.shape) != t.shape or value.dtype != t.dtype:
                raise ConversionError(
                    f"tensor {t.name!r}: produced shape {tuple(value.shape)} dtype {value.dtype}, "
                    f"planned {t.shape} {t.dtype}"
                )
            value = value.detach().contiguous().cpu()
            # Reinterpret as bytes without a copy; works for every dtype including bfloat16.
            if value.numel():
                f.write(value.reshape(-1).view(torch.uint8).numpy().data)
            del value
