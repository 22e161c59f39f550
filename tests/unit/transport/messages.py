"""Sample wire messages and hypothesis strategies for every RPC class (shared by the codec and
memory-transport tests; imported as a plain module, so it holds no tests)."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import strategies as st

from storage.entry import EntryType, LogEntry
from transport import rpc
from transport.codec import MAX_STATUS_DEPTH, MESSAGE_TAGS
from transport.rpc import MAX_INDEX, MAX_TERM

UINT64_MAX = (1 << 64) - 1

ENTRIES = tuple(LogEntry(11 + i, 3, EntryType(i % 3), bytes([i]) * i) for i in range(5))

# At least one instance of every message class, with edge values: zero and uint64-max ints
# (MAX_TERM and MAX_INDEX for terms and indexes), empty and non-ASCII strings, empty bytes, no
# entries.
SAMPLES: list[Any] = [
    rpc.RequestVoteRequest(5, "127.0.0.1:7001", 10, 4, False),
    rpc.RequestVoteRequest(MAX_TERM, "", 0, 0, True),
    rpc.RequestVoteRequest(6, "b:2", 10, 4, False, transfer=True),
    rpc.RequestVoteResponse(5, True, True, "127.0.0.1:7002", 6),
    rpc.RequestVoteResponse(5, False, True, "127.0.0.1:7002", 6, 2**31 - 1),
    rpc.AppendEntriesRequest(3, "127.0.0.1:7001", 10, 2, ENTRIES, 9, 77),
    rpc.AppendEntriesRequest(3, "127.0.0.1:7001", 0, 0, (), 0, 0),
    rpc.AppendEntriesRequest(
        1, "l", MAX_INDEX - 1, 1, (LogEntry(MAX_INDEX, 1, EntryType.DATA, b""),), 0, UINT64_MAX
    ),
    rpc.AppendEntriesResponse(3, False, 0, "127.0.0.1:7003", UINT64_MAX, 3),
    rpc.AppendEntriesResponse(MAX_TERM, False, 7, "b:2", 4, 2, MAX_TERM, MAX_INDEX),
    rpc.InstallSnapshotRequest(4, "a:1", 100, 3, b"\x92\x91\xa3a:1\x90", 9, 7, 0, b"ab", False, 1),
    rpc.InstallSnapshotRequest(
        MAX_TERM, "a:1", MAX_INDEX, MAX_TERM, b"", UINT64_MAX, UINT64_MAX, 0, b"", True, 0
    ),
    rpc.InstallSnapshotResponse(4, True, "b:2", 1, 4, 100, 2, False),
    rpc.InstallSnapshotResponse(MAX_TERM, False, "", UINT64_MAX, 0, 0, 0, True),
    rpc.ClientRequest("client-\u00e9\u4e2d\U0001f600", 1, 2, b"\xff\x00put k v"),
    rpc.ClientQuery("client-\u00e9", 2**64 - 1, b"\x00get k", "linearizable", True),
    rpc.ClientQuery("c", 0, b"", "", False),
    rpc.ClientResponse(1, rpc.ClientStatus.OK),
    rpc.ClientResponse(1, rpc.ClientStatus.NOT_LEADER, b"", "b:2", "not leader", "a:1"),
    rpc.StatusRequest("cli", 3),
    rpc.AdminRequest("admin-\u00e9", UINT64_MAX, "snapshot", "127.0.0.1:7001"),
    rpc.AdminRequest("", 0, "", ""),
    rpc.ReadIndexRequest(3, "b:2", UINT64_MAX),
    rpc.ReadIndexRequest(0, "", 0),
    rpc.ReadIndexResponse(MAX_TERM, "a:1", 7, True, MAX_INDEX),
    rpc.ReadIndexResponse(0, "", 0, False, 0),
    rpc.TimeoutNowRequest(3, "a:1"),
    rpc.TimeoutNowRequest(MAX_TERM, ""),
    rpc.StatusResponse(3, "a:1"),
    rpc.StatusResponse(
        3,
        "a:1",
        {
            "id": "a:1",
            "role": "LEADER",
            "term": 4,
            "leader": None,
            "ratio": 0.5,
            "ok": True,
            "peers": ["a:1", "b:2", {"nested": [1, [2, {"x": -3}]]}],
        },
    ),
]


# ---- hypothesis strategies ------------------------------------------------------------------

uints = st.integers(min_value=0, max_value=UINT64_MAX)
json_scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), UINT64_MAX),
    st.text(),
    st.floats(allow_nan=False, allow_infinity=False),
)


def _json(depth: int) -> st.SearchStrategy[Any]:
    """JSON-like values that fit in `depth` more levels of containers."""
    if depth <= 0:
        return json_scalars
    inner = _json(depth - 1)
    return (
        json_scalars | st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3)
    )


status_maps = st.dictionaries(st.text(max_size=10), _json(MAX_STATUS_DEPTH - 1), max_size=4)


@st.composite
def entries_after(
    draw: st.DrawFn, prev_log_index: int, prev_log_term: int, term: int
) -> tuple[LogEntry, ...]:
    """Entries a leader of `term` may send after prev: non-decreasing terms in prev..term."""
    room = MAX_INDEX - prev_log_index
    count = draw(st.integers(0, min(room, 8)))
    low = max(1, prev_log_term)
    if low > term:
        count = 0
    terms = sorted(draw(st.integers(low, term)) for _ in range(count))
    return tuple(
        LogEntry(
            prev_log_index + 1 + i,
            terms[i],
            draw(st.sampled_from(EntryType)),
            draw(st.binary(max_size=40)),
        )
        for i in range(count)
    )


_INT_STRATEGIES: dict[str, st.SearchStrategy[int]] = {
    "term": st.integers(1, MAX_TERM),
    "*_term": st.integers(0, MAX_TERM),
    "*_index": st.integers(0, MAX_INDEX),
    "int": uints,
    "priority": st.integers(-1, 2**31 - 1),
}


def int_kind(cls: type, name: str) -> str:
    """The codec's rule: which range an int field has, by its name."""
    leaders = (
        rpc.AppendEntriesRequest,
        rpc.RequestVoteRequest,
        rpc.InstallSnapshotRequest,
        rpc.TimeoutNowRequest,
    )
    if name == "term" and cls in leaders:
        return "term"
    if name == "term" or name.endswith("_term"):
        return "*_term"
    if name == "priority":
        return "priority"
    return "*_index" if name.endswith("_index") else "int"


_FIELD_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "bool": st.booleans(),
    "str": st.text(max_size=30),
    "bytes": st.binary(max_size=60),
    "dict[str, Any]": status_maps,
}


@st.composite
def messages_of(draw: st.DrawFn, cls: type) -> Any:
    """Any valid instance of message class `cls`."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.type == "tuple[LogEntry, ...]":
            continue
        if field.type == "int":
            values[field.name] = draw(_INT_STRATEGIES[int_kind(cls, field.name)])
        else:
            values[field.name] = draw(_FIELD_STRATEGIES[str(field.type)])
    if "prev_log_index" in values:
        values["entries"] = draw(
            entries_after(values["prev_log_index"], values["prev_log_term"], values["term"])
        )
    return cls(**values)


any_message = st.sampled_from(sorted(MESSAGE_TAGS, key=MESSAGE_TAGS.__getitem__)).flatmap(
    messages_of
)
