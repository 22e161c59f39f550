"""The replicated key-value store: a StateMachine with exactly-once client sessions.

Every write carries (client_id, seq). The store remembers, per client, the last sequence number
applied and its result; a retry of that request gets the remembered result instead of being
applied again (Raft dissertation §6.3). A request older than the last one (a delayed duplicate
whose answer the client no longer waits for) is not applied either.

Sessions expire deterministically by log index, never by wall clock: before each entry is
applied, every session last used `session_ttl_entries` or more entries earlier is forgotten.
That is a function of the log alone, entry by entry, so replicas that hand the same log to
`on_apply` in different batches expire the same sessions at the same point and answer every
retry alike (checked by a property test). A client retrying a request older than the TTL could
see it applied twice; the TTL is sized so that no client retries for that long.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from actors.service.errors import InvalidCommandError
from actors.state_machine import Command, StateMachine
from transport.errors import DecodeError
from transport.kv_protocol import CAS, DELETE, GET, PUT, KVCommand, decode_logged


@dataclass(slots=True)
class _Session:
    last_seq: int
    last_result: Any
    last_index: int


class StaleRequest:
    """The result of a request older than the client's latest: it was not applied."""

    def __repr__(self) -> str:
        return "StaleRequest"


STALE = StaleRequest()


class KVStateMachine(StateMachine):
    def __init__(self, session_ttl_entries: int = 1_000_000) -> None:
        self.data: dict[str, str] = {}
        # Ordered by last use (last_index), oldest first, so expiry pops from the front.
        self.sessions: OrderedDict[str, _Session] = OrderedDict()
        self.session_ttl_entries = session_ttl_entries

    def on_apply(self, commands: Sequence[Command]) -> list[Any]:
        return [self._apply_one(c) for c in commands]

    def _apply_one(self, entry: Command) -> Any:
        self._expire_sessions(entry.index)
        try:
            logged = decode_logged(entry.data)
        except DecodeError as exc:
            # Deterministic on every replica: answered as an error, state unchanged.
            return InvalidCommandError(str(exc))
        command = logged.command
        if command.op == GET:
            return self.data.get(command.key)
        session = self.sessions.get(logged.client_id)
        if session is not None:
            if logged.seq == session.last_seq:
                return session.last_result  # a retry: answered, not applied again
            if logged.seq < session.last_seq:
                return STALE
        result = self._write(command)
        self.sessions[logged.client_id] = _Session(logged.seq, result, entry.index)
        self.sessions.move_to_end(logged.client_id)
        return result

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

    def _expire_sessions(self, index: int) -> None:
        """Forget sessions last used at or before `index - session_ttl_entries`."""
        horizon = index - self.session_ttl_entries
        while self.sessions:
            client_id, session = next(iter(self.sessions.items()))
            if session.last_index > horizon:
                break
            del self.sessions[client_id]
