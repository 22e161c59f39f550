"""LeaderLog: a leader appends its own entries on the Node's thread, not the LogManager's.

Why: a put used to cross Node -> LogManager (append to the LogView's tail) -> Replicators
(send), two thread hand-offs before the first byte left, while the fsync it waited for runs in
parallel with replication anyway (DESIGN "How a command flows"). A leader's append is pure
memory work (number the entries, extend the tail, tell the Replicators), so it runs where the
Node and the Replicators run, on the peer's dispatcher (actors/dispatcher.py), and only the
write goes to the LogManager's thread (PersistLeaderEntries), which Grants the leader's own
vote once the batch is durable, exactly as before.

The LogView's tail has one writer at a time, and the hand-over is causal (both ways through
mailboxes in order):
- the LogManager, while the peer follows, and for the first entry of a leader's term, which it
  appends on BecomeLeader before it tells the Node LeaderLogReady;
- this LeaderLog, from LeaderLogReady until the Node stops leading: it is dropped before the
  Node tells the LogManager StepDown (or EnterError), and every PersistLeaderEntries it sent is
  queued before that. Meanwhile the LogManager touches only what a leader's append does not:
  the durable prefix (stable index, trimming the tail's head, compaction).

Back-pressure: at most `max_pending_entries` entries (and `max_pending_bytes` of commands)
appended but not yet applied; a proposal beyond that fails fast with OverloadedError, nothing
appended, rather than queue without bound.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import pykka

from actors import trace
from actors.configuration import Configuration
from actors.errors import OverloadedError
from actors.futures import fail_all
from actors.log_view import LogView
from actors.mailbox import Mailbox
from actors.messages import LogAppended, PersistLeaderEntries, RegisterPending, SetConfiguration
from actors.metrics import CounterCell, Labels
from actors.options import RaftOptions
from storage.entry import EntryType, LogEntry, command_entries


class LeaderLog:
    """The leader's append path for one term. Not an actor: a part of the Node, on its thread."""

    def __init__(
        self,
        term: int,
        log_view: LogView,
        log_manager: Mailbox,
        ballot_box: Mailbox,
        fsm_caller: Mailbox,
        replicators: Mapping[str, Mailbox],
        raft_options: RaftOptions,
        proposals: Mapping[str | Labels, CounterCell],
    ) -> None:
        """`replicators`: the Node's live map of running Replicators (read at each append).
        `proposals`: the Node's own proposal-outcome cells (this runs on its thread)."""
        self.term = term
        self.log_view = log_view
        self.log_manager = log_manager
        self.ballot_box = ballot_box
        self.fsm_caller = fsm_caller
        self.replicators = replicators
        self.raft_options = raft_options
        self._proposals = proposals
        # (last index, command bytes) of each batch appended this term and not yet known to be
        # applied; _pending_bytes is their sum. Trimmed against the LogView's applied_index.
        self._pending: deque[tuple[int, int]] = deque()
        self._pending_bytes = 0

    def append_commands(
        self, commands: Sequence[bytes], futures: Sequence[pykka.Future[Any]]
    ) -> None:
        """Client commands as DATA entries of this term, or an OverloadedError for them all."""
        size = sum(map(len, commands))
        overload = self._overload(len(commands), size)
        if overload is not None:
            self._proposals["overloaded"].inc(len(futures))
            fail_all(futures, OverloadedError(overload))
            return
        entries = command_entries(self.log_view.last_index + 1, self.term, commands)
        # Registered before any replica can grant, so the FSMCaller has the futures before
        # the Commit that completes them (both go through mailboxes in causal order).
        self.fsm_caller.tell(RegisterPending(entries[0].index, tuple(futures)))
        self._append(entries)
        if trace.ON:
            trace.mark("leader.append")
        self._pending.append((entries[-1].index, size))
        self._pending_bytes += size
        self._proposals["appended"].inc(len(entries))

    def append_configuration(self, conf: Configuration, applied: Any) -> None:
        """A membership change's configuration entry: in force from now on. The BallotBox
        counts by it before any Grant for it can arrive (this SetConfiguration is told before
        the entry exists anywhere a Grant could come from)."""
        index = self.log_view.last_index + 1
        self.ballot_box.tell(SetConfiguration(self.term, conf))
        self.fsm_caller.tell(RegisterPending(index, (applied,)))
        self._append([LogEntry(index, self.term, EntryType.CONFIGURATION, conf.encode())])

    def _append(self, entries: list[LogEntry]) -> None:
        self.log_view.append_unstable(entries)
        self.log_manager.tell(PersistLeaderEntries(self.term, entries))
        appended = LogAppended(entries[-1].index)
        for mailbox in self.replicators.values():
            mailbox.tell(appended)

    def _overload(self, count: int, size: int) -> str | None:
        """Why `count` more commands of `size` bytes would exceed the in-flight bounds."""
        applied = self.log_view.applied_index
        while self._pending and self._pending[0][0] <= applied:
            self._pending_bytes -= self._pending.popleft()[1]
        entries = self.log_view.last_index - applied + count
        options = self.raft_options
        if entries > options.max_pending_entries:
            return f"{entries} entries in flight > max_pending_entries; retry later"
        if self._pending_bytes + size > options.max_pending_bytes:
            return f"{self._pending_bytes + size} bytes in flight > max_pending_bytes; retry later"
        return None
