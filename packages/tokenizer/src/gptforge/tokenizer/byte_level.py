"""GPT-2's byte-level alphabet: every byte as one printable unicode character.

HF ``tokenizers`` and GPT-2's ``encoder.json`` store a token's bytes as a string in which each
byte is one character: printable Latin-1 bytes stand for themselves and the other 68 bytes
(controls, space, ...) are shifted to U+0100 and up, so ``b" the"`` is written ``"Ġthe"``.
tiktoken stores the raw bytes instead; these helpers translate between the two.
"""

from __future__ import annotations

from functools import cache


@cache
def byte_to_char() -> dict[int, str]:
    """Return GPT-2's map from each byte value (0..255) to its printable stand-in character."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


@cache
def char_to_byte() -> dict[str, int]:
    """Return the inverse of :func:`byte_to_char`."""
    return {c: b for b, c in byte_to_char().items()}


def token_str_to_bytes(token: str) -> bytes:
    """Decode a byte-level token string (``"Ġthe"``) into its raw bytes (``b" the"``).

    Raises:
        ValueError: A character is outside the byte-level alphabet.
    """
    table = char_to_byte()
    try:
        return bytes(table[c] for c in token)
    except KeyError as e:
        raise ValueError(
            f"token {token!r} has character {e.args[0]!r} outside GPT-2's byte-level alphabet; "
            "only byte-level BPE vocabularies are supported"
        ) from None


def bytes_to_token_str(data: bytes) -> str:
    """Encode raw bytes (``b" the"``) as a byte-level token string (``"Ġthe"``)."""
    table = byte_to_char()
    return "".join(table[b] for b in data)


def readable_piece(data: bytes) -> tuple[str, bool]:
    """A token's bytes as text for people: ``(text, partial)``.

    Whole UTF-8 characters show as themselves; bytes of a character cut by the token boundary
    show as ``<0xC4>`` and make ``partial`` true (the token holds part of a character).

    >>> readable_piece("'da".encode())
    ("'da", False)
    >>> readable_piece("İs".encode()[:1])
    ('<0xC4>', True)
    """
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        pass
    parts, i = [], 0
    while i < len(data):  # decode character by character; a bad start byte stands alone
        for width in (1, 2, 3, 4):
            try:
                parts.append(data[i : i + width].decode("utf-8"))
                i += width
                break
            except UnicodeDecodeError:
                continue
        else:
            parts.append(f"<0x{data[i]:02X}>")
            i += 1
    return "".join(parts), True
