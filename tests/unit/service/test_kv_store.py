"""The KV state machine and its command encoding: semantics, exactly-once sessions (§6.3),
deterministic session expiry, and validation of everything that arrives from the network."""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.service.errors import InvalidCommandError
from actors.service.kv_store import SNAPSHOT_FORMAT, KVStateMachine
from actors.sessions import STALE
from actors.state_machine import Command
from storage.errors import CorruptSnapshotError
from storage.memory import MemorySnapshotStorage
from storage.snapshot_storage import SnapshotMeta
from transport.errors import DecodeError
from transport.kv_protocol import (
    CAS,
    DELETE,
    GET,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    PUT,
    KVCommand,
    LoggedCommand,
    decode_command,
    decode_logged,
    decode_logged_parts,
    encode_command,
    encode_logged,
)


class Log:
    """Feeds commands to a state machine with consecutive log indexes."""

    def __init__(self, sm: KVStateMachine) -> None:
        self.sm = sm
        self.index = 0

    def apply(
        self, client: str, seq: int, op: str, key: str, a: str | None = None, b: str | None = None
    ) -> object:
        self.index += 1
        data = encode_logged(LoggedCommand(client, seq, KVCommand(op, key, a, b)))
        return self.sm.on_apply([Command(self.index, 1, data)])[0]


@pytest.fixture
def log() -> Log:
    return Log(KVStateMachine(session_ttl_entries=100))


def test_put_get_delete_cas_semantics(log: Log) -> None:
    assert log.apply("c", 0, GET, "k") is None
    assert log.apply("c", 1, PUT, "k", "v") is None
    assert log.apply("c", 0, GET, "k") == "v"
    assert log.apply("c", 2, CAS, "k", "nope", "w") is False
    assert log.apply("c", 3, CAS, "k", "v", "w") is True
    assert log.apply("c", 4, CAS, "new", None, "x") is True  # expected None: only if absent
    assert log.apply("c", 5, CAS, "new", None, "y") is False
    assert log.apply("c", 6, DELETE, "k") is True
    assert log.apply("c", 7, DELETE, "k") is False
    assert log.sm.data == {"new": "x"}


def test_a_retried_write_is_answered_not_applied_again(log: Log) -> None:
    assert log.apply("c", 1, CAS, "k", None, "first") is True
    log.apply("other", 1, PUT, "k", "changed")
    # The retry of seq 1 (say the first answer was lost) gets the remembered answer, and does
    # not run again against the changed state (where it would now return False).
    assert log.apply("c", 1, CAS, "k", None, "first") is True
    assert log.sm.data["k"] == "changed"


def test_a_delayed_older_request_is_not_applied(log: Log) -> None:
    log.apply("c", 2, PUT, "k", "new")
    assert log.apply("c", 1, PUT, "k", "old") is STALE
    assert log.sm.data["k"] == "new"


def test_sessions_expire_by_log_index_identically_on_every_replica() -> None:
    replicas = [Log(KVStateMachine(session_ttl_entries=10)) for _ in range(2)]
    for replica in replicas:
        replica.apply("idle", 1, PUT, "a", "1")
        for n in range(10):
            replica.apply("busy", n + 1, PUT, "b", str(n))
    assert [sorted(r.sm.sessions) for r in replicas] == [["busy"], ["busy"]]
    # With its session gone, a very late retry of "idle" seq 1 is a new request again.
    assert replicas[0].apply("idle", 1, PUT, "a", "1") is None


def test_an_undecodable_entry_is_an_error_result_and_changes_nothing(log: Log) -> None:
    log.apply("c", 1, PUT, "k", "v")
    (result,) = log.sm.on_apply([Command(99, 1, b"\xc1garbage")])
    assert isinstance(result, InvalidCommandError)
    assert log.sm.data == {"k": "v"}


def test_commands_round_trip() -> None:
    for command in (KVCommand(PUT, "k", "v"), KVCommand(GET, "k"), KVCommand(CAS, "k", None, "n")):
        assert decode_command(encode_command(command)) == command
    logged = LoggedCommand("client-1", 7, KVCommand(DELETE, "k"))
    assert decode_logged(encode_logged(logged)) == logged


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        msgpack.packb(["put", "k", "v"]),  # wrong arity
        msgpack.packb(["drop_table", "k", None, None]),
        msgpack.packb(["put", "", "v", None]),  # empty key
        msgpack.packb(["put", 5, "v", None]),
        msgpack.packb(["put", "k", None, None]),  # put without a value
        msgpack.packb(["cas", "k", "v", None]),  # cas without a new value
        msgpack.packb(["put", "k", b"bytes", None]),
        msgpack.packb(["put", "k" * 5000, "v", None]),
        msgpack.packb({"op": "put"}),
    ],
)
def test_malformed_commands_are_refused_with_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_command(payload)


