"""Exactly-once client sessions (Raft dissertation §6.3), for any state machine.

A client numbers its writes (client_id, seq) and keeps a write's number across its retries. The
state machine remembers, per client, the last sequence number applied and its result: a retry of
that write gets the remembered result instead of being applied again, and a write older than the
last one (a delayed duplicate whose answer nobody waits for) is not applied either (STALE).

`Sessions` is that table. Sessions expire deterministically by log index, never by wall clock:
before each entry, every session last used `ttl_entries` or more entries earlier is forgotten, a
function of the log alone, so replicas that apply the same log in different batches answer every
retry alike. A client retrying a write older than the TTL could see it applied twice; the TTL is
sized so that no client retries for that long.

`SessionStateMachine` is a StateMachine served to clients by actors.client_server.ClientServer
with its default codec: each log entry is the session envelope msgpack [client_id, seq, command]
and a subclass only says what one command does (`on_command`) and what a query answers
(`on_query`); its snapshots hold the sessions as well as the subclass's state, so exactly-once
survives a snapshot install. The KV service (actors/service/kv_store.py) uses `Sessions` with a
log format of its own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from actors.state_machine import Command, StateMachine
from storage.snapshot_storage import SnapshotReader, SnapshotWriter

MAX_CLIENT_ID_CHARS = 128


class StaleRequest:
    """The result of a write older than its client's latest: it was not applied."""

    def __repr__(self) -> str:
        return "StaleRequest"


STALE = StaleRequest()


class RefusedCommand(Exception):
    """Return (not raise) an instance from `on_apply`/`on_command`/`on_query` to refuse a command
    definitely: the client gets a CommandError with this message, and nothing changed. A state
    machine must refuse alike on every replica (e.g. a command that does not decode)."""


@dataclass(frozen=True, slots=True)
class Session:
    """One client's session: its last write applied, that write's result and log index."""

    last_seq: int
    last_result: Any
    last_index: int


