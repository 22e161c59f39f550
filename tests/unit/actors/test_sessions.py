"""Exactly-once sessions for any state machine (actors/sessions.py): the table, the session
envelope as a trust boundary, and SessionStateMachine's snapshots carrying the sessions."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.sessions import (
    STALE,
    RefusedCommand,
    Sessions,
    SessionStateMachine,
    decode_session_command,
    encode_session_command,
)
from actors.state_machine import Command, StateMachine
from storage.memory import MemorySnapshotStorage
from storage.snapshot_storage import SnapshotMeta, SnapshotReader, SnapshotWriter


class Counter(SessionStateMachine):
    def __init__(self, ttl: int = 1_000_000) -> None:
        super().__init__(ttl)
        self.total = 0
        self.applied = 0  # how many commands really ran

    def on_command(self, command: bytes, index: int) -> Any:
        if not command.lstrip(b"-").isdigit():
            return RefusedCommand(f"not a number: {command!r}")
        self.applied += 1
        self.total += int(command)
        return self.total

    def on_query(self, query: bytes) -> Any:
        return self.total

    def save_state(self, writer: SnapshotWriter) -> Callable[[], None]:
        total = self.total
        return lambda: writer.write(str(total).encode())

    def load_state(self, reader: SnapshotReader) -> None:
        self.total = int(reader.read())


def feed(sm: StateMachine, writes: list[tuple[str, int, bytes]], first: int = 1) -> list[Any]:
    entries = [encode_session_command(c, s, d) for c, s, d in writes]
    return sm.on_apply([Command(first + i, 1, e) for i, e in enumerate(entries)])


def test_a_retry_is_answered_from_the_session_and_an_older_write_is_stale() -> None:
    counter = Counter()
    results = feed(counter, [("a", 1, b"5"), ("a", 1, b"5"), ("b", 1, b"1"), ("a", 2, b"2")])
    assert results == [5, 5, 6, 8] and counter.applied == 3
    assert feed(counter, [("a", 1, b"5")], first=5) == [STALE]
    assert counter.total == 8


def test_sessions_expire_by_log_index_alike_whatever_the_batches() -> None:
    writes = [("a", 1, b"1"), ("b", 1, b"1"), ("c", 1, b"1"), ("a", 1, b"1")]
    whole, split = Counter(ttl=2), Counter(ttl=2)
    together = feed(whole, writes)
    apart = [r for i, w in enumerate(writes) for r in feed(split, [w], first=i + 1)]
    assert together == apart == [1, 2, 3, 4]  # a's session expired: its retry ran again
    assert list(whole.sessions) == list(split.sessions) == ["c", "a"]


def test_a_refusal_changes_nothing_and_is_remembered_for_its_retry() -> None:
    counter = Counter()
    first, retry = feed(counter, [("a", 1, b"five"), ("a", 1, b"five")])
    assert isinstance(first, RefusedCommand) and retry is first
    assert counter.total == 0 and counter.applied == 0


@given(st.binary(max_size=64))
def test_the_envelope_decodes_or_raises_value_error_for_any_bytes(data: bytes) -> None:
    try:
        client_id, seq, command = decode_session_command(data)
    except ValueError:
        return
    assert encode_session_command(client_id, seq, command) == data


@pytest.mark.parametrize(
    "entry",
    [
        msgpack.packb(["a", 0, b"x"]),  # seq 0 is no write
        msgpack.packb(["", 1, b"x"]),
        msgpack.packb(["a" * 129, 1, b"x"]),
        msgpack.packb(["a", True, b"x"]),
        msgpack.packb(["a", 1, "x"]),  # str, not bytes
        msgpack.packb({"a": 1}),
        b"\xc1",
    ],
)
def test_a_bad_entry_is_refused_alike_everywhere_and_changes_nothing(entry: bytes) -> None:
    counter = Counter()
    [result] = counter.on_apply([Command(1, 1, entry)])
    assert isinstance(result, RefusedCommand) and "bad command entry at 1" in str(result)
    assert counter.total == 0 and len(counter.sessions) == 0


def save(sm: SessionStateMachine, index: int) -> tuple[MemorySnapshotStorage, SnapshotMeta]:
    store = MemorySnapshotStorage()
    writer = store.create_writer(SnapshotMeta(index, 1, b"conf"))
    finish = sm.on_snapshot_save(writer)
    if finish is not None:
        finish()
    return store, store.commit(writer)


def test_a_snapshot_carries_the_sessions_so_a_retry_after_an_install_is_not_reapplied() -> None:
    counter = Counter()
    feed(counter, [("a", 1, b"5"), ("b", 1, b"2")])
    store, meta = save(counter, 2)
    copy = Counter()
    with store.open(meta.last_index) as reader:
        copy.on_snapshot_load(reader)
    assert copy.total == 7 and list(copy.sessions) == ["a", "b"]
    assert feed(copy, [("b", 1, b"2"), ("a", 2, b"1")], first=3) == [7, 8]
    assert copy.applied == 1


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\x00\x00", id="truncated length"),
        pytest.param((10).to_bytes(8, "big") + b"abc", id="truncated header"),
        pytest.param((2**40).to_bytes(8, "big"), id="absurd length"),
        pytest.param((3).to_bytes(8, "big") + msgpack.packb([1, 2]), id="not a map"),
        pytest.param(
            (len(h := msgpack.packb({"format": "other"}))).to_bytes(8, "big") + h, id="format"
        ),
    ],
)
def test_a_malformed_snapshot_raises_value_error(payload: bytes) -> None:
    store = MemorySnapshotStorage()
    writer = store.create_writer(SnapshotMeta(1, 1, b"conf"))
    writer.write(payload)
    meta = store.commit(writer)
    with store.open(meta.last_index) as reader, pytest.raises(ValueError):
        Counter().on_snapshot_load(reader)


def test_what_a_subclass_implements_is_what_the_node_offers() -> None:
    class WritesOnly(SessionStateMachine):
        def on_command(self, command: bytes, index: int) -> Any:
            return None

    assert Counter.supports_reads() and Counter.supports_snapshots()
    assert not WritesOnly.supports_reads() and not WritesOnly.supports_snapshots()


def test_the_table_is_a_read_only_view_in_order_of_last_use() -> None:
    sessions = Sessions(ttl_entries=10)
    for index, client in enumerate(["a", "b", "a"], start=1):
        sessions.apply(client, index, index, lambda i=index: i)
    assert list(sessions) == ["b", "a"] and sessions["a"].last_seq == 3
    assert sessions.rows() == [("b", 2, 2, 2), ("a", 3, 3, 3)]
    copy = Sessions(ttl_entries=10)
    copy.load(sessions.rows())
    assert copy.rows() == sessions.rows()
    with pytest.raises(ValueError):
        Sessions(ttl_entries=0)


def test_expiry_matches_a_table_scanned_in_full_at_every_index() -> None:
    """Expiry skips its scan while nothing can be due (a lower bound on the oldest session's
    index): against a model that scans everything every time, under updates of the oldest
    session, a table expired empty, and a reload, the tables stay equal."""
    rng = random.Random(23)
    ttl = 5
    sessions = Sessions(ttl_entries=ttl)
    model: dict[str, tuple[int, int]] = {}  # client -> (seq, last index)
    seqs: dict[str, int] = {}
    index = 0
    for step in range(3000):
        index += rng.choice([1, 1, 1, 2, ttl + 1])  # now and then a gap that expires everyone
        client = rng.choice("abcd")
        seqs[client] = seqs.get(client, 0) + 1
        sessions.apply(client, seqs[client], index, lambda: None)
        model = {c: v for c, v in model.items() if v[1] > index - ttl}
        model[client] = (seqs[client], index)
        model = dict(sorted(model.items(), key=lambda item: item[1][1]))
        assert [(c, s.last_seq, s.last_index) for c, s in sessions.items()] == [
            (c, seq, at) for c, (seq, at) in model.items()
        ], step
        if step % 500 == 499:
            reloaded = Sessions(ttl_entries=ttl)
            reloaded.load(sessions.rows())
            sessions = reloaded
