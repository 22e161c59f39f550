"""Raft's safety properties (Raft paper, Figure 3), checked after every simulation step.

Checks are incremental so they can run after every step: the log ones see each append and
truncation as it happens (ObservedLog wraps a peer's storage), the others look at what changed.

- Election Safety: at most one leader per term.
- Leader Append-Only: a leader never truncates its own log.
- Log Matching: entries with the same index and term have the same payload and the same
  predecessor term (so, by induction, identical prefixes).
- Leader Completeness: a new leader's log holds every entry committed so far.
- State Machine Safety: no two peers apply different commands at one index.
- Monotonicity: a peer's commit and applied indexes never go backwards (within one run of it).
- Nothing committed is ever truncated (by a conflict: compaction and installing a snapshot
  drop committed entries that a snapshot holds, which is their job).

Snapshots: a peer's state machine history may be replaced by a snapshot's; the whole new
history is checked against what was committed, so State Machine Safety holds across installs.
An entry appended right after a compacted or reset prefix has no known predecessor term in its
log; Log Matching then compares its payload only.
"""

from __future__ import annotations

from collections.abc import Sequence

from actors.log_view import LogView
from actors.node import Role
from storage.entry import LogEntry
from storage.memory import MemoryLogStorage


class SafetyViolationError(AssertionError):
    pass


class SafetyChecker:
    def __init__(self) -> None:
        self.leader_of_term: dict[int, str] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}  # index -> (term, data), DATA only
        self.entries: dict[
            tuple[int, int], tuple[bytes, int | None]
        ] = {}  # (index, term) -> (data, prev term or None if not known where first seen)
        self._leaders_checked: set[tuple[str, int]] = set()
        self._applied_seen: dict[tuple[str, int], int] = {}
        self._commit_seen: dict[tuple[str, int], int] = {}
        self._loads_seen: dict[tuple[str, int], int] = {}

    def fail(self, message: str) -> None:
        raise SafetyViolationError(message)

    # -- log events (from ObservedLog) -------------------------------------------------------

    def on_append(self, peer: str, log: MemoryLogStorage, entries: Sequence[LogEntry]) -> None:
        prev = entries[0].index - 1
        prev_term: int | None = (
            log.get_term(prev) if prev == 0 or prev >= log.first_log_index() else None
        )
        for entry in entries:
            key = (entry.index, entry.term)
            seen = self.entries.setdefault(key, (entry.data, prev_term))
            if seen[1] is None and prev_term is not None:
                seen = self.entries[key] = (seen[0], prev_term)
            if seen[0] != entry.data or (None not in (seen[1], prev_term) and seen[1] != prev_term):
                self.fail(
                    f"Log Matching: {peer} has {entry.index}@{entry.term} with payload "
                    f"{entry.data!r} after term {prev_term}; elsewhere {seen[0]!r} after {seen[1]}"
                )
            prev_term = entry.term

    def on_truncate(
        self, peer: str, log: MemoryLogStorage, last_kept: int, is_leader: bool
    ) -> None:
        if is_leader:
            self.fail(f"Leader Append-Only: leader {peer} truncates its log after {last_kept}")
        for index in range(last_kept + 1, log.last_log_index() + 1):
            committed = self.committed.get(index)
            if committed is not None and committed[0] == log.get_term(index):
                self.fail(f"{peer} truncates committed entry {index}@{committed[0]}")

    # -- after every step --------------------------------------------------------------------

    def check_peer_state(
        self,
        peer: str,
        incarnation: int,
        role: Role,
        term: int,
        view: LogView,
        applied: Sequence[tuple[int, int, bytes]],
        loads: int = 0,
    ) -> None:
        run = (peer, incarnation)
        if role is Role.LEADER:
            holder = self.leader_of_term.setdefault(term, peer)
            if holder != peer:
                self.fail(f"Election Safety: {holder} and {peer} both lead term {term}")
            if (peer, term) not in self._leaders_checked:
                self._leaders_checked.add((peer, term))
                for index, (entry_term, _) in sorted(self.committed.items()):
                    if index > view.snapshot_index and view.term_at(index) != entry_term:
                        self.fail(
                            f"Leader Completeness: {peer}, leader of term {term}, lacks "
                            f"committed entry {index}@{entry_term}"
                        )
        commit = view.committed_index
        if commit < self._commit_seen.get(run, 0):
            self.fail(f"{peer}'s commit index went back to {commit}")
        self._commit_seen[run] = commit
        seen = self._applied_seen.get(run, 0)
        if loads != self._loads_seen.get(run, 0):
            self._loads_seen[run] = loads
            seen = 0  # a snapshot replaced the history: check all of it
        for index, term, data in applied[seen:]:
            known = self.committed.setdefault(index, (term, data))
            if known != (term, data):
                self.fail(
                    f"State Machine Safety: {peer} applied {data!r}@{term} at {index}, "
                    f"another peer applied {known[1]!r}@{known[0]}"
                )
            if seen and index <= applied[seen - 1][0]:
                self.fail(f"{peer} applied index went back at {index}")
            seen += 1
        self._applied_seen[run] = len(applied)


class ObservedLog:
    """A MemoryLogStorage whose appends and truncations the checker sees (tests only)."""

    def __init__(self, peer: str, inner: MemoryLogStorage, checker: SafetyChecker) -> None:
        self.peer = peer
        self.inner = inner
        self.checker = checker
        self.is_leader = lambda: False  # set by the simulation once the peer's Node exists

    def first_log_index(self) -> int:
        return self.inner.first_log_index()

    def last_log_index(self) -> int:
        return self.inner.last_log_index()

    def get_entry(self, index: int) -> LogEntry | None:
        return self.inner.get_entry(index)

    def get_term(self, index: int) -> int:
        return self.inner.get_term(index)

    def get_entries(self, first: int, last: int, max_bytes: int = 0) -> list[LogEntry]:
        return self.inner.get_entries(first, last, max_bytes)

    def append_entries(self, entries: Sequence[LogEntry]) -> None:
        if entries:
            self.checker.on_append(self.peer, self.inner, entries)
        self.inner.append_entries(entries)

    def truncate_suffix(self, last_index_kept: int) -> None:
        self.checker.on_truncate(self.peer, self.inner, last_index_kept, self.is_leader())
        self.inner.truncate_suffix(last_index_kept)

    def truncate_prefix(self, first_index_kept: int) -> None:
        self.inner.truncate_prefix(first_index_kept)

    def reset(self, next_log_index: int) -> None:
        self.inner.reset(next_log_index)

    def close(self) -> None:
        self.inner.close()

    def crash(self) -> ObservedLog:
        return ObservedLog(self.peer, self.inner.crash(), self.checker)
