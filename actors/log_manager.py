"""LogManager: the only owner of the log and the term/vote meta storage.

Runs on its own actor thread. Everything that depends on the log's authoritative last id runs
here, in mailbox order, after every append queued before it: follower appends and their acks,
the log half of vote decisions (§5.4.1), the last-log id stamped on outgoing RequestVotes.
(A Node reading a shared view instead could grant a vote while an append it has accepted still
waits here, then ack that entry to the old leader: a committed entry the new leader lacks.)

Group commit: appends go to the LogView's in-memory tail at once (so Replicators can send them
before they are local durable) and a `Flush` is told to ourselves; being queued behind the
appends already waiting, it writes them all with one fsync. Only then does anything promise
durability: the leader's own Grant to the BallotBox, a follower's ack to its leader, a follower's
commit index advancing.

A leader's own entries are appended to the tail on the Node's thread (actors/leader_log.py,
which also bounds what is in flight); they reach this actor as PersistLeaderEntries, to be
written and granted. The LogManager appends only the first entry of a leader's term (on
BecomeLeader, before LeaderLogReady hands the tail to the Node) and, as a follower, its
leader's entries.

A follower that refuses an AppendEntries for a log mismatch says where its log disagrees (the
conflicting term and the first index it holds of that term), so the leader skips a whole term
per round trip instead of one entry.

Snapshots: once a snapshot is durable (SnapshotSaved) the log before it is compacted, less
`snapshot_log_margin` entries and never past what is durable. A follower that installed its
leader's snapshot (InstallLog) keeps its log if it holds the snapshot's last entry, else starts
it afresh after it; then the FSMCaller loads the snapshot. An AppendEntries whose prev_log_index
lies inside our snapshot matches at the snapshot (those entries are committed, so the leader's
are the same).

Supervision: a storage failure or an invariant that would break puts the peer in ERROR
(`report_fatal`); from then on nothing is written, acknowledged or voted. So does EnterError
from the Node, which the LogManager passes on to the FSMCaller (which fails what is pending).
Storage is closed by the peer's owner once every actor has stopped (the FSMCaller may read the
log until it stops), not here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from actors import trace
from actors.base import RaftActor, handles
from actors.configuration import Configuration
from actors.errors import InvariantViolationError
from actors.log_view import LogView
from actors.mailbox import Mailbox
from actors.messages import (
    AdoptClusterId,
    BecomeLeader,
    CheckVote,
    ClearPending,
    Commit,
    Committed,
    ConfigurationChanged,
    EnterError,
    Flush,
    FollowerAppend,
    Following,
    Grant,
    InstallLog,
    LeaderLogReady,
    LeaderStart,
    LeaderStop,
    LoadSnapshot,
    PersistLeaderEntries,
    PersistTermVote,
    RegisterPending,
    RequestVotes,
    ResetPending,
    SnapshotSaved,
    StepDown,
    VoteGranted,
)
from actors.metrics import RaftMetrics
from actors.options import RaftOptions
from storage.base import MetaStorage
from storage.entry import EntryType, LogEntry
from transport.base import Transport
from transport.rpc import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    RequestVoteRequest,
    RequestVoteResponse,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _PendingAck:
    """A follower's answer to its leader, held until the entries it vouches for are durable."""

    leader_id: str
    response: AppendEntriesResponse
    commit_index: int  # how far this request lets the commit index advance


