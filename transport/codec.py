"""msgpack framing of the wire messages in transport.rpc.

Wire format (PROTOCOL_VERSION 5): one ZeroMQ frame holds one msgpack array

    [PROTOCOL_VERSION, type_tag, field_1, field_2, ..., field_n]

with the message's dataclass fields in declaration order (positional arrays: no field names on
the wire, the fastest msgpack shape). Field encodings:

- ``int``  -> msgpack int, validated as a non-negative int that is not a bool (every integer in
  the protocol is a term, an index, a sequence number, an id or an enum value); by name, a
  field ``term`` or ``*_term`` is in 0..MAX_TERM, except the ``term`` of a request (a leader's
  or a candidate's term), which is at least 1, and a field ``*_index`` is in 0..MAX_INDEX
  (transport.rpc);
- ``bool`` -> msgpack true/false, ``str`` -> msgpack str (UTF-8), ``bytes`` -> msgpack bin;
- ``tuple[LogEntry, ...]`` (AppendEntriesRequest.entries) -> ONE flat array
  ``[term_1, type_1, data_1, term_2, type_2, data_2, ...]``. Entry indexes are not sent: entries
  are contiguous from ``prev_log_index + 1`` (the encoder checks that, the decoder rebuilds them).
  A flat array decodes into one list instead of one list per entry, which is measurably faster.
  Entry terms must be non-decreasing, at least the request's ``prev_log_term`` and at most its
  ``term`` (a leader only ever sends entries of its own term or earlier, in log order);
- ``dict[str, Any]`` (StatusResponse.status) -> a msgpack map with str keys whose values are
  JSON-like (None, bool, int, float, str, lists and str-keyed maps), nested at most
  MAX_STATUS_DEPTH deep.

Type tags are a fixed table (``MESSAGE_TAGS``): a tag is never reused or renumbered; a new message
gets a new tag. Changing a message's fields changes its arity and needs a PROTOCOL_VERSION bump.

Decoding is the trust boundary (docs/DESIGN.md, principle 6): `decode` validates the frame's
size, the version, the tag, the arity and every field's type and range, and raises
`DecodeError` - and nothing else - for any input bytes whatsoever.

Speed (docs/DESIGN.md, principle 5): the per-message encoders and decoders are generated once
at import time from the dataclass field annotations (as dataclasses itself generates
``__init__``), so each is straight-line code with no per-field interpretation loop; the entries
of an AppendEntriesRequest are validated and built with C-level ``map`` passes rather than a
Python loop per entry.

Everything here is pure and thread-safe: encode runs on the sending actor's thread, decode on the
transport's I/O thread.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Mapping
from itertools import islice, repeat
from types import MappingProxyType
from typing import Any, Final

import msgpack

from storage.entry import EntryType, LogEntry, build_entries
from transport import rpc
from transport.errors import DecodeError, EncodeError
from transport.rpc import MAX_INDEX, MAX_TERM, RpcMessage

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "MAX_STATUS_DEPTH",
    "MESSAGE_TAGS",
    "PROTOCOL_VERSION",
    "DecodeError",
    "EncodeError",
    "decode",
    "encode",
]

# 2: AppendEntriesResponse carries conflict_term/conflict_index; 3: RequestVoteRequest.transfer
# and TimeoutNowRequest (leadership transfer); 4: RequestVoteResponse.priority.
PROTOCOL_VERSION: Final = 5

DEFAULT_MAX_FRAME_SIZE: Final = 16 * 1024 * 1024
"""Largest frame `decode` accepts by default. An AppendEntriesRequest is bounded by the
replicator's maxBodySize (512 KiB in SOFAJRaft) and a snapshot chunk by its chunk size, so 16 MiB
leaves ample room while bounding what one frame can make us allocate."""

MAX_STATUS_DEPTH: Final = 8
"""Deepest nesting of lists/maps accepted inside StatusResponse.status (the top map is depth 1)."""


MESSAGE_TAGS: Final[Mapping[type, int]] = MappingProxyType(
    {
        # NEVER renumber or reuse a tag: they are the wire identity of each message class.
        rpc.RequestVoteRequest: 1,
        rpc.RequestVoteResponse: 2,
        rpc.AppendEntriesRequest: 3,
        rpc.AppendEntriesResponse: 4,
        # 5-10 are reserved: an early draft used them for InstallSnapshot, TimeoutNow and
        # ReadIndex. The features that need such messages take new tags (15 on).
        rpc.ClientRequest: 11,
        rpc.ClientResponse: 12,
        rpc.StatusRequest: 13,
        rpc.StatusResponse: 14,
        rpc.InstallSnapshotRequest: 15,
        rpc.InstallSnapshotResponse: 16,
        rpc.AdminRequest: 17,
        rpc.ReadIndexRequest: 18,
        rpc.ReadIndexResponse: 19,
        rpc.TimeoutNowRequest: 20,
        rpc.ClientQuery: 21,
    }
)


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def encode(message: RpcMessage) -> bytes:
    """Return the wire frame of `message`.

    Raises EncodeError when `message` is not an RPC message or holds something that cannot go on
    the wire (a programming error of the sender, never a network condition). Thread-safe.
    """
    encoder = _ENCODERS.get(message.__class__)
    if encoder is None:
        raise EncodeError(f"not an RPC message: {type(message).__name__}")
    try:
        return encoder(message)
    except EncodeError:
        raise
    except Exception as exc:  # msgpack: TypeError (unpackable type), OverflowError, ValueError
        raise EncodeError(f"cannot encode {type(message).__name__}: {exc}") from exc


def decode(
    frame: bytes | bytearray | memoryview, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> RpcMessage:
    """Parse and fully validate one wire frame.

    Raises DecodeError - and no other exception, whatever `frame` holds - when the frame is
    larger than `max_frame_size`, is not msgpack, has trailing bytes, an unknown protocol
    version or type tag, the wrong number of fields, or any field of the wrong type or range.
    Thread-safe (runs on the transport's I/O thread).
    """
    try:
        size = len(frame)
    except Exception as exc:
        raise DecodeError(f"frame is not bytes: {type(frame).__name__}") from exc
    if size > max_frame_size:
        raise DecodeError(f"frame of {size} bytes exceeds the limit of {max_frame_size}")
    try:
        # Every length limit is the frame size: no string, bin, array or map inside a frame can
        # legitimately claim more elements than the frame has bytes, so a lying length header
        # fails fast instead of making msgpack allocate for it. Ext types are never used.
        obj = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            max_ext_len=0,
        )
    except Exception as exc:  # ExtraData, FormatError, StackError, ValueError, Unicode errors
        raise DecodeError(f"not a msgpack frame: {exc}") from exc
    if type(obj) is not list or len(obj) < 2:
        raise DecodeError("frame is not a [version, tag, ...] array")
    version = obj[0]
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise DecodeError(f"unsupported protocol version {_describe(version)}")
    tag = obj[1]
    decoder = _DECODERS.get(tag) if type(tag) is int else None
    if decoder is None:
        raise DecodeError(f"unknown message type tag {_describe(tag)}")
    try:
        return decoder(obj)
    except DecodeError:
        raise
    except Exception as exc:  # defensive: the generated validators should leave nothing over
        raise DecodeError(f"invalid message: {exc!r}") from exc


# --------------------------------------------------------------------------------------------
# Field helpers used by the generated code
# --------------------------------------------------------------------------------------------


def _describe(value: object) -> str:
    """A short, bounded description of an offending value for error messages (never a repr of a
    possibly huge attacker-supplied object)."""
    if type(value) in (int, bool) or value is None:
        text = repr(value)
        return text if len(text) <= 24 else f"{text[:20]}..."
    return f"<{type(value).__name__}>"


def _field_error(cls: type, name: str, expected: str, value: object) -> DecodeError:
    return DecodeError(f"{cls.__name__}.{name}: expected {expected}, got {_describe(value)}")


def _arity_error(cls: type, expected: int, got: int) -> DecodeError:
    return DecodeError(f"{cls.__name__}: expected {expected} fields, got {got}")


# Entries: [term, type, data] * n, flat. Validation is done with C-level passes over the list.
_ENTRY_SHAPE: Final = (int, int, bytes)
_ENTRY_SHAPE_CACHE: Final = list(_ENTRY_SHAPE) * 1024  # sliced for n <= 1024 entries
_ENTRY_TYPES: Final = {member.value: member for member in EntryType}


def _decode_entries(
    flat: object, first_index: int, min_term: int, max_term: int
) -> tuple[LogEntry, ...]:
    """Rebuild AppendEntriesRequest.entries from the flat wire array.

    `first_index` is prev_log_index + 1 (already validated as an int >= 1); every entry term
    must lie in max(1, min_term)..max_term and never decrease. Builds LogEntry
    objects with object.__new__ and the slot descriptors - what the frozen dataclass __init__
    does, minus its per-object Python frame - after validating every element, so the result
    satisfies LogEntry's invariant (index >= 1, term >= 1, type an EntryType, data bytes).
    """
    if type(flat) is not list:
        raise DecodeError(f"AppendEntriesRequest.entries: expected an array, got {_describe(flat)}")
    size = len(flat)
    if not size:
        return ()  # heartbeat / probe: the common case
    count, rest = divmod(size, 3)
    if rest:
        raise DecodeError(f"AppendEntriesRequest.entries: {size} items, not a multiple of 3")
    # Exact types of every element in one pass: bools are not ints here, strs are not bytes.
    shape = (
        _ENTRY_SHAPE_CACHE[:size] if size <= len(_ENTRY_SHAPE_CACHE) else [*_ENTRY_SHAPE] * count
    )
    if list(map(type, flat)) != shape:
        raise DecodeError(
            "AppendEntriesRequest.entries: expected [int term, int type, bytes data]*"
        )
    terms = flat[0::3]
    if terms[0] < max(1, min_term) or terms[-1] > max_term:
        raise DecodeError(
            "AppendEntriesRequest.entries: entry terms must lie between prev_log_term and term"
        )
    if count > 1 and not all(map(operator.le, terms, islice(terms, 1, None))):
        raise DecodeError("AppendEntriesRequest.entries: entry terms decrease")
    if first_index + count - 1 > MAX_INDEX:
        raise DecodeError("AppendEntriesRequest.entries: index exceeds MAX_INDEX")
    kinds = set(flat[1::3])
    if not kinds.issubset(_ENTRY_TYPES):
        unknown = min(kinds.difference(_ENTRY_TYPES))
        raise DecodeError(f"AppendEntriesRequest.entries: unknown entry type {_describe(unknown)}")
    types = (
        repeat(_ENTRY_TYPES[kinds.pop()], count)  # usual case: all DATA
        if len(kinds) == 1
        else map(_ENTRY_TYPES.__getitem__, flat[1::3])
    )
    return tuple(build_entries(first_index, count, terms, types, flat[2::3]))


def _encode_entries(entries: tuple[LogEntry, ...], prev_log_index: int) -> list[Any]:
    """Flatten entries to [term, type, data]*, checking they are contiguous from
    prev_log_index + 1 (indexes are implied on the wire, so a gap would silently renumber the
    follower's log: refuse it here)."""
    flat: list[Any] = []
    extend = flat.extend
    for expected, entry in enumerate(entries, prev_log_index + 1):
        if entry.index != expected:
            raise EncodeError(
                f"AppendEntriesRequest.entries are not contiguous from prev_log_index + 1: "
                f"entry {entry.index} where {expected} belongs"
            )
        extend((entry.term, entry.type, entry.data))
    return flat


_JSON_SCALARS: Final = frozenset({str, int, bool, type(None)})


def _check_json(value: object, depth: int) -> bool:
    """True when `value` is JSON-like: scalars, lists, str-keyed dicts, at most MAX_STATUS_DEPTH
    containers deep (depth counts the container holding `value`). The recursion is bounded by
    that depth, so it cannot hit the interpreter's recursion limit."""
    kind = type(value)
    if kind in _JSON_SCALARS:
        return True
    if kind is float:
        return math.isfinite(value)  # type: ignore[arg-type]  # NaN/inf are not JSON
    if depth >= MAX_STATUS_DEPTH:
        return False
    if kind is list:
        return all(_check_json(item, depth + 1) for item in value)  # type: ignore[attr-defined]
    if kind is dict:
        return all(
            type(key) is str and _check_json(item, depth + 1)
            for key, item in value.items()  # type: ignore[attr-defined]
        )
    return False


def _decode_status(value: object) -> dict[str, Any]:
    if type(value) is not dict or not _check_json(value, 0):
        raise DecodeError(
            "StatusResponse.status: expected a str-keyed map of JSON-like values at most "
            f"{MAX_STATUS_DEPTH} deep"
        )
    return value  # checked just above


def _encode_status(value: object) -> object:
    if type(value) is not dict or not _check_json(value, 0):
        raise EncodeError(
            "StatusResponse.status must be a str-keyed dict of JSON-like values at most "
            f"{MAX_STATUS_DEPTH} deep"
        )
    return value


# --------------------------------------------------------------------------------------------
# Generation of the per-message encoders/decoders
# --------------------------------------------------------------------------------------------

_Encoder = Callable[[Any], bytes]
_Decoder = Callable[[list[Any]], RpcMessage]

# Per annotation: the decoder's check (a condition that is True for a BAD value) and what it
# expects, or None for the structured kinds handled separately below.
_SCALAR_CHECKS: Final[Mapping[str, tuple[str, str]]] = {
    "int": ("type({v}) is not int or {v} < 0", "a non-negative int"),
    "priority": ("type({v}) is not int or not -1 <= {v} <= _MAX_PRIORITY", "-1..2**31-1"),
    "term": ("type({v}) is not int or not 1 <= {v} <= _MAX_TERM", "a term in 1..MAX_TERM"),
    "*_term": ("type({v}) is not int or not 0 <= {v} <= _MAX_TERM", "a term in 0..MAX_TERM"),
    "*_index": ("type({v}) is not int or not 0 <= {v} <= _MAX_INDEX", "an index <= MAX_INDEX"),
    "bool": ("type({v}) is not bool", "a bool"),
    "str": ("type({v}) is not str", "a str"),
    "bytes": ("type({v}) is not bytes", "bytes"),
}
_ENTRIES_ANNOTATION: Final = "tuple[LogEntry, ...]"
_STATUS_ANNOTATION: Final = "dict[str, Any]"


# The messages whose `term` is their sender's own term as leader or candidate: never 0.
_REQUESTS_WITH_TERM: Final = frozenset(
    {
        rpc.AppendEntriesRequest,
        rpc.RequestVoteRequest,
        rpc.InstallSnapshotRequest,
        rpc.TimeoutNowRequest,
    }
)


def _int_kind(cls: type, name: str) -> str:
    """Which check an int field gets, by its name (see the module docstring)."""
    if name == "term" and cls in _REQUESTS_WITH_TERM:
        return "term"
    if name == "term" or name.endswith("_term"):
        return "*_term"
    if name.endswith("_index"):
        return "*_index"
    if name == "priority":
        return "priority"
    return "int"


def _generate(cls: type, tag: int) -> tuple[_Encoder, _Decoder, str]:
    """Build the encoder and decoder of one message class from its field annotations.

    Returns (encoder, decoder, source). Raises TypeError at import time for a field annotation
    the codec does not know, so adding a field of a new kind to rpc.py cannot silently bypass
    validation.
    """
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    arity = len(fields) + 2
    checks: list[str] = []
    structured: list[str] = []
    encoded: list[str] = []
    for f in fields:
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        v = f.name
        if annotation == "int":
            annotation = _int_kind(cls, v)
        if annotation in _SCALAR_CHECKS:
            bad, expected = _SCALAR_CHECKS[annotation]
            checks.append(
                f"    if {bad.format(v=v)}:\n"
                f"        raise _field_error(_cls, {v!r}, {expected!r}, {v})"
            )
            encoded.append(f"m.{v}")
        elif annotation == _ENTRIES_ANNOTATION:
            if not {"prev_log_index", "prev_log_term", "term"} <= set(names):
                raise TypeError(f"{cls.__name__}: entries need prev_log_index/_term and term")
            # Runs after the scalar checks, so those three are validated ints by then.
            structured.append(
                f"    {v} = _decode_entries({v}, prev_log_index + 1, prev_log_term, term)"
            )
            encoded.append(f"_encode_entries(m.{v}, m.prev_log_index)")
        elif annotation == _STATUS_ANNOTATION:
            structured.append(f"    {v} = _decode_status({v})")
            encoded.append(f"_encode_status(m.{v})")
        else:
            raise TypeError(f"codec cannot carry {cls.__name__}.{v}: {annotation!r}")
    unpack = ", ".join(["_version", "_tag", *names])
    name = cls.__name__
    source = "\n".join(
        [
            f"def _decode_{name}(a):",
            f"    if len(a) != {arity}:",
            f"        raise _arity_error(_cls, {arity}, len(a))",
            f"    {unpack} = a",
            *checks,
            *structured,
            f"    return _cls({', '.join(names)})",
            "",
            f"def _encode_{name}(m):",
            f"    return _packb([{PROTOCOL_VERSION}, {tag}, {', '.join(encoded)}])",
            "",
        ]
    )
    namespace: dict[str, Any] = {
        "_cls": cls,
        "_packb": msgpack.packb,
        "_field_error": _field_error,
        "_arity_error": _arity_error,
        "_decode_entries": _decode_entries,
        "_encode_entries": _encode_entries,
        "_decode_status": _decode_status,
        "_encode_status": _encode_status,
        "_MAX_TERM": MAX_TERM,
        "_MAX_INDEX": MAX_INDEX,
        "_MAX_PRIORITY": 2**31 - 1,
    }
    exec(compile(source, f"<transport.codec {name}>", "exec"), namespace)
    return namespace[f"_encode_{name}"], namespace[f"_decode_{name}"], source


def _build_tables() -> tuple[dict[type, _Encoder], dict[int, _Decoder], str]:
    encoders: dict[type, _Encoder] = {}
    decoders: dict[int, _Decoder] = {}
    sources: list[str] = []
    if len(set(MESSAGE_TAGS.values())) != len(MESSAGE_TAGS):
        raise AssertionError("duplicate message type tag")
    for cls, tag in MESSAGE_TAGS.items():
        encoders[cls], decoders[tag], source = _generate(cls, tag)
        sources.append(source)
    return encoders, decoders, "\n".join(sources)


_ENCODERS, _DECODERS, GENERATED_SOURCE = _build_tables()
"""GENERATED_SOURCE: the code of every generated encoder/decoder, for reading and debugging."""