def test_the_size_limits_are_in_utf8_bytes_whatever_the_characters() -> None:
    four = "\U0001f600"  # 4 bytes in UTF-8
    for key in ("k" * MAX_KEY_BYTES, four * (MAX_KEY_BYTES // 4), "é" * (MAX_KEY_BYTES // 2)):
        assert decode_command(encode_command(KVCommand(PUT, key, "v"))).key == key
    for key in ("k" * (MAX_KEY_BYTES + 1), four * (MAX_KEY_BYTES // 4) + "k", "é" * 2049):
        with pytest.raises(DecodeError, match="4 KiB"):
            decode_command(encode_command(KVCommand(PUT, key, "v")))
    value = four * (MAX_VALUE_BYTES // 4)
    assert decode_command(encode_command(KVCommand(PUT, "k", value))).arg1 == value
    with pytest.raises(DecodeError, match="1 MiB"):
        decode_command(encode_command(KVCommand(CAS, "k", "v", value + "x")))


def test_decoded_commands_are_ordinary_frozen_kv_commands() -> None:
    client_id, seq, command = decode_logged_parts(
        encode_logged(LoggedCommand("c", 3, KVCommand(CAS, "k", "old", "new")))
    )
    assert (client_id, seq) == ("c", 3)
    assert command == KVCommand(CAS, "k", "old", "new") and type(command) is KVCommand
    assert hash(command) == hash(KVCommand(CAS, "k", "old", "new"))
    with pytest.raises(AttributeError):
        command.key = "other"  # type: ignore[misc]


# -- replicas never diverge: expiry is a function of the log alone ----------------------------


def logged(index: int, client: str, seq: int, op: str, key: str, a: str | None = None) -> Command:
    return Command(index, 1, encode_logged(LoggedCommand(client, seq, KVCommand(op, key, a))))


def apply_in_batches(entries: list[Command], cuts: list[int], ttl: int) -> tuple[Any, ...]:
    """Apply `entries` in the batches that `cuts` (positions) make; return the outcome."""
    sm = KVStateMachine(session_ttl_entries=ttl)
    results: list[Any] = []
    bounds = [0, *sorted(set(cuts)), len(entries)]
    for start, end in itertools.pairwise(bounds):
        if start < end:
            results.extend(sm.on_apply(entries[start:end]))
    sessions = {c: (s.last_seq, s.last_result, s.last_index) for c, s in sm.sessions.items()}
    return sm.data, sessions, [repr(r) for r in results]


def test_the_reproduced_divergence_is_gone() -> None:
    """Reproduced with TTL 3: [c1#1 put k=v1, c2 put k=v2, c2, c2, c1#1 retry] gave k=v2 in one
    batch and k=v1 as [1..4] + [5], because expiry ran once per batch."""
    entries = [
        logged(1, "c1", 1, PUT, "k", "v1"),
        logged(2, "c2", 1, PUT, "k", "v2"),
        logged(3, "c2", 2, GET, "x"),
        logged(4, "c2", 3, GET, "x"),
        logged(5, "c1", 1, PUT, "k", "v1"),
    ]
    one_batch = apply_in_batches(entries, [], ttl=3)
    assert apply_in_batches(entries, [4], ttl=3) == one_batch
    assert one_batch[0] == {"k": "v1"}  # c1's session expired before entry 5: applied again


commands = st.tuples(
    st.sampled_from(["c1", "c2", "c3"]),
    st.integers(1, 4),  # small seqs: retries, duplicates and stale requests are common
    st.sampled_from([PUT, GET, DELETE, CAS]),
    st.sampled_from(["a", "b"]),
    st.sampled_from(["x", "y", None]),
)


@settings(max_examples=300)
@given(
    st.lists(commands, min_size=1, max_size=30),
    st.lists(st.integers(0, 30), max_size=8),
    st.integers(1, 6),
)
def test_any_split_of_the_same_log_into_batches_gives_the_same_state_and_results(
    ops: list[tuple[str, int, str, str, str | None]], cuts: list[int], ttl: int
) -> None:
    entries = []
    for index, (client, seq, op, key, arg) in enumerate(ops, start=1):
        if op == PUT and arg is None:
            arg = "z"
        command = KVCommand(op, key, arg, "n" if op == CAS else None)
        entries.append(Command(index, 1, encode_logged(LoggedCommand(client, seq, command))))
    cuts = [c for c in cuts if c <= len(entries)]
    assert apply_in_batches(entries, cuts, ttl) == apply_in_batches(entries, [], ttl)


def test_an_empty_batch_is_a_no_op() -> None:
    sm = KVStateMachine()
    assert sm.on_apply([]) == [] and sm.data == {}


# -- snapshots ---------------------------------------------------------------------------------


def save(sm: KVStateMachine, index: int = 1) -> tuple[MemorySnapshotStorage, SnapshotMeta]:
    store = MemorySnapshotStorage()
    writer = store.create_writer(SnapshotMeta(index, 1, b"conf"))
    finish = sm.on_snapshot_save(writer)
    finish()
    return store, store.commit(writer)


def restore(store: MemorySnapshotStorage, meta: SnapshotMeta) -> KVStateMachine:
    sm = KVStateMachine(session_ttl_entries=100)
    with store.open(meta.last_index) as reader:
        sm.on_snapshot_load(reader)
    return sm


def test_a_snapshot_holds_data_and_sessions_so_retries_stay_exactly_once(log: Log) -> None:
    for n in range(10_000):  # several batches of SNAPSHOT_BATCH pairs
        log.apply("c1", n + 1, PUT, f"k{n}", f"v{n}")
    log.apply("c2", 1, CAS, "k0", "v0", "x")
    store, meta = save(log.sm, log.index)
    copy = restore(store, meta)
    assert copy.data == log.sm.data
    assert list(copy.sessions) == list(log.sm.sessions)  # in last-use order, for expiry
    replay = Log(copy)
    replay.index = log.index
    assert replay.apply("c2", 1, CAS, "k0", "v0", "y") is True  # the retry: answered, not re-run
    assert copy.data["k0"] == "x"
    assert replay.apply("c1", 3, PUT, "k1", "old") is STALE


def test_saving_takes_the_state_at_the_call_not_when_written(log: Log) -> None:
    log.apply("c1", 1, PUT, "k", "before")
    store = MemorySnapshotStorage()
    writer = store.create_writer(SnapshotMeta(1, 1, b"conf"))
    finish = log.sm.on_snapshot_save(writer)
    log.apply("c1", 2, PUT, "k", "after")  # applying goes on before the writing happens
    log.apply("c1", 3, DELETE, "gone")
    finish()
    copy = restore(store, store.commit(writer))
    assert copy.data == {"k": "before"} and copy.sessions["c1"].last_seq == 1


def test_an_empty_state_snapshots_and_loads() -> None:
    store, meta = save(KVStateMachine())
    copy = restore(store, meta)
    assert copy.data == {} and not copy.sessions


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(msgpack.packb({"format": "other"}), id="another format"),
        pytest.param(msgpack.packb([1, 2]), id="no header"),
        pytest.param(
            msgpack.packb({"format": SNAPSHOT_FORMAT, "keys": 2, "sessions": 0})
            + msgpack.packb(["k", "v"]),
            id="truncated",
        ),
        pytest.param(
            msgpack.packb({"format": SNAPSHOT_FORMAT, "keys": 0, "sessions": 0}) + b"\x01",
            id="trailing data",
        ),
    ],
)
def test_a_malformed_snapshot_raises_and_leaves_the_state_alone(payload: bytes) -> None:
    store = MemorySnapshotStorage()
    writer = store.create_writer(SnapshotMeta(1, 1, b"conf"))
    writer.write(payload)
    meta = store.commit(writer)
    sm = KVStateMachine()
    sm.data = {"mine": "kept"}
    with store.open(meta.last_index) as reader, pytest.raises(ValueError):
        sm.on_snapshot_load(reader)
    assert sm.data == {"mine": "kept"}


def test_a_corrupt_snapshot_is_detected_at_load(log: Log) -> None:
    log.apply("c1", 1, PUT, "k", "v" * 100)
    store, meta = save(log.sm)
    store.corrupt(meta.last_index, offset=meta.size - 3)
    sm = KVStateMachine()
    with store.open(meta.last_index) as reader, pytest.raises((CorruptSnapshotError, ValueError)):
        sm.on_snapshot_load(reader)
    assert sm.data == {}
