"""FSMCaller: applies committed entries to the user's state machine, in log order, exactly once.

It owns the `StateMachine` (docs/DESIGN.md, principle 2): every call into user code happens on this
actor's thread, one at a time. It reads committed entries from the thread-safe `LogView`.

- `Commit(index)` raises the target; the work itself is one `ApplyCommitted` told to itself, so
  Commits that arrive back to back coalesce into a single pass up to the highest one. A pass
  applies at most `options.max_apply_batch` entries and re-queues itself for the rest, which
  lets RegisterPending / LeaderStop interleave with a long catch-up.
- Consecutive DATA entries go to `on_apply` as one batch; each result completes the future the
  leader registered for that index (`RegisterPending`). NO_OP and CONFIGURATION entries are not
  the state machine's business: their futures (if any) complete with None.
- `LeaderStart` / `LeaderStop` report leadership to the state machine; on LeaderStop every
  pending future fails with LeadershipLostError: outcome unknown, the entry may still commit
  under the next leader and be applied here, but its future has already been failed.
- A state machine that raises (or returns the wrong number of results) puts the caller in ERROR:
  pending futures fail with NodeFailedError (outcome unknown: their entries are in the log and
  may commit on other replicas), `on_error` is called, the Node is told FatalError, and nothing
  is ever applied again, rather than let this replica diverge silently. EnterError (the peer
  entered ERROR for another reason) does the same.
- On stop, every pending future fails with NodeStoppedError, outcome unknown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pykka

from actors.base import RaftActor, handles
from actors.errors import LeadershipLostError, NodeFailedError, NodeStoppedError, RaftError
from actors.futures import complete, fail, fail_all
from actors.log_view import LogView
from actors.mailbox import Mailbox
from actors.messages import (
    ApplyCommitted,
    Commit,
    EnterError,
    GetApplied,
    LeaderStart,
    LeaderStop,
    RegisterPending,
)
from actors.options import RaftOptions
from actors.state_machine import Command, StateMachine
from storage.entry import EntryType, LogEntry

log = logging.getLogger(__name__)


class FSMCaller(RaftActor):
    """See the module docstring. `applied_index` (also published as `log_view.applied_index`)
    may be read from any thread: a plain int, written after the state machine returned."""

    def __init__(
        self,
        state_machine: StateMachine,
        log_view: LogView,
        node: Mailbox,
        raft_options: RaftOptions,
    ) -> None:
        super().__init__(supervisor=node)
        self.state_machine = state_machine
        self.log_view = log_view
        self.raft_options = raft_options
        # Invariant: applied_index <= committed_index; it only grows, by exactly the entries
        # handed over in log order. (Starts at 0 until snapshots exist.)
        self.applied_index = 0
        self.committed_index = 0
        # Futures of DATA entries not yet applied, by index. Invariant: every key > applied_index.
        self.pending: dict[int, pykka.Future[Any]] = {}
        self.leader_term = 0  # 0 = not leader
        self.leader_first_index = 0
        self.leader_started = False  # on_leader_start was called for leader_term
        self.error: str | None = None  # set once, on entering ERROR; never cleared
        self._apply_queued = False  # an ApplyCommitted is in our own mailbox

    def __str__(self) -> str:
        mode = "ERROR" if self.error is not None else "OK"
        leader = (
            f"{self.leader_term}{'+' if self.leader_started else ''}" if self.leader_term else "-"
        )
        return (
            f"{mode} applied={self.applied_index} committed={self.committed_index} "
            f"pending={len(self.pending)} leader={leader}"
        )

    # -- messages ----------------------------------------------------------------------------

    @handles(Commit)
    def on_commit(self, msg: Commit) -> None:
        if self.error is not None:
            return
        self.committed_index = max(self.committed_index, msg.index)
        self._queue_apply()  # also retries entries that were not readable last time

    @handles(ApplyCommitted)
    def on_apply_committed(self, msg: ApplyCommitted) -> None:
        self._apply_queued = False
        if self.error is not None:
            return
        if self._apply_batch() and self.applied_index < self.committed_index:
            self._queue_apply()

    @handles(RegisterPending)
    def on_register_pending(self, msg: RegisterPending) -> None:
        if self.error is not None:
            # Appended already: they may commit elsewhere, so their outcome is unknown.
            fail_all(msg.futures, self._failed_error())
            return
        for offset, future in enumerate(msg.futures):
            index = msg.first_index + offset
            if index <= self.applied_index:
                # Causal order (LogManager registers before anyone can grant) rules this out.
                log.warning("fsm: future for %d registered after it was applied", index)
                fail(future, LeadershipLostError(f"entry {index} applied before registration"))
                continue
            replaced = self.pending.get(index)
            if replaced is not None:
                fail(replaced, LeadershipLostError(f"entry {index} was overwritten"))
            self.pending[index] = future

    @handles(LeaderStart)
    def on_leader_start(self, msg: LeaderStart) -> None:
        if self.error is not None:
            return
        if self.leader_term and self.leader_term != msg.term:
            log.warning("fsm: leader start %d without a stop of %d", msg.term, self.leader_term)
            self._leader_stopped()
        self.leader_term = msg.term
        self.leader_first_index = msg.first_index
        self.leader_started = False
        self._maybe_leader_start()

    @handles(LeaderStop)
    def on_leader_stop(self, msg: LeaderStop) -> None:
        if self.leader_term and msg.term < self.leader_term:
            return  # about an earlier term; this term's futures are still good
        self._fail_pending(LeadershipLostError(f"leadership of term {msg.term} lost"))
        self._leader_stopped()

    @handles(GetApplied)
    def on_get_applied(self, msg: GetApplied) -> int:
        return self.applied_index

    @handles(EnterError)
    def on_enter_error(self, msg: EnterError) -> None:
        self.enter_error(msg.reason)

    def shutdown(self) -> None:
        """Runs on the actor's thread as it stops: the state machine's last call."""
        try:
            self.state_machine.on_shutdown()
        except Exception:
            log.exception("fsm: on_shutdown raised")
        self._fail_pending(NodeStoppedError("node stopped", outcome_unknown=True))

    # -- applying ----------------------------------------------------------------------------

    def _queue_apply(self) -> None:
        if not self._apply_queued and self.applied_index < self.committed_index:
            self._apply_queued = True
            self.self_mailbox.tell(ApplyCommitted())

    def _apply_batch(self) -> bool:
        """Apply up to max_apply_batch entries after applied_index. Returns whether it made
        progress without entering ERROR."""
        first = self.applied_index + 1
        last = min(self.committed_index, self.applied_index + self.raft_options.max_apply_batch)
        entries = self.log_view.entries(first, last)
        if not entries:
            # The next Commit retries; no retry loop of our own.
            log.warning("fsm: committed entries %d..%d are not readable", first, last)
            return False
        if entries[0].index != first:
            missing = RaftError(f"entry {first} missing (log starts at {entries[0].index})")
            self._enter_error(missing, "reading the log")
            return False
        run: list[LogEntry] = []  # consecutive DATA entries, handed over as one on_apply
        for entry in entries:
            if entry.type == EntryType.DATA:
                run.append(entry)
                continue
            if run and not self._apply_run(run):
                return False
            run = []
            self._advance(entry.index, [(entry.index, None)])
            if self.error is not None:
                return False
        return not run or self._apply_run(run)

    def _apply_run(self, run: list[LogEntry]) -> bool:
        commands = [Command(e.index, e.term, e.data) for e in run]
        try:
            results = list(self.state_machine.on_apply(commands))
        except Exception as exc:
            self._enter_error(exc, f"on_apply of {run[0].index}..{run[-1].index}")
            return False
        if len(results) != len(run):
            self._enter_error(
                ValueError(f"on_apply returned {len(results)} results for {len(run)} commands"),
                f"on_apply of {run[0].index}..{run[-1].index}",
            )
            return False
        self._advance(run[-1].index, [(e.index, r) for e, r in zip(run, results, strict=True)])
        return self.error is None

    def _advance(self, index: int, results: list[tuple[int, Any]]) -> None:
        """Entries through `index` are applied: publish it, then complete their futures."""
        assert index > self.applied_index, (index, self.applied_index)
        self.applied_index = index
        self.log_view.applied_index = index  # published for status; this actor is its only writer
        for entry_index, result in results:
            future = self.pending.pop(entry_index, None)
            if future is not None:
                complete(future, result)
        self._maybe_leader_start()

    # -- leadership and errors -----------------------------------------------------------------

    def _maybe_leader_start(self) -> None:
        due = self.leader_term and self.applied_index >= self.leader_first_index
        if due and not self.leader_started:
            self.leader_started = True
            self._call(self.state_machine.on_leader_start, self.leader_term)

    def _leader_stopped(self) -> None:
        if self.leader_started and self.error is None:
            self._call(self.state_machine.on_leader_stop, self.leader_term)
        self.leader_term = 0
        self.leader_first_index = 0
        self.leader_started = False

    def _call(self, callback: Callable[..., object], *args: Any) -> None:
        """Call a state machine callback; its exception puts us in ERROR."""
        try:
            callback(*args)
        except Exception as exc:
            self._enter_error(exc, getattr(callback, "__name__", "callback"))

    def _enter_error(self, exc: BaseException, where: str) -> None:
        """The state machine failed: ERROR here, and the peer with it."""
        if self.error is not None:
            return
        reason = f"{where}: {type(exc).__name__}: {exc}"
        log.error("fsm: entering ERROR after %s", reason, exc_info=exc)
        self._stop_applying(reason, exc)
        self.report_fatal(reason)

    def enter_error(self, reason: str) -> None:
        """The peer is in ERROR (this actor crashed, or the Node said so): apply nothing more."""
        if self.error is None:
            self._stop_applying(reason, NodeFailedError(reason))

    def _stop_applying(self, reason: str, exc: BaseException) -> None:
        self.error = reason
        self._fail_pending(self._failed_error())
        try:
            self.state_machine.on_error(exc)
        except Exception:
            log.exception("fsm: on_error raised too")

    def _failed_error(self) -> NodeFailedError:
        return NodeFailedError(f"node in ERROR: {self.error}", outcome_unknown=True)

    def _fail_pending(self, error: BaseException) -> None:
        pending, self.pending = self.pending, {}
        for future in pending.values():
            fail(future, error)
