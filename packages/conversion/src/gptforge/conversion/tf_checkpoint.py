"""A reader of TensorFlow checkpoints (the V2 "tensor bundle" format) without TensorFlow.

A checkpoint ``PREFIX`` is ``PREFIX.index`` plus ``PREFIX.data-SSSSS-of-NNNNN`` shards.
The index is a LevelDB-style SSTable mapping tensor names to ``BundleEntryProto`` messages
(dtype, shape, shard id, byte offset and size, masked CRC32C); the empty key holds the
``BundleHeaderProto``. The data shards are the raw little-endian tensor bytes.

This is enough for OpenAI's GPT-2 release (``model.ckpt.index`` + ``model.ckpt.data-00000-of-00001``)
and for any checkpoint saved with ``tf.train.Saver`` or ``tf.train.Checkpoint`` whose tensors are
not partitioned; string tensors (the object graph of TF2 checkpoints) are listed but not loaded.
Formats: https://github.com/google/leveldb/blob/main/doc/table_format.md and TensorFlow's
``tensorflow/core/protobuf/tensor_bundle.proto``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gptforge.conversion.errors import ConversionError

__all__ = ["TFCheckpoint", "TFTensorEntry", "crc32c", "mask_crc", "read_tf_checkpoint"]

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two block handles padded to 40 bytes + 8-byte magic
BLOCK_TRAILER_SIZE = 5  # 1-byte compression type + 4-byte masked crc32c

# tensorflow/core/framework/types.proto DataType values -> numpy dtypes.
TF_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    14: np.dtype("<u2"),  # DT_BFLOAT16 (raw bits, reinterpreted by torch)
    19: np.dtype("<f2"),  # DT_HALF
}
TF_DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8",
                  7: "string", 9: "int64", 10: "bool", 14: "bfloat16", 19: "float16"}  # fmt: skip


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``; pure Python, meant for index blocks and small tensors."""
    c = crc ^ 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    """LevelDB's CRC masking (rotate right by 15 and add a constant), used in trailers and entries."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ConversionError("truncated varint in TensorFlow checkpoint index")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """Yield ``(field_number, value)`` of a protobuf message (varint, fixed and length-delimited)."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, value
        elif wire == 1:
            yield field, struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            yield field, buf[pos : pos + n]
            pos += n
        elif wire == 5:
            yield field, struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise ConversionError(f"unsupported protobuf wire type {wire} in checkpoint index")


@dataclass(frozen=True)
class TFTensorEntry:
    """Where one tensor lives in the data shards (a decoded ``BundleEntryProto``)."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int
    sliced: bool

    @property
    def dtype_name(self) -> str:
        """TensorFlow's name for the dtype, e.g. ``"float32"``."""
        return TF_DTYPE_NAMES.get(self.dtype, f"DataType({self.dtype})")


def _parse_entry(name: str, buf: bytes) -> TFTensorEntry:
    dtype = shard = offset = size = crc = 0
    shape: list[int] = []
    sliced = False
    for field, value in _proto_fields(buf):
        if field == 1:
            dtype = int(value)  # type: ignore[arg-type]
        elif field == 2:
            for sf, sv in _proto_fields(value):  # type: ignore[arg-type]
                if sf == 2:  # TensorShapeProto.dim
                    dim = dict(_proto_fields(sv))  # type: ignore[arg-type]
                    shape.append(int(dim.get(1, 0)))  # type: ignore[arg-type]
        elif field == 3:
            shard = int(value)  # type: ignore[arg-type]
        elif field == 4:
            offset = int(value)  # type: ignore[arg-type]
        elif field == 5:
            size = int(value)  # type: ignore[arg-type]
        elif field == 6:
            crc = int(value)  # type: ignore[arg-type]
        elif field == 7:
            sliced = True
    return TFTensorEntry(name, dtype, tuple(shape), shard, offset, size, crc, sliced)


def _read_block(data: bytes, offset: int, size: int, path: Path) -> bytes:
    end = offset + size
    if end + BLOCK_TRAILER_SIZE > len(data):
        raise ConversionError(
            f"{str(path)!r}: block at offset {offset} runs past the end of the file"
        )
    block = data[offset:end]
    kind = data[end]
    (stored,) = struct.unpack_from("<I", data, end + 1)
    if mask_crc(crc32c(data[offset : end + 1])) != stored:
        raise ConversionError(
            f"{str(path)!r}: checksum mismatch in the block at offset {offset}; the file is corrupt"
        )
    if kind != 0:
        raise ConversionError(
            f"{str(path)!r}: block at offset {offset} uses compression type {kind}; only uncompressed "
            "index blocks (what TensorFlow writes) are supported"
        )
    return block


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        yield key, block[pos : pos + value_len]
        pos += value_len