class Sessions(Mapping[str, Session]):
    """The exactly-once table: see the module docstring. A read-only mapping of client id to
    Session, in order of last use (oldest first). Not thread-safe: it lives on the FSMCaller's
    thread, like the state machine that owns it."""

    def __init__(self, ttl_entries: int = 1_000_000) -> None:
        if ttl_entries < 1:
            raise ValueError("ttl_entries must be >= 1")
        self.ttl_entries = ttl_entries
        # Ordered by last use (last_index), oldest first, so expiry pops from the front.
        self._table: OrderedDict[str, Session] = OrderedDict()
        # Invariant: at most the oldest session's last_index (while empty: below every index a
        # session added later can have). Updates only raise the oldest's index, so it stays a
        # lower bound until expiry pops, which recomputes it: `expire` has nothing to do while
        # index - ttl_entries is below it, i.e. nearly always.
        self._oldest_floor = 0

    def __getitem__(self, client_id: str) -> Session:
        return self._table[client_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def apply(self, client_id: str, seq: int, index: int, write: Callable[[], Any]) -> Any:
        """The result of write `seq` of `client_id` at log `index`: `write()`'s when it is new,
        the remembered one for a retry, STALE for an older one. Expires sessions first."""
        self.expire(index)
        session = self._table.get(client_id)
        if session is not None:
            if seq == session.last_seq:
                return session.last_result  # a retry: answered, not applied again
            if seq < session.last_seq:
                return STALE
        result = write()
        self._table[client_id] = Session(seq, result, index)
        self._table.move_to_end(client_id)
        return result

    def expire(self, index: int) -> None:
        """Forget sessions last used at or before `index - ttl_entries`."""
        horizon = index - self.ttl_entries
        if horizon < self._oldest_floor:
            return
        table = self._table
        while table:
            client_id, session = next(iter(table.items()))
            if session.last_index > horizon:
                self._oldest_floor = session.last_index
                return
            del table[client_id]
        self._oldest_floor = horizon + 1  # a session added later has a later index

    def rows(self) -> list[tuple[str, int, Any, int]]:
        """(client_id, seq, result, index) per session, oldest use first: a snapshot's copy."""
        return [(c, s.last_seq, s.last_result, s.last_index) for c, s in self._table.items()]

    def load(self, rows: Iterable[Sequence[Any]]) -> None:
        """Replace the table by `rows` as `rows()` made them (oldest use first)."""
        table: OrderedDict[str, Session] = OrderedDict()
        for client_id, seq, result, index in rows:
            table[client_id] = Session(seq, result, index)
        self._table = table
        self._oldest_floor = 0  # recomputed by the next expiry that gets past it


def encode_session_command(client_id: str, seq: int, command: bytes) -> bytes:
    """The log entry of client `client_id`'s write number `seq`."""
    return msgpack.packb([client_id, seq, command])


def decode_session_command(data: bytes) -> tuple[str, int, bytes]:
    """(client_id, seq, command) of a session entry; ValueError for anything else."""
    try:
        fields = msgpack.unpackb(data, raw=False, max_map_len=0)
    except Exception as exc:
        raise ValueError(f"not a session entry: {type(exc).__name__}") from None
    if not isinstance(fields, list) or len(fields) != 3:
        raise ValueError("a session entry is an array of 3")
    client_id, seq, command = fields
    if not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_ID_CHARS:
        raise ValueError("a session entry's client id is a string of 1 to 128 characters")
    if type(seq) is not int or seq < 1:
        raise ValueError("a session entry's seq is an integer >= 1")
    if not isinstance(command, bytes):
        raise ValueError("a session entry's command is bytes")
    return client_id, seq, command


SNAPSHOT_FORMAT = "pykka-raft-sessions/1"
MAX_HEADER_BYTES = 1 << 30  # a bound on what a corrupt length could make us allocate


class SessionStateMachine(StateMachine):
    """A state machine for ClientServer's default codec, with exactly-once writes: override
    `on_command` (and `on_query` to serve reads without the log). For snapshots override
    `save_state` and `load_state`; the sessions are saved with them. Every rule of
    StateMachine holds (one thread, deterministic, `on_command` raising is ERROR).

        class Counter(SessionStateMachine):
            def __init__(self):
                super().__init__()
                self.total = 0

            def on_command(self, command, index):
                self.total += int(command)
                return self.total

            def on_query(self, query):
                return self.total
    """

    def __init__(self, session_ttl_entries: int = 1_000_000) -> None:
        self.sessions = Sessions(session_ttl_entries)

    def on_command(self, command: bytes, index: int) -> Any:
        """Apply one client's write (its bytes as the client sent them) at log `index`; return
        its result (msgpack-able: None, bool, int, float, str, bytes, lists, maps), or a
        RefusedCommand to refuse it without a change."""
        raise NotImplementedError

    def on_query(self, query: bytes) -> Any:
        """Answer a client's read from the current state, without changing it (see
        StateMachine.on_read)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement on_query")

    def save_state(self, writer: SnapshotWriter) -> Callable[[], None] | None:
        """Save this state machine's own state, as StateMachine.on_snapshot_save does (the
        sessions are written before, by this class)."""
        raise NotImplementedError

    def load_state(self, reader: SnapshotReader) -> None:
        """Replace this state machine's own state from what `save_state` wrote."""
        raise NotImplementedError

    # -- StateMachine ------------------------------------------------------------------------

    def on_apply(self, commands: Sequence[Command]) -> list[Any]:
        return [self._apply_one(c) for c in commands]

    def _apply_one(self, entry: Command) -> Any:
        try:
            client_id, seq, command = decode_session_command(entry.data)
        except ValueError as exc:
            # Deterministic on every replica: refused, state unchanged.
            self.sessions.expire(entry.index)
            return RefusedCommand(f"bad command entry at {entry.index}: {exc}")
        return self.sessions.apply(
            client_id, seq, entry.index, lambda: self.on_command(command, entry.index)
        )

    def on_read(self, query: bytes) -> Any:
        return self.on_query(query)

    @classmethod
    def supports_reads(cls) -> bool:
        return cls.on_query is not SessionStateMachine.on_query

    @classmethod
    def supports_snapshots(cls) -> bool:
        return (
            cls.save_state is not SessionStateMachine.save_state
            and cls.load_state is not SessionStateMachine.load_state
        )

    def on_snapshot_save(self, writer: SnapshotWriter) -> Callable[[], None] | None:
        # A snapshot is: the sessions header's length (8 bytes, big-endian), the header (a
        # msgpack map: format, sessions), then whatever `save_state` writes.
        header = msgpack.packb({"format": SNAPSHOT_FORMAT, "sessions": self.sessions.rows()})
        writer.write(len(header).to_bytes(8, "big") + header)
        return self.save_state(writer)

    def on_snapshot_load(self, reader: SnapshotReader) -> None:
        size = int.from_bytes(_read_exactly(reader, 8), "big")
        if size > MAX_HEADER_BYTES:
            raise ValueError(f"a session snapshot's header of {size} bytes is too large")
        try:
            header = msgpack.unpackb(_read_exactly(reader, size), raw=False)
        except Exception as exc:
            raise ValueError(f"a session snapshot's header does not decode: {exc}") from None
        if not isinstance(header, dict) or header.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"not a session snapshot of {SNAPSHOT_FORMAT}: {header!r:.100}")
        self.sessions.load(header["sessions"])
        self.load_state(reader)


def _read_exactly(reader: SnapshotReader, size: int) -> bytes:
    data = reader.read(size)
    if len(data) != size:
        raise ValueError("session snapshot truncated")
    return data
