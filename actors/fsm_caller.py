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
- `Following` (the Node, through the LogManager so that it keeps its order with LeaderStart
  and LeaderStop) reports whom this peer follows: on_stop_following / on_start_following.
  Every start is paired with one stop, before the next start, ERROR or stop (the
  StateMachine's events); applying a configuration entry calls on_configuration_committed.
- The events are notifications: one that raises is logged and counted, and nothing else
  happens. on_apply and on_snapshot_load raising is what makes the state unsafe (below).
- A state machine that raises (or returns the wrong number of results) puts the caller in ERROR:
  pending futures fail with NodeFailedError (outcome unknown: their entries are in the log and
  may commit on other replicas), `on_error` is called, the Node is told FatalError, and nothing
  is ever applied again, rather than let this replica diverge silently. EnterError (the peer
  entered ERROR for another reason) does the same.
- On stop, every pending future fails with NodeStoppedError, outcome unknown.

Reads (ReadAt, from RaftNode.read): served by `on_read` once the read's index is applied, in
index order, after the batch that reaches it; at once for index 0 (a serializable read). An
on_read that raises fails its own read (ReadError) and nothing else: reads do not change the
state, so the state is as safe as before. A LeaderStop fails the reads still waiting (they
may wait for an entry of the lost term that never commits; a read is retryable), as do ERROR
and stop.

Snapshots (when the node has a snapshot storage and the state machine supports them):
- At start the newest snapshot is loaded (`on_snapshot_load`) and applying resumes after it.
- Every `snapshot_threshold` applied entries (or on TakeSnapshot: RaftNode.snapshot, the
  interval timer), between two batches, `on_snapshot_save(writer)` captures the state; the
  SnapshotExecutor then finishes the writing off this thread and commits it (SnapshotDone).
  One snapshot at a time; a request while one runs is served by the next.
- LoadSnapshot (a follower installed the leader's snapshot): the state machine is replaced and
  applying resumes after the snapshot; SnapshotLoaded tells the executor to acknowledge.
- The configuration in force at the applied index is tracked (from the snapshot, then from
  CONFIGURATION entries as they are applied) so that each snapshot records its own.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable
from typing import Any

import pykka

from actors import trace
from actors.base import RaftActor, handles
from actors.configuration import Configuration
from actors.errors import (
    LeadershipLostError,
    NodeFailedError,
    NodeStoppedError,
    NotLeaderError,
    RaftError,
    ReadError,
)
from actors.futures import complete, fail, fail_all, running_callback
from actors.log_view import LogView
from actors.mailbox import Mailbox
from actors.messages import (
    ApplyCommitted,
    Commit,
    EnterError,
    Following,
    GetApplied,
    LeaderStart,
    LeaderStop,
    LoadSnapshot,
    ReadAt,
    RegisterPending,
    SaveSnapshot,
    SnapshotDone,
    SnapshotLoaded,
    TakeSnapshot,
)
from actors.metrics import CounterCell, RaftMetrics
from actors.options import RaftOptions
from actors.state_machine import StateMachine, commands_of
from storage.base import SnapshotStore
from storage.entry import EntryType, LogEntry
from storage.snapshot_storage import SnapshotMeta

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
        conf: Configuration | None = None,
        snapshots: SnapshotStore | None = None,
        executor: Mailbox | None = None,
        metrics: RaftMetrics | None = None,
    ) -> None:
        """`conf`: the configuration before the first entry (the bootstrap one); `snapshots`
        and `executor` (the SnapshotExecutor) are both given, or snapshots are off."""
        super().__init__(supervisor=node)
        self.state_machine = state_machine
        self.log_view = log_view
        self.raft_options = raft_options
        self.snapshots = snapshots if executor is not None else None
        self.executor = executor
        # Invariant: applied_index <= committed_index; it only grows, by exactly the entries
        # handed over in log order, or by loading a snapshot.
        self.applied_index = 0
        self.committed_index = log_view.committed_index
        self.conf = conf or Configuration.of(())  # in force at applied_index
        self.snapshot_meta: SnapshotMeta | None = None  # the newest one saved or loaded
        self._saving: SnapshotMeta | None = None  # a save under way (one at a time)
        self._save_replies: list[pykka.Future[Any]] = []  # for the save under way
        self._next_replies: list[pykka.Future[Any]] = []  # for a save after it
        self._next_auto = 0  # applied index at which the threshold next triggers a save
        # Futures of DATA entries not yet applied, by index. Invariant: every key > applied_index.
        self.pending: dict[int, pykka.Future[Any]] = {}
        # Reads waiting for their index to be applied: a heap of (index, arrival, query, reply).
        self.reads: list[tuple[int, int, bytes, pykka.Future[Any]]] = []
        self._arrivals = itertools.count()
        self.leader_term = 0  # 0 = not leader
        self.leader_first_index = 0
        self.leader_started = False  # on_leader_start was called for leader_term
        self.following: tuple[str, int] | None = None  # on_start_following was called for it
        self.error: str | None = None  # set once, on entering ERROR; never cleared
        self._apply_queued = False  # an ApplyCommitted is in our own mailbox
        # This actor's own cells (actors/metrics.py): written on this thread only.
        metrics = metrics or RaftMetrics()
        self._clock = metrics.clock
        self._apply_seconds = metrics.apply_seconds.cell()
        self._completed = metrics.proposals_completed.cells(
            "applied", "leadership_lost", "stopped", "failed"
        )
        self._snapshots = metrics.snapshots.cells(
            ("save", "ok"), ("save", "failed"), ("load", "ok"), ("load", "failed")
        )
        self._snapshot_seconds = metrics.snapshot_seconds.cells("save", "load")
        self._callback_errors = metrics.callback_errors
        self._callback_error_cells: dict[str, CounterCell] = {}  # by callback, made on demand
        self._save_started = 0.0  # when the save under way began (metrics clock)

    @property
    def saving(self) -> SnapshotMeta | None:
        """The snapshot being saved, if one is (for status and tests)."""
        return self._saving

    def __str__(self) -> str:
        mode = "ERROR" if self.error is not None else "OK"
        leader = (
            f"{self.leader_term}{'+' if self.leader_started else ''}" if self.leader_term else "-"
        )
        return (
            f"{mode} applied={self.applied_index} committed={self.committed_index} "
            f"pending={len(self.pending)} leader={leader}"
        )

    def startup(self) -> None:
        if self.snapshots is None:
            return
        meta = self.snapshots.latest()
        if meta is not None and not self._load(meta, "the newest snapshot at start"):
            return
        self._next_auto = self.applied_index + self.raft_options.snapshot_threshold
        self._queue_apply()

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
        if not self._apply_batch():
            return
        if self.applied_index < self.committed_index:
            self._queue_apply()
        if self._snapshot_due():
            self._save_snapshot()
        self._serve_reads()

    @handles(ReadAt)
    def on_read_at(self, msg: ReadAt) -> None:
        if self.error is not None:
            fail(msg.reply, self._failed_error())
            return
        heapq.heappush(self.reads, (msg.index, next(self._arrivals), msg.query, msg.reply))
        self._serve_reads()

    def _serve_reads(self) -> None:
        """Answer every waiting read whose index is applied (index order)."""
        reads = self.reads
        while reads and reads[0][0] <= self.applied_index and self.error is None:
            _, _, query, reply = heapq.heappop(reads)
            try:
                with running_callback("on_read"):
                    result = self.state_machine.on_read(query)
            except Exception as exc:
                self._count_callback_error("on_read")
                log.warning("fsm: on_read raised %s: %s", type(exc).__name__, exc)
                fail(reply, ReadError(f"on_read raised {type(exc).__name__}: {exc}", exc))
                continue
            if trace.ON:
                trace.mark("leader.read_apply")
            complete(reply, result)

    def _fail_reads(self, error: RaftError) -> None:
        reads, self.reads = self.reads, []
        fail_all([reply for *_, reply in reads], error)

    @handles(RegisterPending)
    def on_register_pending(self, msg: RegisterPending) -> None:
        if self.error is not None:
            # Appended already: they may commit elsewhere, so their outcome is unknown.
            self._completed["failed"].inc(len(msg.futures))
            fail_all(msg.futures, self._failed_error())
            return
        for offset, future in enumerate(msg.futures):
            index = msg.first_index + offset
            if index <= self.applied_index:
                # Causal order (LogManager registers before anyone can grant) rules this out.
                log.warning("fsm: future for %d registered after it was applied", index)
                self._lost(future, f"entry {index} applied before registration")
                continue
            replaced = self.pending.get(index)
            if replaced is not None:
                self._lost(replaced, f"entry {index} was overwritten")
            self.pending[index] = future

    @handles(LeaderStart)
    def on_leader_start(self, msg: LeaderStart) -> None:
        if self.error is not None:
            return
        if self.leader_term and self.leader_term != msg.term:
            log.warning("fsm: leader start %d without a stop of %d", msg.term, self.leader_term)
            self._leader_stopped()
        self._stop_following()  # the Node said so already (Following): this keeps the pairs
        self.leader_term = msg.term
        self.leader_first_index = msg.first_index
        self.leader_started = False
        self._maybe_leader_start()

    @handles(LeaderStop)
    def on_leader_stop(self, msg: LeaderStop) -> None:
        if self.leader_term and msg.term < self.leader_term:
            return  # about an earlier term; this term's futures are still good
        self._fail_pending(LeadershipLostError(f"leadership of term {msg.term} lost"))
        self._fail_reads(NotLeaderError(None))
        self._leader_stopped()

    @handles(Following)
    def on_following(self, msg: Following) -> None:
        if self.error is not None:
            return
        followed = (msg.leader_id, msg.term) if msg.leader_id is not None else None
        if followed == self.following:
            return
        self._stop_following()
        if followed is not None:
            self.following = followed
            self._call(self.state_machine.on_start_following, *followed)

    def _stop_following(self) -> None:
        if self.following is not None:
            followed, self.following = self.following, None
            self._call(self.state_machine.on_stop_following, *followed)

    @handles(GetApplied)
    def on_get_applied(self, msg: GetApplied) -> int:
        return self.applied_index

    @handles(EnterError)
    def on_enter_error(self, msg: EnterError) -> None:
        self.enter_error(msg.reason)

    # -- snapshots ---------------------------------------------------------------------------

    @handles(TakeSnapshot)
    def on_take_snapshot(self, msg: TakeSnapshot) -> None:
        if self.snapshots is None or self.error is not None:
            if msg.reply is not None:
                why = "snapshots are off" if self.error is None else f"in ERROR: {self.error}"
                fail(msg.reply, RaftError(f"cannot snapshot: {why}"))
            return
        self._take_snapshot([msg.reply] if msg.reply is not None else [])

    def _take_snapshot(self, replies: list[pykka.Future[Any]]) -> None:
        """One snapshot for all of `replies`: after the save under way, if any."""
        newest = self.snapshot_meta.last_index if self.snapshot_meta else 0
        if self._saving is not None:
            self._next_replies.extend(replies)
        elif self.applied_index > newest:
            self._save_snapshot(replies)
        else:
            for reply in replies:
                complete(reply, self.snapshot_meta)  # nothing applied since: that one is current

    @handles(SnapshotDone)
    def on_snapshot_done(self, msg: SnapshotDone) -> None:
        replies, self._save_replies = self._save_replies, []
        self._saving = None
        self._snapshots["save", "ok" if msg.error is None else "failed"].inc()
        if msg.error is None:
            self._snapshot_seconds["save"].observe(self._clock() - self._save_started)
            if self.snapshot_meta is None or msg.meta.last_index > self.snapshot_meta.last_index:
                self.snapshot_meta = msg.meta
            for reply in replies:
                complete(reply, msg.meta)
        else:
            log.error("fsm: snapshot at %d failed: %s", msg.meta.last_index, msg.error)
            for reply in replies:
                fail(reply, msg.error)
        if self._next_replies and self.error is None:
            queued, self._next_replies = self._next_replies, []
            self._take_snapshot(queued)  # one save serves every request queued behind this one
        elif self._snapshot_due():  # the threshold passed again while this one was saved
            self._save_snapshot()

    @handles(LoadSnapshot)
    def on_load_snapshot(self, msg: LoadSnapshot) -> None:
        if self.error is not None:
            return
        meta = msg.meta
        if meta.last_index > self.applied_index:
            for index in [i for i in self.pending if i <= meta.last_index]:
                self._lost(self.pending.pop(index), f"entry {index} overwritten")
            if not self._load(meta, "the leader's snapshot"):
                if self.executor is not None:
                    self.executor.tell(SnapshotLoaded(meta, self.error))
                return
        # Invariant applied <= committed: the snapshot's entries are committed (at start the
        # LogView's commit index already covers the snapshot).
        self.committed_index = max(self.committed_index, meta.last_index)
        if self.executor is not None:
            self.executor.tell(SnapshotLoaded(meta))
        self._serve_reads()
        self._queue_apply()

    def _snapshot_due(self) -> bool:
        """The threshold's rule: snapshot_threshold entries applied since the last one."""
        return (
            self.snapshots is not None
            and self.raft_options.snapshot_threshold > 0
            and self._saving is None
            and self.applied_index >= self._next_auto
        )

    def _load(self, meta: SnapshotMeta, what: str) -> bool:
        """Replace the state machine's state with snapshot `meta`; False if that put us in
        ERROR (the storage or the state machine failed: this replica cannot go on)."""
        assert self.snapshots is not None
        started = self._clock()
        try:
            loading = running_callback("on_snapshot_load")
            with self.snapshots.open(meta.last_index) as reader, loading:
                self.state_machine.on_snapshot_load(reader)
            conf = Configuration.decode(meta.conf)
        except Exception as exc:
            self._snapshots["load", "failed"].inc()
            self._enter_error(exc, f"loading {what} ({meta.last_index})")
            return False
        self._snapshots["load", "ok"].inc()
        self._snapshot_seconds["load"].observe(self._clock() - started)
        log.info("fsm: loaded %s at %d", what, meta.last_index)
        self.conf = conf
        self.snapshot_meta = meta
        self.applied_index = meta.last_index
        self.log_view.applied_index = meta.last_index
        self._next_auto = meta.last_index + self.raft_options.snapshot_threshold
        self._call(self.state_machine.on_configuration_committed, conf, meta.last_index)
        return True

    def _save_snapshot(self, replies: list[pykka.Future[Any]] | None = None) -> None:
        """Capture the state at applied_index (the state machine's quick part, here), and hand
        the rest to the executor. A failure abandons this snapshot only."""
        assert self.snapshots is not None and self.executor is not None
        index = self.applied_index
        meta = SnapshotMeta(index, self.log_view.term_at(index), self.conf.encode())
        self._next_auto = index + self.raft_options.snapshot_threshold
        self._save_started = self._clock()
        writer = None
        try:
            writer = self.snapshots.create_writer(meta)
            with running_callback("on_snapshot_save"):
                finish = self.state_machine.on_snapshot_save(writer)
        except Exception as exc:
            log.exception("fsm: snapshot at %d failed", index)
            self._snapshots["save", "failed"].inc()
            if writer is not None:
                self.snapshots.abort(writer)
            fail_all(replies or [], RaftError(f"snapshot at {index} failed: {exc!r}"))
            return
        self._saving = meta
        self._save_replies = list(replies or [])
        self.executor.tell(SaveSnapshot(writer, finish))

    def shutdown(self) -> None:
        """Runs on the actor's thread as it stops: every future fails, the roles end
        (on_leader_stop, on_stop_following), and on_shutdown is the state machine's last call."""
        self._fail_pending(NodeStoppedError("node stopped", outcome_unknown=True))
        self._fail_reads(NodeStoppedError("node stopped"))
        stopped = NodeStoppedError("node stopped before the snapshot finished")
        fail_all(self._save_replies + self._next_replies, stopped)
        self._end_roles()
        self._call(self.state_machine.on_shutdown)

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
            if entry.type == EntryType.CONFIGURATION and self._track_conf(entry):
                self._call(self.state_machine.on_configuration_committed, self.conf, entry.index)
            self._advance(entry.index, [(entry.index, None)])
            if self.error is not None:
                return False
        return not run or self._apply_run(run)

    def _track_conf(self, entry: LogEntry) -> bool:
        """Take the configuration of `entry`; whether it decoded."""
        try:
            self.conf = Configuration.decode(entry.data)
            return True
        except Exception:
            # Membership is still fixed at bootstrap, so nothing depends on this yet; the
            # membership change will make an undecodable configuration entry fatal.
            log.warning(
                "fsm: configuration entry %d does not decode; kept %s", entry.index, self.conf
            )
            return False

    def _apply_run(self, run: list[LogEntry]) -> bool:
        commands = commands_of(run)
        started = self._clock()
        try:
            with running_callback("on_apply"):
                results = list(self.state_machine.on_apply(commands))
        except Exception as exc:
            self._enter_error(exc, f"on_apply of {run[0].index}..{run[-1].index}")
            return False
        self._apply_seconds.observe(self._clock() - started)
        if len(results) != len(run):
            self._enter_error(
                ValueError(f"on_apply returned {len(results)} results for {len(run)} commands"),
                f"on_apply of {run[0].index}..{run[-1].index}",
            )
            return False
        if trace.ON:  # before the futures settle: their callbacks send the replies
            trace.mark("leader.apply")
        self._advance(run[-1].index, [(e.index, r) for e, r in zip(run, results, strict=True)])
        return self.error is None

    def _advance(self, index: int, results: list[tuple[int, Any]]) -> None:
        """Entries through `index` are applied: publish it, then complete their futures."""
        assert index > self.applied_index, (index, self.applied_index)
        self.applied_index = index
        self.log_view.applied_index = index  # published for status; this actor is its only writer
        pending = len(self.pending)
        for entry_index, result in results:
            future = self.pending.pop(entry_index, None)
            if future is not None:
                complete(future, result)
        self._completed["applied"].inc(pending - len(self.pending))
        self._maybe_leader_start()

    # -- leadership and errors -----------------------------------------------------------------

    def _maybe_leader_start(self) -> None:
        due = self.leader_term and self.applied_index >= self.leader_first_index
        if due and not self.leader_started:
            self.leader_started = True
            self._call(self.state_machine.on_leader_start, self.leader_term)

    def _leader_stopped(self) -> None:
        if self.leader_started:
            self._call(self.state_machine.on_leader_stop, self.leader_term)
        self.leader_term = 0
        self.leader_first_index = 0
        self.leader_started = False

    def _end_roles(self) -> None:
        """ERROR or stop: close the open leader and follower pairs of events."""
        self._leader_stopped()
        self._stop_following()

    def _call(self, callback: Callable[..., object], *args: Any) -> None:
        """Call one of the state machine's events: a notification, which must not touch the
        replicated state, so its exception is logged and counted and goes no further."""
        name = getattr(callback, "__name__", "callback")
        try:
            with running_callback(name):
                callback(*args)
        except Exception:
            self._count_callback_error(name)
            log.exception("fsm: the state machine's %s raised; going on", name)

    def _count_callback_error(self, name: str) -> None:
        cell = self._callback_error_cells.get(name)
        if cell is None:
            cell = self._callback_error_cells[name] = self._callback_errors.cell(name)
        cell.inc()

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
        self._fail_reads(NodeFailedError(f"node in ERROR: {reason}"))
        fail_all(self._save_replies + self._next_replies, self._failed_error())
        self._save_replies, self._next_replies = [], []
        self._end_roles()
        self._call(self.state_machine.on_error, exc)

    def _failed_error(self) -> NodeFailedError:
        return NodeFailedError(f"node in ERROR: {self.error}", outcome_unknown=True)

    def _fail_pending(self, error: RaftError) -> None:
        pending, self.pending = self.pending, {}
        self._completed[error.outcome_label].inc(len(pending))
        for future in pending.values():
            fail(future, error)

    def _lost(self, future: pykka.Future[Any], why: str) -> None:
        """A future whose entry was overwritten (or applied) before it could complete."""
        self._completed["leadership_lost"].inc()
        fail(future, LeadershipLostError(why))
