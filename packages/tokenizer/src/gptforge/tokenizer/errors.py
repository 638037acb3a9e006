"""Errors raised by gptforge.tokenizer (all ``ValueError``s, so services map them to
INVALID_ARGUMENT)."""

from __future__ import annotations


class TokenizerError(ValueError):
    """A tokenizer could not be built, loaded, or asked to do what was requested."""


class SpecialTokenError(TokenizerError):
    """Text holds a special token that the caller did not allow (names the argument to pass)."""