class TFCheckpoint:
    """Random access to the tensors of a TensorFlow V2 checkpoint.

    Args:
        prefix: the checkpoint prefix (``dir/model.ckpt``), its ``.index`` file, or a directory
            holding exactly one ``*.index`` file.

    >>> ckpt = TFCheckpoint("gpt2/124M/model.ckpt")  # doctest: +SKIP
    >>> ckpt.entries["model/wte"].shape  # doctest: +SKIP
    (50257, 768)
    """

    def __init__(self, prefix: str | os.PathLike[str]) -> None:
        self.prefix = _resolve_prefix(Path(prefix))
        index = Path(f"{self.prefix}.index")
        data = index.read_bytes()
        if (
            len(data) < FOOTER_SIZE
            or struct.unpack_from("<Q", data, len(data) - 8)[0] != TABLE_MAGIC
        ):
            raise ConversionError(
                f"{str(index)!r} is not a TensorFlow checkpoint index (bad table magic)"
            )
        footer = data[len(data) - FOOTER_SIZE :]
        _, pos = _varint(footer, 0)  # metaindex handle: unused
        _, pos = _varint(footer, pos)
        index_off, pos = _varint(footer, pos)
        index_size, _ = _varint(footer, pos)
        self.num_shards = 1
        self.entries: dict[str, TFTensorEntry] = {}
        for _, handle in _block_entries(_read_block(data, index_off, index_size, index)):
            off, p = _varint(handle, 0)
            size, _ = _varint(handle, p)
            for key, value in _block_entries(_read_block(data, off, size, index)):
                if key == b"":
                    self._read_header(value, index)
                else:
                    name = key.decode()
                    self.entries[name] = _parse_entry(name, value)

    def _read_header(self, value: bytes, index: Path) -> None:
        fields = dict(_proto_fields(value))
        self.num_shards = int(fields.get(1, 1))  # type: ignore[arg-type]
        if int(fields.get(2, 0)) != 0:  # type: ignore[arg-type]
            raise ConversionError(
                f"{str(index)!r} was written big-endian; only little-endian checkpoints are supported"
            )

    def shard_path(self, shard_id: int) -> Path:
        """Path of data shard ``shard_id``."""
        return Path(f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}")

    def keys(self) -> list[str]:
        """Tensor names, sorted."""
        return sorted(self.entries)

    def read(self, name: str, verify: bool = False) -> torch.Tensor:
        """Read one tensor as a CPU ``torch.Tensor``.

        Args:
            name: the variable name, e.g. ``"model/h0/attn/c_attn/w"``.
            verify: check the stored CRC32C (pure Python: slow for large tensors).
        """
        entry = self.entries.get(name)
        if entry is None:
            raise ConversionError(
                f"tensor {name!r} is not in checkpoint {str(self.prefix)!r}; it has "
                f"{len(self.entries)} tensors, e.g. {self.keys()[:8]}"
            )
        if entry.sliced:
            raise ConversionError(
                f"tensor {name!r} is saved as partitioned slices, which is not supported"
            )
        np_dtype = TF_DTYPES.get(entry.dtype)
        if np_dtype is None:
            raise ConversionError(
                f"tensor {name!r} has TensorFlow dtype {entry.dtype_name!r}; supported: "
                f"{sorted(TF_DTYPE_NAMES[k] for k in TF_DTYPES)}"
            )
        numel = int(np.prod(entry.shape, dtype=np.int64))
        if numel * np_dtype.itemsize != entry.size:
            raise ConversionError(
                f"tensor {name!r}: {entry.size} bytes stored for shape {entry.shape} of {entry.dtype_name}"
            )
        with open(self.shard_path(entry.shard_id), "rb") as f:
            f.seek(entry.offset)
            raw = f.read(entry.size)
        if len(raw) != entry.size:
            raise ConversionError(
                f"tensor {name!r}: data shard {str(self.shard_path(entry.shard_id))!r} is truncated"
            )
        if verify and mask_crc(crc32c(raw)) != entry.crc32c:
            raise ConversionError(f"tensor {name!r}: CRC32C mismatch, the data shard is corrupt")
        arr = np.frombuffer(bytearray(raw), dtype=np_dtype).reshape(entry.shape)
        t = torch.from_numpy(arr)
        return t.view(torch.bfloat16) if entry.dtype == 14 else t

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.keys():
            if self.entries[name].dtype in TF_DTYPES:
                yield name, self.read(name)


def _resolve_prefix(p: Path) -> Path:
    if p.is_dir():
        indexes = sorted(p.glob("*.index"))
        if len(indexes) != 1:
            raise ConversionError(
                f"directory {str(p)!r} holds {len(indexes)} '*.index' files ({[i.name for i in indexes]}); "
                "pass the checkpoint prefix, e.g. DIR/model.ckpt"
            )
        return indexes[0].with_suffix("")
    if p.suffix == ".index":
        p = p.with_suffix("")
    if not Path(f"{p}.index").is_file():
        raise ConversionError(
            f"no TensorFlow checkpoint at {str(p)!r}: {str(p)!r}.index does not exist"
        )
    return p


def read_tf_checkpoint(prefix: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load every numeric tensor of a TensorFlow checkpoint into a dict."""
    return dict(TFCheckpoint(prefix))
