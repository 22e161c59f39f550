"""transport.codec: round trips, the pinned wire format, and strict validation."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest

from storage.entry import EntryType, LogEntry
from tests.unit.transport.messages import SAMPLES, UINT64_MAX
from transport import codec, rpc
from transport.codec import (
    DEFAULT_MAX_FRAME_SIZE,
    MAX_STATUS_DEPTH,
    MESSAGE_TAGS,
    PROTOCOL_VERSION,
    decode,
    encode,
)
from transport.errors import DecodeError, EncodeError, TransportError
from transport.rpc import MAX_INDEX, MAX_TERM, StatusResponse


def fields_of(frame: bytes) -> list[Any]:
    value = msgpack.unpackb(frame)
    assert isinstance(value, list)
    return value


def repack(values: list[Any]) -> bytes:
    return msgpack.packb(values, use_bin_type=True)


# ---- round trips ------------------------------------------------------------------------------


def test_every_message_class_has_a_sample() -> None:
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TAGS)
    assert set(MESSAGE_TAGS) == set(rpc.RpcMessage.__args__)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Any) -> None:
    decoded = decode(encode(message))
    assert decoded == message
    assert type(decoded) is type(message)


def test_decoded_entries_are_real_log_entries() -> None:
    request = rpc.AppendEntriesRequest(
        3, "l", 10, 2, tuple(LogEntry(11 + i, 3, EntryType(i % 3), b"d") for i in range(3)), 9, 1
    )
    entries = decode(encode(request)).entries  # type: ignore[union-attr]
    assert [type(e) for e in entries] == [LogEntry] * 3
    assert [type(e.type) for e in entries] == [EntryType] * 3
    assert [e.index for e in entries] == [11, 12, 13]
    assert [str(e) for e in entries] == [
        "11@3:NO_OP(1B)",
        "12@3:DATA(1B)",
        "13@3:CONFIGURATION(1B)",
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        entries[0].term = 5  # type: ignore[misc]


def test_decode_accepts_bytes_like_frames() -> None:
    frame = encode(SAMPLES[0])
    assert decode(bytearray(frame)) == SAMPLES[0]
    assert decode(memoryview(frame)) == SAMPLES[0]


# ---- the wire format is pinned ----------------------------------------------------------------


def test_tags_never_change() -> None:
    assert {cls.__name__: tag for cls, tag in MESSAGE_TAGS.items()} == {
        "RequestVoteRequest": 1,
        "RequestVoteResponse": 2,
        "AppendEntriesRequest": 3,
        "AppendEntriesResponse": 4,
        "ClientRequest": 11,
        "ClientResponse": 12,
        "StatusRequest": 13,
        "StatusResponse": 14,
        "InstallSnapshotRequest": 15,
        "InstallSnapshotResponse": 16,
        "AdminRequest": 17,
        "ReadIndexRequest": 18,
        "ReadIndexResponse": 19,
        "TimeoutNowRequest": 20,
        "ClientQuery": 21,
    }


def test_wire_layout() -> None:
    request = rpc.AppendEntriesRequest(
        3,
        "l:1",
        10,
        2,
        (LogEntry(11, 2, EntryType.NO_OP), LogEntry(12, 3, EntryType.DATA, b"x")),
        9,
        7,
    )
    assert fields_of(encode(request)) == [5, 3, 3, "l:1", 10, 2, [2, 0, b"", 3, 1, b"x"], 9, 7, ""]
    assert encode(rpc.RequestVoteResponse(7, True, False, "b", 6)) == bytes.fromhex(
        "98050207c3c2a16206ff"
    )
    assert fields_of(encode(rpc.TimeoutNowRequest(4, "l:1"))) == [5, 20, 4, "l:1"]


# ---- what decode rejects ----------------------------------------------------------------------


def expect_decode_error(frame: bytes, match: str = "") -> DecodeError:
    with pytest.raises(DecodeError, match=match) as info:
        decode(frame)
    assert isinstance(info.value, TransportError)
    return info.value


@pytest.mark.parametrize(
    "frame",
    [b"", b"\xc1", b"\x92\x01", b"\xdd\xff\xff\xff\xff", b"\xa3ab", b"\xc4\x10abc"],
    ids=["empty", "reserved byte", "truncated", "huge array header", "short str", "short bin"],
)
def test_not_msgpack(frame: bytes) -> None:
    expect_decode_error(frame, "not a msgpack frame")


def test_trailing_garbage() -> None:
    expect_decode_error(encode(SAMPLES[0]) + b"\x00", "not a msgpack frame")


@pytest.mark.parametrize("value", [None, 1, "x", {}, [], [1], {"a": 1}], ids=repr)
def test_not_a_message_array(value: Any) -> None:
    expect_decode_error(repack(value), "array")


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, 6, -1, True, "5", 5.0, None])
def test_unknown_version(version: Any) -> None:
    values = fields_of(encode(SAMPLES[0]))
    values[0] = version
    expect_decode_error(repack(values), "unsupported protocol version")


@pytest.mark.parametrize("tag", [0, 22, 255, -3, True, "1", None, 3.0])
def test_unknown_tag(tag: Any) -> None:
    values = fields_of(encode(SAMPLES[0]))
    values[1] = tag
    expect_decode_error(repack(values), "unknown message type tag")


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_wrong_arity(message: Any) -> None:
    values = fields_of(encode(message))
    expect_decode_error(repack([*values, 0]), "fields")
    expect_decode_error(repack(values[:-1]), "fields")


# Wrong values for each field kind; the right kind itself is excluded per field below.
WRONG: dict[str, list[Any]] = {
    "int": [True, False, -1, 1.0, "1", b"1", None, [], {}],
    "priority": [True, -2, 2**31, 1.0, "1", None],
    "bool": [0, 1, "true", None, 1.0],
    "str": [b"x", 1, None, ["x"], True],
    "bytes": ["x", 1, None, [b"x"], True],
}


def field_cases() -> list[Any]:
    """Every scalar field of every message class, with each wrong value of its kind."""
    one_per_class = {type(m): m for m in reversed(SAMPLES)}
    return [
        pytest.param(message, position, wrong, id=f"{cls.__name__}.{field.name}={wrong!r}")
        for cls, message in one_per_class.items()
        for position, field in enumerate(dataclasses.fields(message))
        for wrong in WRONG.get("priority" if field.name == "priority" else str(field.type), [])
    ]


@pytest.mark.parametrize(("message", "position", "wrong"), field_cases())
def test_wrong_field_type(message: Any, position: int, wrong: Any) -> None:
    values = fields_of(encode(message))
    values[2 + position] = wrong
    name = dataclasses.fields(message)[position].name
    expect_decode_error(repack(values), f"{type(message).__name__}.{name}")


def aer_values(flat: Any, prev_log_index: int = 10) -> bytes:
    return repack([PROTOCOL_VERSION, 3, 3, "l", prev_log_index, 2, flat, 9, 1, ""])


@pytest.mark.parametrize(
    "flat",
    [
        None,
        {},
        b"",
        [3, 1],  # not a multiple of 3
        [3, 1, b"x", 3],
        [0, 1, b"x"],  # term 0
        [-1, 1, b"x"],
        [True, 1, b"x"],
        [3, True, b"x"],
        [3, 3, b"x"],  # unknown entry type
        [3, -1, b"x"],
        [3, 1, "x"],  # data must be bytes
        [3, 1, None],
        [3, 1.0, b"x"],
        [3, 1, b"x", 3, 1, [b"x"]],
        [[3, 1, b"x"]],  # nested entries are not the format
        [4, 1, b"x"],  # a term after the request's own term 3
        [1, 1, b"x"],  # a term before prev_log_term 2
        [3, 1, b"x", 2, 1, b"y"],  # terms that decrease
    ],
    ids=repr,
)
def test_bad_entries(flat: Any) -> None:
    expect_decode_error(aer_values(flat), "AppendEntriesRequest.entries")


def test_many_entries_beyond_the_shape_cache() -> None:
    count = 1500
    entries = tuple(LogEntry(1 + i, 1, EntryType.DATA, b"") for i in range(count))
    request = rpc.AppendEntriesRequest(1, "l", 0, 0, entries, 0, 0)
    assert decode(encode(request)) == request
    flat = fields_of(encode(request))[6]
    flat[-2] = True
    expect_decode_error(aer_values(flat, 0), "entries")


def test_entry_index_overflow() -> None:
    expect_decode_error(aer_values([3, 1, b"", 3, 1, b""], MAX_INDEX - 1), "exceeds MAX_INDEX")


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (rpc.RequestVoteRequest(MAX_TERM + 1, "a", 0, 0, True), "term in 1..MAX_TERM"),
        (rpc.RequestVoteRequest(0, "a", 0, 0, False), "term in 1..MAX_TERM"),
        (rpc.RequestVoteResponse(2, True, False, "a", MAX_TERM + 1), "req_term"),
        (rpc.AppendEntriesRequest(0, "a", 0, 0, (), 0, 1), "term in 1..MAX_TERM"),
        (rpc.AppendEntriesRequest(UINT64_MAX, "a", 0, 0, (), 0, 1), "term in 1..MAX_TERM"),
        (rpc.AppendEntriesRequest(2, "a", MAX_INDEX + 1, 1, (), 0, 1), "prev_log_index"),
        (rpc.AppendEntriesRequest(2, "a", 0, 0, (), MAX_INDEX + 1, 1), "committed_index"),
        (rpc.AppendEntriesResponse(2, False, 0, "b", 1, 2, MAX_TERM + 1, 0), "conflict_term"),
    ],
    ids=lambda value: getattr(value, "__name__", None) or str(value)[:40],
)
def test_terms_and_indexes_out_of_range_are_refused(message: Any, match: str) -> None:
    """A hostile term (2**64 - 1 was once adopted, then term + 1 could not be encoded) or index
    is refused at the trust boundary, with a message naming the field."""
    expect_decode_error(
        msgpack.packb(
            [
                PROTOCOL_VERSION,
                MESSAGE_TAGS[type(message)],
                *[
                    getattr(message, f.name) if f.type != "tuple[LogEntry, ...]" else []
                    for f in dataclasses.fields(message)
                ],
            ]
        ),
        match,
    )


def nested(depth: int) -> dict[str, Any]:
    """A status map whose nesting (counting itself) is `depth` containers."""
    value: Any = 1
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    return {"top": value}


@pytest.mark.parametrize(
    "status",
    [
        None,
        [],
        {1: "int key"},
        {"k": b"bytes"},
        {"k": {b"bytes key": 1}},
        {"k": (1 << 64) + 1},  # msgpack cannot even carry it, see test below
        nested(MAX_STATUS_DEPTH + 1),
        {"k": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
    ],
    ids=["none", "list", "int key", "bytes value", "bytes key", "big int", "too deep", "very deep"],
)
def test_bad_status(status: Any) -> None:
    try:
        frame = repack([PROTOCOL_VERSION, 14, 3, "a", status])
    except (OverflowError, ValueError, TypeError):
        return  # not representable in msgpack at all
    expect_decode_error(frame, "StatusResponse.status|not a msgpack frame")


def test_status_depth_limit_is_inclusive() -> None:
    message = rpc.StatusResponse(1, "a", nested(MAX_STATUS_DEPTH))
    assert decode(encode(message)) == message


def test_oversized_frame() -> None:
    frame = encode(rpc.ClientRequest("c", 1, 1, b"x" * 1000))
    assert decode(frame, max_frame_size=len(frame)) is not None
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decode(frame, max_frame_size=len(frame) - 1)
    huge = b"\x00" * (DEFAULT_MAX_FRAME_SIZE + 1)
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decode(huge)


def test_lying_length_headers_do_not_allocate() -> None:
    # A bin claiming 2 GiB inside a 10-byte frame fails on the length limit, not on memory.
    expect_decode_error(b"\x93\x01\x0b\xc6\x7f\xff\xff\xff" + b"ab", "not a msgpack frame")
    expect_decode_error(b"\xdd\x7f\xff\xff\xff\x01", "not a msgpack frame")
    expect_decode_error(b"\xdf\x7f\xff\xff\xff\x01", "not a msgpack frame")


def test_ext_types_rejected() -> None:
    values: list[Any] = fields_of(encode(SAMPLES[0]))
    values[3] = msgpack.ExtType(1, b"x")
    expect_decode_error(repack(values), "not a msgpack frame")


def test_non_bytes_input() -> None:
    for junk in (None, 12, "text", object()):
        with pytest.raises(DecodeError):
            decode(junk)  # type: ignore[arg-type]


# ---- what encode rejects ----------------------------------------------------------------------


def test_encode_rejects_non_messages() -> None:
    with pytest.raises(EncodeError, match="not an RPC message"):
        encode(object())  # type: ignore[arg-type]

    class Sub(rpc.StatusRequest):  # a subclass has no tag of its own
        pass

    with pytest.raises(EncodeError, match="not an RPC message: Sub"):
        encode(Sub("c", 1))


def test_encode_rejects_gaps_in_entries() -> None:
    entries = (LogEntry(11, 1, EntryType.DATA), LogEntry(13, 1, EntryType.DATA))
    with pytest.raises(EncodeError, match="contiguous"):
        encode(rpc.AppendEntriesRequest(1, "l", 10, 1, entries, 0, 0))
    with pytest.raises(EncodeError, match="contiguous"):
        encode(rpc.AppendEntriesRequest(1, "l", 9, 1, entries[:1], 0, 0))


@pytest.mark.parametrize(
    "message",
    [
        rpc.RequestVoteRequest(1 << 64, "a", 0, 0, False),
        rpc.ClientRequest("c", 1, 1, object()),  # type: ignore[arg-type]
        rpc.StatusResponse(1, "a", {"k": b"bytes"}),
        rpc.StatusResponse(1, "a", {1: "x"}),  # type: ignore[dict-item]
        rpc.StatusResponse(1, "a", nested(MAX_STATUS_DEPTH + 1)),
        rpc.StatusResponse(1, "a", {"k": (1, 2)}),
    ],
    ids=["int too big", "object", "bytes in status", "int key", "too deep", "tuple"],
)
def test_encode_errors(message: Any) -> None:
    with pytest.raises(EncodeError):
        encode(message)


def test_generated_source_is_available() -> None:
    assert "def _decode_AppendEntriesRequest(a):" in codec.GENERATED_SOURCE
    assert PROTOCOL_VERSION == 5


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_status_with_a_non_finite_float_is_refused(bad: float) -> None:
    """NaN and infinities are not JSON (and NaN is not even equal to itself)."""
    frame = msgpack.packb([PROTOCOL_VERSION, MESSAGE_TAGS[StatusResponse], 1, "a:1", {"x": bad}])
    with pytest.raises(DecodeError):
        decode(frame)
