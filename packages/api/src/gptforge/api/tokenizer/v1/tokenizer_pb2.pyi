from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SpecialTokenMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPECIAL_TOKEN_MODE_UNSPECIFIED: _ClassVar[SpecialTokenMode]
    SPECIAL_TOKEN_MODE_REJECT: _ClassVar[SpecialTokenMode]
    SPECIAL_TOKEN_MODE_ALLOW_ALL: _ClassVar[SpecialTokenMode]
    SPECIAL_TOKEN_MODE_AS_TEXT: _ClassVar[SpecialTokenMode]
SPECIAL_TOKEN_MODE_UNSPECIFIED: SpecialTokenMode
SPECIAL_TOKEN_MODE_REJECT: SpecialTokenMode
SPECIAL_TOKEN_MODE_ALLOW_ALL: SpecialTokenMode
SPECIAL_TOKEN_MODE_AS_TEXT: SpecialTokenMode

class EncodeRequest(_message.Message):
    __slots__ = ("texts", "special_token_mode", "allowed_special", "return_pieces", "return_offsets")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    SPECIAL_TOKEN_MODE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_SPECIAL_FIELD_NUMBER: _ClassVar[int]
    RETURN_PIECES_FIELD_NUMBER: _ClassVar[int]
    RETURN_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    special_token_mode: SpecialTokenMode
    allowed_special: _containers.RepeatedScalarFieldContainer[str]
    return_pieces: bool
    return_offsets: bool
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., special_token_mode: _Optional[_Union[SpecialTokenMode, str]] = ..., allowed_special: _Optional[_Iterable[str]] = ..., return_pieces: bool = ..., return_offsets: bool = ...) -> None: ...

class Encoding(_message.Message):
    __slots__ = ("ids", "pieces", "byte_starts", "byte_ends")
    IDS_FIELD_NUMBER: _ClassVar[int]
    PIECES_FIELD_NUMBER: _ClassVar[int]
    BYTE_STARTS_FIELD_NUMBER: _ClassVar[int]
    BYTE_ENDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    pieces: _containers.RepeatedScalarFieldContainer[bytes]
    byte_starts: _containers.RepeatedScalarFieldContainer[int]
    byte_ends: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., pieces: _Optional[_Iterable[bytes]] = ..., byte_starts: _Optional[_Iterable[int]] = ..., byte_ends: _Optional[_Iterable[int]] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("encodings", "total_tokens")
    ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    encodings: _containers.RepeatedCompositeFieldContainer[Encoding]
    total_tokens: int
    def __init__(self, encodings: _Optional[_Iterable[_Union[Encoding, _Mapping]]] = ..., total_tokens: _Optional[int] = ...) -> None: ...

class DecodeSequence(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("sequences", "skip_special_tokens", "return_bytes", "return_pieces")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    SKIP_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RETURN_BYTES_FIELD_NUMBER: _ClassVar[int]
    RETURN_PIECES_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[DecodeSequence]
    skip_special_tokens: bool
    return_bytes: bool
    return_pieces: bool
    def __init__(self, sequences: _Optional[_Iterable[_Union[DecodeSequence, _Mapping]]] = ..., skip_special_tokens: bool = ..., return_bytes: bool = ..., return_pieces: bool = ...) -> None: ...

class Decoded(_message.Message):
    __slots__ = ("text", "data", "pieces")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PIECES_FIELD_NUMBER: _ClassVar[int]
    text: str
    data: bytes
    pieces: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, text: _Optional[str] = ..., data: _Optional[bytes] = ..., pieces: _Optional[_Iterable[bytes]] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Decoded]
    def __init__(self, results: _Optional[_Iterable[_Union[Decoded, _Mapping]]] = ...) -> None: ...

class CountTokensRequest(_message.Message):
    __slots__ = ("texts", "special_token_mode", "allowed_special")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    SPECIAL_TOKEN_MODE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_SPECIAL_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    special_token_mode: SpecialTokenMode
    allowed_special: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., special_token_mode: _Optional[_Union[SpecialTokenMode, str]] = ..., allowed_special: _Optional[_Iterable[str]] = ...) -> None: ...

class CountTokensResponse(_message.Message):
    __slots__ = ("counts", "total_tokens")
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.RepeatedScalarFieldContainer[int]
    total_tokens: int
    def __init__(self, counts: _Optional[_Iterable[int]] = ..., total_tokens: _Optional[int] = ...) -> None: ...

class GetTokenizerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TokenizerLimits(_message.Message):
    __slots__ = ("max_batch_size", "max_text_bytes", "max_ids_per_sequence", "max_receive_message_bytes", "max_send_message_bytes")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IDS_PER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MAX_RECEIVE_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SEND_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_text_bytes: int
    max_ids_per_sequence: int
    max_receive_message_bytes: int
    max_send_message_bytes: int
    def __init__(self, max_batch_size: _Optional[int] = ..., max_text_bytes: _Optional[int] = ..., max_ids_per_sequence: _Optional[int] = ..., max_receive_message_bytes: _Optional[int] = ..., max_send_message_bytes: _Optional[int] = ...) -> None: ...

class GetTokenizerInfoResponse(_message.Message):
    __slots__ = ("n_vocab", "eot_token", "special_tokens", "fingerprint", "name", "limits")
    class SpecialTokensEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    N_VOCAB_FIELD_NUMBER: _ClassVar[int]
    EOT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    n_vocab: int
    eot_token: int
    special_tokens: _containers.ScalarMap[str, int]
    fingerprint: str
    name: str
    limits: TokenizerLimits
    def __init__(self, n_vocab: _Optional[int] = ..., eot_token: _Optional[int] = ..., special_tokens: _Optional[_Mapping[str, int]] = ..., fingerprint: _Optional[str] = ..., name: _Optional[str] = ..., limits: _Optional[_Union[TokenizerLimits, _Mapping]] = ...) -> None: ...
