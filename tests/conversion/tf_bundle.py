"""Test-side writer of TensorFlow V2 checkpoints (tensor bundles), the format TF's Saver writes.

It exists so tests can build a tiny OpenAI-layout GPT-2 checkpoint without TensorFlow. It writes
the index as a LevelDB table (uncompressed blocks with restart points every 16 keys, a block size
of 4 KiB, masked CRC32C trailers, the 48-byte footer) like TensorFlow's ``BundleWriter``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from gptforge.conversion.tf_checkpoint import TABLE_MAGIC, crc32c, mask_crc

NP_TO_TF = {
    np.dtype("<f4"): 1,
    np.dtype("<f8"): 2,
    np.dtype("<i4"): 3,
    np.dtype("<i8"): 9,
    np.dtype("<f2"): 19,
}
RESTART_INTERVAL = 16
BLOCK_SIZE = 4096


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_varint(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value) if value else b""


def _field_bytes(field: int, value: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def _field_fixed32(field: int, value: int) -> bytes:
    return _varint(field << 3 | 5) + struct.pack("<I", value)


def _entry_proto(dtype: int, shape: tuple[int, ...], offset: int, size: int, crc: int) -> bytes:
    dims = b"".join(_field_bytes(2, _field_varint(1, d) or b"\x08\x00") for d in shape)
    msg = _field_varint(1, dtype) + _field_bytes(2, dims)
    msg += _field_varint(3, 0) + _field_varint(4, offset) + _field_varint(5, size)
    return msg + _field_fixed32(6, crc)


def _header_proto() -> bytes:
    version = _field_varint(1, 1)  # VersionDef.producer = 1
    return _field_varint(1, 1) + _field_varint(2, 0) + _field_bytes(3, version)


class _BlockBuilder:
    def __init__(self) -> None:
        self.buf = bytearray()
        self.restarts = [0]
        self.count = 0
        self.last = b""

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.count < RESTART_INTERVAL:
            n = min(len(key), len(self.last))
            while shared < n and key[shared] == self.last[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.count = 0
        self.buf += _varint(shared) + _varint(len(key) - shared) + _varint(len(value))
        self.buf += key[shared:] + value
        self.last = key
        self.count += 1

    def size(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        return (
            bytes(self.buf)
            + b"".join(struct.pack("<I", r) for r in self.restarts)
            + struct.pack("<I", len(self.restarts))
        )


def _write_block(out: bytearray, contents: bytes) -> bytes:
    handle = _varint(len(out)) + _varint(len(contents))
    trailer_type = b"\x00"
    out += contents + trailer_type + struct.pack("<I", mask_crc(crc32c(contents + trailer_type)))
    return handle


def write_tf_checkpoint(prefix: str | Path, tensors: dict[str, np.ndarray]) -> None:
    """Write ``tensors`` as ``PREFIX.index`` + ``PREFIX.data-00000-of-00001``."""
    prefix = Path(prefix)
    data = bytearray()
    entries: dict[bytes, bytes] = {b"": _header_proto()}
    for name in sorted(tensors):
        arr = np.asarray(tensors[name]).copy(order="C")  # ascontiguousarray would make 0-d 1-d
        raw = arr.tobytes()
        entries[name.encode()] = _entry_proto(
            NP_TO_TF[arr.dtype.newbyteorder("<")],
            arr.shape,
            len(data),
            len(raw),
            mask_crc(crc32c(raw)),
        )
        data += raw
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))

    table = bytearray()
    index = _BlockBuilder()
    block = _BlockBuilder()
    for key in sorted(entries):
        block.add(key, entries[key])
        if block.size() >= BLOCK_SIZE:
            index.add(key, _write_block(table, block.finish()))
            block = _BlockBuilder()
    if block.count:
        index.add(block.last + b"\xff", _write_block(table, block.finish()))
    meta_handle = _write_block(table, _BlockBuilder().finish())
    index_handle = _write_block(table, index.finish())
    footer = meta_handle + index_handle
    table += footer + b"\x00" * (40 - len(footer)) + struct.pack("<Q", TABLE_MAGIC)
    Path(f"{prefix}.index").write_bytes(bytes(table))
