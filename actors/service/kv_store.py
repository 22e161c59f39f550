"""The replicated key-value store: a StateMachine with exactly-once client sessions.

Every write carries (client_id, seq) and goes through the exactly-once table of
actors/sessions.py: a retry gets the remembered result instead of being applied again (Raft
dissertation §6.3), an older duplicate is not applied (STALE), and sessions expire by log index,
alike on every replica (checked by a property test). The KV log entry is its own format
(transport/kv_protocol.py), kept since the first release, rather than the generic session
envelope.

Snapshots hold the data and the sessions, so exactly-once survives a snapshot install. Saving
takes shallow copies of both (a few tens of milliseconds for a million keys: that is all the
applying waits for) and serialises the copies off the apply path. The format is a msgpack
stream: a header map, then the keys as flat [key, value, ...] arrays of at most SNAPSHOT_BATCH
pairs, then the sessions as flat [client_id, seq, result, index, ...] arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain, islice
from typing import Any

import msgpack

from actors.service.errors import InvalidCommandError
from actors.sessions import Sessions
from actors.state_machine import Command, StateMachine
from storage.snapshot_storage import SnapshotReader, SnapshotWriter
from transport.errors import DecodeError
from transport.kv_protocol import (
    CAS,
    DELETE,
    GET,
    PUT,
    KVCommand,
    decode_command,
    decode_logged_parts,
)

SNAPSHOT_FORMAT = "pykka-raft-kv/1"
SNAPSHOT_BATCH = 4096  # pairs (or sessions) per msgpack array in a snapshot


class KVStateMachine(StateMachine):
    # Every callback computes in memory (a snapshot's save copies two dicts and leaves the
    # writing to the SnapshotExecutor), so the FSMCaller shares the peer's dispatcher.
    blocking = False

    def __init__(self, session_ttl_entries: int = 1_000_000) -> None:
        self.data: dict[str, str] = {}
        self.sessions = Sessions(session_ttl_entries)

    def on_apply(self, commands: Sequence[Command]) -> list[Any]:
        return [self._apply_one(c) for c in commands]

    def _apply_one(self, entry: Command) -> Any:
        try:
            client_id, seq, command = decode_logged_parts(entry.data)
        except DecodeError as exc:
            # Deterministic on every replica: answered as an error, state unchanged.
            self.sessions.expire(entry.index)
            return InvalidCommandError(str(exc))
        if command.op == GET:
            self.sessions.expire(entry.index)
            return self.data.get(command.key)
        return self.sessions.apply(client_id, seq, entry.index, lambda: self._write(command))

    def on_read(self, query: bytes) -> Any:
        """A get served without the log (RaftNode.read): `query` is the client's command."""
        try:
            command = decode_command(query)
        except DecodeError as exc:
            return InvalidCommandError(str(exc))
        if command.op != GET:
            return InvalidCommandError(f"{command.op} is not a read")
        return self.data.get(command.key)

    def _write(self, command: KVCommand) -> Any:
        key = command.key
        if command.op == PUT:
            assert command.arg1 is not None
            self.data[key] = command.arg1
            return None
        if command.op == DELETE:
            return self.data.pop(key, None) is not None
        if command.op == CAS:
            if self.data.get(key) != command.arg1:
                return False
            assert command.arg2 is not None
            self.data[key] = command.arg2
            return True
        raise AssertionError(f"unreachable: {command.op}")

    # -- snapshots ---------------------------------------------------------------------------

    def on_snapshot_save(self, writer: SnapshotWriter) -> Callable[[], None]:
        data = dict(self.data)  # shallow copies: values and sessions are never mutated in place
        sessions = self.sessions.rows()

        def write() -> None:
            header = {"format": SNAPSHOT_FORMAT, "keys": len(data), "sessions": len(sessions)}
            writer.write(msgpack.packb(header))
            for batch in _batches(data.items()):
                writer.write(msgpack.packb(batch))
            for batch in _batches(sessions):
                writer.write(msgpack.packb(batch))

        return write

    def on_snapshot_load(self, reader: SnapshotReader) -> None:
        items = msgpack.Unpacker(reader, raw=False, use_list=True, max_buffer_size=64 << 20)
        header = next(items, None)
        if not isinstance(header, dict) or header.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"not a KV snapshot of format {SNAPSHOT_FORMAT}: {header!r:.100}")
        data: dict[str, str] = {}
        for flat in _read_batches(items, header["keys"], 2):
            data.update(zip(flat[0::2], flat[1::2], strict=True))
        sessions: list[list[Any]] = []
        for flat in _read_batches(items, header["sessions"], 4):
            sessions.extend(flat[n : n + 4] for n in range(0, len(flat), 4))
        if reader.read(1) or next(items, None) is not None:
            raise ValueError("trailing data after the KV snapshot")
        self.data = data
        self.sessions.load(sessions)


def _batches(pairs: Iterable[tuple[Any, ...]]) -> Iterator[list[Any]]:
    """Tuples, flattened into lists of at most SNAPSHOT_BATCH of them."""
    it = iter(pairs)
    while batch := list(chain.from_iterable(islice(it, SNAPSHOT_BATCH))):
        yield batch


def _read_batches(items: Iterator[Any], count: int, width: int) -> Iterator[list[Any]]:
    """The flat arrays holding `count` tuples of `width` items."""
    left = count
    while left > 0:
        flat = next(items, None)
        if not isinstance(flat, list) or not flat or len(flat) % width or len(flat) > left * width:
            raise ValueError(f"KV snapshot truncated or malformed ({left} of {count} missing)")
        left -= len(flat) // width
        yield flat