class LogManager(RaftActor):
    def __init__(
        self,
        peer_id: str,
        log_view: LogView,
        meta: MetaStorage,
        transport: Transport,
        node: Mailbox,
        ballot_box: Mailbox,
        fsm_caller: Mailbox,
        raft_options: RaftOptions,
        metrics: RaftMetrics | None = None,
    ) -> None:
        super().__init__(supervisor=node)
        self.peer_id = peer_id
        self.log_view = log_view
        self.meta = meta
        self.transport = transport
        self.node = node
        self.ballot_box = ballot_box
        self.fsm_caller = fsm_caller
        self.raft_options = raft_options
        self.leader_term: int | None = None  # set while this node leads that term
        self.committed_index = log_view.committed_index  # the snapshot's index, at start
        self._unflushed: list[LogEntry] = []  # in the LogView tail, not yet in storage
        self._acks: list[_PendingAck] = []
        self._grant_upto = 0  # leader: the last own entry whose durability to report
        self._granted = 0
        self._flush_queued = False
        self._failed = False  # storage failed: nothing more is written or promised
        # This actor's own cells (actors/metrics.py): written on this thread only.
        metrics = metrics or RaftMetrics()
        self._clock = metrics.clock
        self._fsync_seconds = metrics.fsync_seconds.cell()

    def __str__(self) -> str:
        role = f"leader@{self.leader_term}" if self.leader_term is not None else "follower"
        return (
            f"{role} last={self.log_view.last_index} stable={self.log_view.stable_index} "
            f"committed={self.committed_index} unflushed={len(self._unflushed)}"
        )

    # -- leader ------------------------------------------------------------------------------

    @handles(BecomeLeader)
    def on_become_leader(self, msg: BecomeLeader) -> None:
        if self._failed:
            return  # in ERROR: no leadership, no entry of a new term
        self._flush()  # everything accepted as a follower is durable and acked first
        self.leader_term = msg.term
        first = self.log_view.last_index + 1
        self._granted = first - 1
        conf = self.log_view.conf
        self.ballot_box.tell(ResetPending(msg.term, first, conf))
        self.fsm_caller.tell(LeaderStart(msg.term, first))
        if msg.applied is not None:
            self.fsm_caller.tell(RegisterPending(first, (msg.applied,)))
        # The first entry of the term: earlier-term entries commit only through it (Fig. 8).
        # It carries the configuration in force, so that the log always holds it (a restarted
        # peer uses its own, never its flags) and a half-done joint change is rolled forward
        # by committing it again (actors/membership.py).
        entries = [LogEntry(first, msg.term, EntryType.CONFIGURATION, conf.encode())]
        self.log_view.append_unstable(entries)
        self._write_leader(entries)
        self.node.tell(LeaderLogReady(msg.term, first))

    @handles(PersistLeaderEntries)
    def on_persist_leader_entries(self, msg: PersistLeaderEntries) -> None:
        """The leader's entries, already in the tail (actors/leader_log.py): write them in the
        next group commit. Always of the term we lead: the Node tells StepDown after them."""
        if self._failed:
            return  # in ERROR: their futures fail with it
        if self.leader_term != msg.term:
            self._fail(InvariantViolationError(f"entries of term {msg.term} appended by {self}"))
            return
        self._write_leader(msg.entries)

    def _write_leader(self, entries: list[LogEntry]) -> None:
        self._unflushed.extend(entries)
        self._grant_upto = entries[-1].index
        self._queue_flush()

    @handles(StepDown)
    def on_step_down(self, msg: StepDown) -> None:
        if self.leader_term != msg.term:
            return
        self.leader_term = None
        self.ballot_box.tell(ClearPending(msg.term))
        self.fsm_caller.tell(LeaderStop(msg.term))

    @handles(Following)
    def on_following(self, msg: Following) -> None:
        """Passed on unchanged: through here it keeps its order with LeaderStart/Stop."""
        self.fsm_caller.tell(msg)

    @handles(Committed)
    def on_committed(self, msg: Committed) -> None:
        if msg.index > self.committed_index:
            self.committed_index = msg.index
            self.log_view.set_committed(msg.index)

    # -- follower ----------------------------------------------------------------------------

    @handles(FollowerAppend)
    def on_follower_append(self, msg: FollowerAppend) -> None:
        # Each one handed over is counted answered once (actors/quiet_heartbeat.py): here when
        # it is dropped without an answer, in _flush once its held ack is sent.
        held = len(self._acks)
        self._follower_append(msg)
        if len(self._acks) == held:
            self.log_view.appends.answered += 1

    def _follower_append(self, msg: FollowerAppend) -> None:
        req = msg.request
        if self.leader_term is not None or self._failed:
            log.warning("%s: AppendEntries from %s ignored (%s)", self.peer_id, req.leader_id, self)
            return
        if msg.node_term < self.meta.term:
            return  # the Router's view of the Node was stale: the Node refuses it (LeaderContact)
        view = self.log_view
        prev = req.prev_log_index
        entries = req.entries
        bad = _undecodable_configuration(entries)
        if bad is not None:
            # A member leader sending a configuration we cannot read is faulty: append none of
            # it (and answer nothing) rather than adopt or lose a configuration.
            log.error("%s: AppendEntries from %s refused: %s", self.peer_id, req.leader_id, bad)
            return
        conf_before = view.conf_state
        if prev < view.snapshot_index:
            # Everything up to our snapshot is committed, so the leader's log holds the same
            # entries there (Log Matching, Leader Completeness): skip them, match at the
            # snapshot. (etcd does the same for a prev below its commit index.)
            entries = entries[view.snapshot_index - prev :]
            prev = view.snapshot_index
        elif prev > view.last_index:
            # Our log ends before prev: the leader jumps back to our end.
            refusal = self._response(req, msg.node_term, False, 0, view.last_index + 1)
            self._hold_ack(req.leader_id, refusal, 0)
            return
        elif (conflict_term := view.term_at(prev)) != req.prev_log_term:
            # Where the logs disagree: the leader skips every entry of our conflicting term.
            first_of_term = view.first_index_of_term(conflict_term, prev)
            refusal = self._response(req, msg.node_term, False, conflict_term, first_of_term)
            self._hold_ack(req.leader_id, refusal, 0)
            return
        new = list(entries)
        for n, entry in enumerate(entries):
            if entry.index > view.last_index:
                new = new[n:]
                break
            if view.term_at(entry.index) != entry.term:
                if not self._truncate_suffix(entry.index - 1):
                    return
                new = new[n:]
                break
        else:
            new = []  # all already present (a duplicate or a retransmission)
        if new:
            view.append_unstable(new)
            self._unflushed.extend(new)
        if view.conf_state is not conf_before:
            self.node.tell(ConfigurationChanged())
        # The leader's commit index applies only up to what this request proved we match.
        matched = prev + len(req.entries)
        commit = min(req.committed_index, matched)
        self._hold_ack(req.leader_id, self._response(req, msg.node_term, True), commit)

    def _truncate_suffix(self, last_index_kept: int) -> bool:
        if last_index_kept < self.committed_index:
            self._fail(
                InvariantViolationError(
                    f"would truncate committed entries after {last_index_kept} "
                    f"(commit index {self.committed_index})"
                )
            )
            return False
        log.info("%s: conflict, truncating log after %d", self.peer_id, last_index_kept)
        self._unflushed = [e for e in self._unflushed if e.index <= last_index_kept]
        self.log_view.truncate_suffix(last_index_kept)
        return True

    def _response(
        self,
        req: AppendEntriesRequest,
        term: int,
        success: bool,
        conflict_term: int = 0,
        conflict_index: int = 0,
    ) -> AppendEntriesResponse:
        return AppendEntriesResponse(
            term=term,
            success=success,
            last_log_index=self.log_view.last_index,
            peer_id=self.peer_id,
            seq=req.seq,
            req_term=req.term,
            conflict_term=conflict_term,
            conflict_index=conflict_index,
        )

    def _hold_ack(self, leader_id: str, response: AppendEntriesResponse, commit: int) -> None:
        # Every ack waits for the Flush, even a refusal, so acks leave in the order received.
        self._acks.append(_PendingAck(leader_id, response, commit))
        if trace.ON:
            trace.mark("follower.append")
        self._queue_flush()

    # -- snapshots ---------------------------------------------------------------------------

    @handles(SnapshotSaved)
    def on_snapshot_saved(self, msg: SnapshotSaved) -> None:
        """Compact: drop entries before the snapshot, less a margin that lets a follower only a
        little behind catch up from the log. Never a non-durable entry (a leader may apply an
        entry its followers made durable before its own fsync)."""
        if self._failed:
            return
        meta = msg.meta
        if meta.last_index <= self.log_view.snapshot_index:
            return  # an older one than what is recorded (an install overtook it)
        margin = self.raft_options.snapshot_log_margin
        first_kept = min(meta.last_index + 1 - margin, self.log_view.stable_index)
        try:
            self.log_view.compact(meta, max(first_kept, self.log_view.first_index))
        except Exception as exc:
            self._fail(exc)
            return
        log.info("%s: snapshot %d saved; log now %s", self.peer_id, meta.last_index, self)

    @handles(InstallLog)
    def on_install_log(self, msg: InstallLog) -> None:
        """A leader's snapshot is durable here (on a follower, as a rule). Persist and
        acknowledge what was already accepted, then make the log continue the snapshot, then
        the state machine loads it (and the executor acknowledges the install once it has)."""
        if self._failed:
            return
        meta = msg.meta
        self._flush()
        if self._failed:
            return
        if meta.last_index > self.committed_index:
            if self.leader_term is not None and self.log_view.known_term(meta.last_index) != (
                meta.last_term
            ):
                # A download that finished after this peer became leader. A snapshot holds
                # committed entries only, which a leader's log holds (Leader Completeness).
                self._fail(InvariantViolationError(f"leader's log lacks snapshot {meta}"))
                return
            conf_before = self.log_view.conf_state
            try:
                self.log_view.install(meta)
            except Exception as exc:
                self._fail(exc)
                return
            self.committed_index = meta.last_index
            if self.log_view.conf_state is not conf_before:
                self.node.tell(ConfigurationChanged())
            log.info("%s: installed snapshot %d; log now %s", self.peer_id, meta.last_index, self)
        self.fsm_caller.tell(LoadSnapshot(meta))

    # -- term, vote and elections ------------------------------------------------------------

    @handles(PersistTermVote)
    def on_persist_term_vote(self, msg: PersistTermVote) -> None:
        if self._failed:
            return  # in ERROR: no vote is cast, asked for or persisted
        meta = self.meta
        if msg.term < meta.term:
            return  # terms never go back; a newer decision was already persisted
        voted_for = msg.voted_for
        if msg.term == meta.term:
            if voted_for is None or voted_for == meta.voted_for:
                return  # nothing new: a vote once cast in a term stays
            if meta.voted_for is not None:
                log.error("%s: refusing a second vote in term %d", self.peer_id, msg.term)
                return
        self._persist(msg.term, voted_for)

    @handles(AdoptClusterId)
    def on_adopt_cluster_id(self, msg: AdoptClusterId) -> None:
        """Before the entries of the leader that sent it (queued after this): a peer that
        appended a cluster's entries without its id could follow another cluster's leader after
        a restart."""
        if self._failed or self.meta.cluster_id:
            return  # an id never changes; the Node asks again until it sees this one published
        try:
            self.meta.set_cluster_id(msg.cluster_id)
        except Exception as exc:
            self._fail(exc)
            return
        self.log_view.cluster_id = msg.cluster_id
        log.info("%s: joined cluster %s", self.peer_id, msg.cluster_id)

    @handles(RequestVotes)
    def on_request_votes(self, msg: RequestVotes) -> None:
        if self._failed:
            return  # in ERROR: no vote is cast, asked for or persisted
        self._flush()  # claim only a log that is durable
        if not msg.pre_vote:
            if msg.term <= self.meta.term and self.meta.voted_for not in (None, self.peer_id):
                return  # voted for someone else in this term already: no candidacy
            if not self._persist(msg.term, self.peer_id):
                return
        request = RequestVoteRequest(
            term=msg.term,
            candidate_id=self.peer_id,
            last_log_index=self.log_view.last_index,
            last_log_term=self.log_view.last_term,
            pre_vote=msg.pre_vote,
            transfer=msg.transfer,
            cluster_id=self.log_view.cluster_id,
        )
        for peer in msg.peers:
            self.transport.send(peer, request)

    @handles(CheckVote)
    def on_check_vote(self, msg: CheckVote) -> None:
        if self._failed:
            return  # in ERROR: no vote is cast, asked for or persisted
        req = msg.request
        view = self.log_view
        log_ok = (req.last_log_term, req.last_log_index) >= (view.last_term, view.last_index)
        granted = log_ok
        if not req.pre_vote:
            meta = self.meta
            granted = (
                log_ok
                and req.term == msg.node_term
                and req.term >= meta.term
                and (meta.term < req.term or meta.voted_for in (None, req.candidate_id))
            )
            if granted:
                self._flush()  # nothing accepted before this vote may be acked after it
                granted = self._persist(req.term, req.candidate_id)
            if granted:
                self.node.tell(VoteGranted(req.term, req.candidate_id))
        self.transport.send(
            req.candidate_id,
            RequestVoteResponse(
                term=max(msg.node_term, self.meta.term),
                granted=granted,
                pre_vote=req.pre_vote,
                voter_id=self.peer_id,
                req_term=req.term,
                priority=self.raft_options.election_priority,
            ),
        )

    def _persist(self, term: int, voted_for: str | None) -> bool:
        try:
            self.meta.set_term_and_vote(term, voted_for)
        except Exception as exc:
            self._fail(exc)
            return False
        return True

    # -- group commit ------------------------------------------------------------------------

    def _queue_flush(self) -> None:
        if not self._flush_queued:
            self._flush_queued = True
            self.self_mailbox.tell(Flush())

    @handles(Flush)
    def on_flush(self, msg: Flush) -> None:
        self._flush_queued = False
        self._flush()

    def _flush(self) -> None:
        if self._failed:
            return
        if self._unflushed:
            batch, self._unflushed = self._unflushed, []
            started = self._clock()
            try:
                self.log_view.persist(batch)
            except Exception as exc:
                self._fail(exc)
                return
            self._fsync_seconds.observe(self._clock() - started)
            if trace.ON:
                trace.mark("leader.fsync" if self.leader_term is not None else "follower.fsync")
        if self.leader_term is not None and self._grant_upto > self._granted:
            self._granted = self._grant_upto
            self.ballot_box.tell(Grant(self.peer_id, self._granted, self.leader_term))
        if self._acks:
            acks, self._acks = self._acks, []
            commit = self.committed_index
            for ack in acks:
                self.transport.send(ack.leader_id, ack.response)
                commit = max(commit, ack.commit_index)
            self.log_view.appends.answered += len(acks)  # after sending: see quiet_heartbeat
            if trace.ON:
                trace.mark("follower.ack")
            if commit > self.committed_index:
                self.committed_index = commit
                self.log_view.set_committed(commit)
                self.fsm_caller.tell(Commit(commit))

    def _fail(self, error: BaseException) -> None:
        """Storage failed or an invariant would break: promise nothing more, tell the Node."""
        log.error("%s: log manager failed: %s", self.peer_id, error, exc_info=error)
        reason = f"{type(error).__name__}: {error}"
        self.enter_error(reason)
        self.report_fatal(reason)

    @handles(EnterError)
    def on_enter_error(self, msg: EnterError) -> None:
        self.enter_error(msg.reason)

    def enter_error(self, reason: str) -> None:
        """Write, acknowledge and vote nothing more; the FSMCaller fails what is pending."""
        if self._failed:
            return
        self._failed = True
        self.log_view.appends.closed = True
        self._unflushed.clear()
        self._acks.clear()
        if self.leader_term is not None:
            self.ballot_box.tell(ClearPending(self.leader_term))
            self.leader_term = None
        self.fsm_caller.tell(EnterError(reason))

    def shutdown(self) -> None:
        self._flush()


def _undecodable_configuration(entries: Sequence[LogEntry]) -> str | None:
    """What is wrong with the first configuration entry among `entries` that does not decode."""
    for entry in entries:
        if entry.type == EntryType.CONFIGURATION:
            try:
                Configuration.decode(entry.data)
            except ValueError as exc:
                return f"configuration entry {entry.index}: {exc}"
    return None
