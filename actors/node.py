"""Node: a Raft peer's role, term and elections; the front door for commands.

Runs on its own actor thread. It owns role, current term (in memory; the LogManager makes it
durable, in mailbox order, before anything that depends on it), voted-for, leader id and the
leader's Replicators. It decides everything about terms and roles; what depends on the log's
authoritative last id it hands to the LogManager (see log_manager.py for why).

Elections (Raft §5.2, with pre-vote from the dissertation §9.6): a follower that has not heard
from a leader for a randomised timeout first runs a pre-vote in term+1 that changes nothing;
only with a quorum of pre-votes does it increment its term and ask for real votes. A peer refuses
a pre-vote while it still hears from a live leader, so a partitioned peer that rejoins cannot
depose a healthy leader. At start the first timeout is short (two heartbeats plus the random
part: `initial_election_advance`), so a restarted cluster elects at once. A leader that has
not heard from a quorum within its lease steps down (check-quorum), and a voter that heard from
a live leader within the election timeout grants no vote, pre-vote or real one (the
dissertation's §4.2.3): what makes leases safe.

Reads (actors/read_only.py): ReadIndex gets the leader's read index after a heartbeat round
has confirmed its leadership (or at once while its lease holds, when asked for a lease read);
the caller then reads once that index is applied. A follower asks its leader for the index
(ReadIndexRequest, one at a time for a batch of reads) and its reads wait until it has applied
it there: linearizable reads spread over every peer.

Untrusted input (docs/DESIGN.md, principle 6): only a voter of the configuration may lead or
vote here. AppendEntries from a non-member and vote traffic from strangers are refused and
counted (`Rejections`, reported in status) before anything else, so a stranger can neither move
the term nor be followed. Terms never pass MAX_TERM (the codec refuses larger ones), so every
term this peer sends can be encoded and decoded by every other. MAX_TERM is the last term: a
peer there cannot campaign again (2**62 elections away; only a faulty member gets there).

Leadership transfer and membership changes are the Node's too; their handlers live in
actors/leadership.py (a mixin) so that each part reads in one sitting.

Supervision: the Node is the peer's supervisor. Any actor of the peer that cannot go on tells
it FatalError; the Node enters ERROR at once (stops leading, so no more heartbeats; refuses
votes and commands), tells the LogManager (which tells the FSMCaller) to fail what is pending,
and calls the `on_error` hook (the service exits, for its supervisor to restart it).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from typing import Any, Protocol

from actors import trace
from actors.base import RaftActor, handles
from actors.clock import Clock
from actors.configuration import Configuration
from actors.errors import (
    CommandTooLargeError,
    LeadershipLostError,
    LeadershipUnconfirmedError,
    LeaderTransferringError,
    NodeFailedError,
    NodeStoppedError,
    NotLeaderError,
    RaftError,
)
from actors.futures import CompletionFuture, complete, fail, fail_all
from actors.identity import Kinship, compare
from actors.leader_log import LeaderLog
from actors.leadership import LeadershipChanges
from actors.log_view import LogView
from actors.mailbox import Mailbox
from actors.messages import (
    AdoptClusterId,
    Apply,
    BecomeLeader,
    CheckVote,
    ConfigurationChanged,
    ConfirmLeadership,
    ElectionTimeout,
    EnterError,
    FatalError,
    FollowerAppend,
    FollowerInstall,
    FollowerReadTimeout,
    Following,
    GetStatus,
    HigherTermSeen,
    LeaderContact,
    LeaderLogReady,
    LeadershipAck,
    LeaseCheck,
    PeerContact,
    PersistTermVote,
    PreVoteGrace,
    ReadIndex,
    ReadRoundTimeout,
    RequestVotes,
    StepDown,
    TermEntryApplied,
    VoteGranted,
    VoteTimeout,
)
from actors.metrics import RaftMetrics
from actors.options import NodeOptions
from actors.priority import PriorityElection
from actors.read_only import FollowerReads, ReadOnly
from actors.rejections import Rejections
from actors.role import Role
from actors.status import Leadership, LeaderWatch, NodeStatus, transport_refusals
from transport.base import Transport
from transport.rpc import (
    MAX_TERM,
    AppendEntriesRequest,
    AppendEntriesResponse,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVoteRequest,
    RequestVoteResponse,
)

log = logging.getLogger(__name__)


class ReplicatorFactory(Protocol):
    """Starts and stops the leader's per-follower Replicators (actors in production, recording
    mailboxes in unit tests, simulated actors in the simulator)."""

    def start(self, peer_id: str, term: int, next_index: int) -> Mailbox: ...

    def stop(self, peer_id: str) -> None: ...


class Node(LeadershipChanges, RaftActor):
    def __init__(
        self,
        options: NodeOptions,
        *,
        term: int,
        voted_for: str | None,
        log_view: LogView,
        log_manager: Mailbox,
        ballot_box: Mailbox,
        fsm_caller: Mailbox,
        transport: Transport,
        replicators: ReplicatorFactory,
        clock: Clock,
        rng: random.Random,
        on_error: Callable[[str], None] | None = None,
        snapshot_executor: Mailbox | None = None,
        metrics: RaftMetrics | None = None,
        leader_watch: LeaderWatch | None = None,
    ) -> None:
        """`ballot_box`, `fsm_caller`: where a leader's own appends are announced (the
        configuration in force, the futures of its entries: actors/leader_log.py).
        `leader_watch`: where role, term and leader are published for other threads (a new one
        if None)."""
        super().__init__()
        self.options = options
        self.raft_options = options.raft
        self.peer_id = options.peer_id
        # The --peers hints: leaders this peer follows even when its own log does not name
        # them (a brand-new peer started with --join, or one whose log lags a membership
        # change that added its leader).
        self._contacts = options.initial_conf.all_peers() - {self.peer_id}
        self._known_peers: set[str] = set()  # ids told to the transport (ensure_peer)
        self.log_view = log_view
        self.log_manager = log_manager
        self.ballot_box = ballot_box
        self.fsm_caller = fsm_caller
        self.transport = transport
        self.replicators = replicators
        self.clock = clock
        self.rng = rng
        self.on_error = on_error  # called once, on this thread, when the peer enters ERROR
        self.snapshot_executor = snapshot_executor  # None: snapshots are off here
        self.rejections = Rejections(self.peer_id)
        # This actor's own cells (actors/metrics.py): written on this thread only.
        metrics = metrics or RaftMetrics()
        self._proposals = metrics.proposals.cells(
            "appended", "overloaded", "not_leader", "too_large", "stopped", "failed", "transferring"
        )
        self._pre_votes = metrics.pre_votes.cells("started", "won", "lost")
        self._elections = metrics.elections.cells("started", "won", "lost")
        self._leader_changes = metrics.leader_changes.cell()
        self._leader_seen_term = 0  # the last term whose leader was counted in leader_changes

        self.role = Role.FOLLOWER
        self.term = term
        self.voted_for = voted_for
        self.leader_id: str | None = None
        self.error: str | None = None
        self._last_leader_contact = -float("inf")
        self._election_reset_at = clock.now()
        self._election_gen = 0
        self._vote_gen = 0
        self._pre_vote_term = 0  # while running a pre-vote: the term it is for, else 0
        self._votes: set[str] = set()
        self._answered: set[str] = set()  # pre-vote: the voters that answered, either way
        self._priority = PriorityElection(options.raft.election_priority)
        self._lease_gen = 0
        self._grace_gen = -1  # the pre-vote (_vote_gen) a PreVoteGrace was armed for
        self._peer_contact: dict[str, float] = {}
        self._peer_report: dict[str, PeerContact] = {}  # leader: each replicator's latest
        self._replicating: dict[str, Mailbox] = {}  # leader: peer -> its replicator
        # Leader, from LeaderLogReady on: where this term's entries are appended. Before it,
        # the LogManager still owns the log's tail, so proposals wait in _early.
        self._leader_log: LeaderLog | None = None
        self._early: list[Apply] = []
        self._reads = ReadOnly(self.peer_id, lambda: self.conf)  # leader: this term's rounds
        self._follower_reads = FollowerReads()  # follower: reads waiting for a read index
        self._transfer = None  # state of actors/leadership.py: see LeadershipChanges
        self._transfer_gen = 0
        self._change = None
        self._change_gen = 0
        self._term_committed = False
        self._waiting_change = None
        self.leader_watch = leader_watch or LeaderWatch()
        self._published: tuple[Role, int, str | None] | None = None
        self._followed: tuple[str, int] | None = None  # the last Following told
        self._publish()

    def __str__(self) -> str:
        return f"{self.peer_id} {self.role.value} term={self.term} leader={self.leader_id}"

    def startup(self) -> None:
        self._learn_members()
        options = self.raft_options
        if options.initial_election_advance:
            # etcd's initial-election-tick-advance: at start, campaign after a short settle
            # (two heartbeats, for a live leader to make itself known) plus the random part,
            # not a full timeout more. A restarted cluster elects a leader an election timeout
            # sooner; a peer restarted into a live cluster hears its leader first or has its
            # pre-vote refused, so it disrupts nothing.
            settle = 2 * options.heartbeat_interval
            self._election_reset_at = self.clock.now() - options.election_timeout + settle
            self._arm_election_timer(settle + self.rng.uniform(0, options.election_delay))
        else:
            self._arm_election_timer()

    def shutdown(self) -> None:
        self._stop_replicators()
        stopped = NodeStoppedError(f"node {self.peer_id} is stopped")
        self._end_leader_log(stopped)
        self._fail_reads(stopped)
        self.role = Role.SHUTDOWN
        self._invalidate_timers()
        self._publish()

    def receive(self, message: Any) -> Any:
        try:
            return super().receive(message)
        finally:
            self._publish()

    def _publish(self) -> None:
        """After each message: publish role, term and leader if they changed, and tell whom
        this peer follows (the FSMCaller's on_start/stop_following). Once per message, so a
        handler's intermediate states (step down, then follow) are never seen."""
        state = (self.role, self.term, self.leader_id)
        if state == self._published:
            return
        self._published = state
        self.leader_watch.publish(Leadership(self.role.value, self.term, self.leader_id))
        leader = self.leader_id if self.role is Role.FOLLOWER else None
        followed = (leader, self.term) if leader is not None and leader != self.peer_id else None
        if followed != self._followed:
            self._followed = followed
            self.log_manager.tell(Following(*followed) if followed else Following(None, self.term))

    @property
    def conf(self) -> Configuration:
        """The configuration in force: the newest in this peer's own log (it takes effect
        when appended), published by the LogManager in the LogView."""
        return self.log_view.conf

    @property
    def _others(self) -> tuple[str, ...]:
        """The other voters: whom to ask for votes."""
        return tuple(sorted(self.conf.all_peers() - {self.peer_id}))

    def _may_lead(self, peer: str, cluster_id: str) -> bool:
        """Whether this peer follows `peer` as a leader (and votes for it as a candidate), given
        the cluster id its request carries (actors/identity.py): one of this cluster's, by id,
        even one this peer's log does not name yet (it was cut off while membership moved);
        never one of another cluster's; and where either side has no id, by name: a voter of
        the configuration in force or of the one before it (a leader that removed itself leads
        until C_new commits, and its followers append C_new first), or one of the --peers
        hints. A joining peer that holds nothing yet (no id, no entry, no snapshot) follows any
        leader that names its cluster: only a leader whose configuration lists this peer
        replicates to it, and its hints may name only peers removed since it was started (a
        joining peer wiped and restarted with its old flags)."""
        view = self.log_view
        kinship = compare(view.cluster_id, cluster_id)
        if kinship is not Kinship.UNKNOWN:
            return kinship is Kinship.SAME
        empty = view.last_index == 0 and view.snapshot_index == 0
        if self.options.join and empty and cluster_id:
            return True
        state = view.conf_state
        return (
            peer in state.conf.all_peers()
            or peer in state.previous.all_peers()
            or peer in self._contacts
        )

    def _refuse_stranger(self, what: str, peer: str, cluster_id: str) -> None:
        """Count a refused request: `what`_from_other_cluster when its id is not ours, else
        `what`_from_non_member."""
        other = compare(self.log_view.cluster_id, cluster_id) is Kinship.OTHER
        self.rejections.refuse(f"{what}_from_{'other_cluster' if other else 'non_member'}", peer)

    def _learn_members(self) -> None:
        """Let the transport reach every member of the configuration (new ones included)."""
        for peer in sorted(self.conf.members() - {self.peer_id}):
            self._reach(peer)

    def _reach(self, peer: str) -> None:
        """Make sure the transport sends to `peer` over a connection of our own (once)."""
        if peer not in self._known_peers:
            self.transport.ensure_peer(peer)
            self._known_peers.add(peer)

    @handles(ConfigurationChanged)
    def on_configuration_changed(self, msg: ConfigurationChanged) -> None:
        self._learn_members()

    # -- client commands ---------------------------------------------------------------------

    @handles(Apply)
    def on_apply(self, msg: Apply) -> None:
        if trace.ON:
            trace.mark("leader.propose")
        commands, futures = msg.commands, msg.futures
        if max(map(len, commands), default=0) > self.raft_options.max_command_bytes:
            commands, futures = self._without_oversized(msg)
        if not commands:
            return  # an empty batch is a no-op
        if self.role is Role.LEADER and self._transfer is None:
            if self._leader_log is not None:
                self._leader_log.append_commands(commands, futures)
            else:
                self._early.append(Apply(commands, futures))
            return
        error = self._not_leading()
        self._proposals[error.outcome_label].inc(len(futures))
        fail_all(futures, error)

    def _not_leading(self) -> RaftError:
        """Why a command or a read is refused here, when this peer does not lead (or hands
        leadership over)."""
        if self._transfer is not None:
            return LeaderTransferringError(
                f"{self.peer_id} is handing leadership to {self._transfer.target}"
            )
        if self.role is Role.ERROR:
            return NodeFailedError(f"node {self.peer_id} is in ERROR: {self.error}")
        if self.role is Role.SHUTDOWN:
            return NodeStoppedError(f"node {self.peer_id} is stopped")
        return NotLeaderError(self.leader_id)

    # -- linearizable reads (actors/read_only.py) --------------------------------------------

    @handles(ReadIndex)
    def on_read_index(self, msg: ReadIndex) -> None:
        if self.role is Role.FOLLOWER and self.leader_id is not None and msg.on_follower:
            self._follower_reads.add(msg.reply)  # a lease read too: the leader's round
            self._ask_leader_for_read_index()
            return
        if self.role is not Role.LEADER:
            fail(msg.reply, self._not_leading())
            return
        committed, now = self._known_committed(), self.clock.now()
        if msg.lease and self._reads.lease_valid(now, self.raft_options.lease_timeout):
            complete(msg.reply, self._reads.read_index(committed))
            return
        self._reads.add(committed, msg.reply)
        self._start_read_round()

    def _known_committed(self) -> int:
        """The commit index a read must wait for: at least every index whose result a client
        may have seen. The LogView's commit index alone is not that: the BallotBox tells the
        FSMCaller of a commit before the LogManager publishes it, so a write can be applied and
        acknowledged while the LogView still shows an older commit index; a follower reading at
        that index would miss the write (a stale read the chaos runner found). The applied
        index is published before any result is handed out (FSMCaller._advance), and only
        committed entries are applied."""
        return max(self.log_view.committed_index, self.log_view.applied_index)

    def _start_read_round(self) -> None:
        started = self._reads.start_round()
        if started is None:
            return
        if trace.ON:
            trace.mark("leader.read_start")
        confirmed = self._reads.confirmed_alone()
        if confirmed is not None:
            self._serve_reads(confirmed)
            return
        for mailbox in self._replicating.values():
            mailbox.tell(ConfirmLeadership(self.term, started.number))
        # As long as a replicator waits for an answer before it gives up on the follower.
        delay = self.raft_options.replicator_rpc_timeout
        self.tell_later(self.clock, delay, ReadRoundTimeout(started.number))

    def _serve_reads(self, reads: list[tuple[int, Any]]) -> None:
        if trace.ON:
            trace.mark("leader.read_confirmed")
        for index, reply in reads:
            complete(reply, index)
        self._start_read_round()  # the reads that arrived meanwhile

    @handles(LeadershipAck)
    def on_leadership_ack(self, msg: LeadershipAck) -> None:
        if self.role is Role.LEADER and msg.term == self.term:
            confirmed = self._reads.acknowledge(msg.peer_id, msg.round)
            if confirmed is not None:
                self._serve_reads(confirmed)

    @handles(ReadRoundTimeout)
    def on_read_round_timeout(self, msg: ReadRoundTimeout) -> None:
        if self.role is not Role.LEADER:
            return
        expired = self._reads.expire(msg.generation)
        if expired:
            error = LeadershipUnconfirmedError(self.peer_id)
            fail_all(expired, error)
            self._start_read_round()

    def _fail_reads(self, error: RaftError) -> None:
        fail_all(self._reads.drain() + self._follower_reads.drain(), error)

    # as follower: ask the leader

    def _ask_leader_for_read_index(self) -> None:
        if self.leader_id is None:
            # No leader to ask: fail the reads waiting (retryable) rather than mark them as
            # asked, with no request out and no timer to end them.
            fail_all(self._follower_reads.drain(), NotLeaderError(None))
            return
        request_id = self._follower_reads.start()
        if request_id is None:
            return
        self.transport.send(self.leader_id, ReadIndexRequest(self.term, self.peer_id, request_id))
        delay = self.raft_options.replicator_rpc_timeout
        self.tell_later(self.clock, delay, FollowerReadTimeout(request_id))

    @handles(ReadIndexResponse)
    def handle_read_index_response(self, resp: ReadIndexResponse) -> None:
        if resp.peer_id not in self.conf.members() and resp.peer_id not in self._contacts:
            self.rejections.refuse("read_index_from_non_member", resp.peer_id)
            return
        reads = self._follower_reads.answered(resp.request_id)
        if resp.success:
            for reply in reads:
                complete(reply, resp.read_index)
        else:
            fail_all(
                reads, NotLeaderError(self.leader_id if self.leader_id != resp.peer_id else None)
            )
        self._ask_leader_for_read_index()

    @handles(FollowerReadTimeout)
    def on_follower_read_timeout(self, msg: FollowerReadTimeout) -> None:
        reads = self._follower_reads.answered(msg.generation)
        if reads:
            fail_all(reads, LeadershipUnconfirmedError(self.leader_id or "the leader"))
            self._ask_leader_for_read_index()

    # as leader: answer a follower

    @handles(ReadIndexRequest)
    def handle_read_index_request(self, req: ReadIndexRequest) -> None:
        if req.peer_id not in self._replication_targets():
            self.rejections.refuse("read_index_from_non_member", req.peer_id)
            return

        def answer(index: int, error: BaseException | None) -> None:  # on this thread
            ok = error is None
            response = ReadIndexResponse(self.term, self.peer_id, req.request_id, ok, index or 0)
            self.transport.send(req.peer_id, response)

        if self.role is not Role.LEADER:
            answer(0, self._not_leading())
            return
        self._reads.add(self._known_committed(), CompletionFuture(answer))
        self._start_read_round()

    def _without_oversized(self, msg: Apply) -> tuple[tuple[bytes, ...], tuple[Any, ...]]:
        """Refuse, definitely, every command too large to ever travel in one message (it would
        block replication forever); keep the rest."""
        limit = self.raft_options.max_command_bytes
        kept = []
        for command, future in zip(msg.commands, msg.futures, strict=True):
            if len(command) <= limit:
                kept.append((command, future))
                continue
            self.rejections.refuse("oversized_command", f"{len(command)} bytes")
            self._proposals["too_large"].inc()
            fail(future, CommandTooLargeError(f"{len(command)} bytes > {limit} bytes"))
        return tuple(c for c, _ in kept), tuple(f for _, f in kept)

    # -- timers ------------------------------------------------------------------------------

    def _arm_election_timer(self, delay: float | None = None) -> None:
        self._election_gen += 1
        if delay is None:
            delay = self.raft_options.election_timeout + self.rng.uniform(
                0, self.raft_options.election_delay
            )
        self.tell_later(self.clock, delay, ElectionTimeout(self._election_gen))

    def _invalidate_timers(self) -> None:
        self._election_gen += 1
        self._vote_gen += 1
        self._lease_gen += 1

    @handles(ElectionTimeout)
    def on_election_timeout(self, msg: ElectionTimeout) -> None:
        if msg.generation != self._election_gen or self.role is not Role.FOLLOWER:
            return
        # Re-armed lazily: contacts only move a timestamp, the timer checks it when it fires.
        quiet_since = max(self._last_leader_contact, self._election_reset_at)
        remaining = quiet_since + self.raft_options.election_timeout - self.clock.now()
        if remaining > 0:
            self._arm_election_timer(
                remaining + self.rng.uniform(0, self.raft_options.election_delay)
            )
            return
        self._start_pre_vote()

    def _arm_vote_timer(self) -> None:
        self._vote_gen += 1
        delay = self.raft_options.election_timeout + self.rng.uniform(
            0, self.raft_options.election_delay
        )
        self.tell_later(self.clock, delay, VoteTimeout(self._vote_gen))

    @handles(VoteTimeout)
    def on_vote_timeout(self, msg: VoteTimeout) -> None:
        if msg.generation != self._vote_gen:
            return
        if self.role is Role.CANDIDATE:
            log.info("%s: vote in term %d timed out; stepping down", self.peer_id, self.term)
            self._become_follower(self.term, None)
        elif self._pre_vote_term:
            self._pre_votes["lost"].inc()
            self._pre_vote_term = 0
            self._election_reset_at = self.clock.now()
            self._arm_election_timer()

    # -- elections: as candidate -------------------------------------------------------------

    def _start_pre_vote(self) -> None:
        if self.peer_id not in self.conf.all_peers() or not self._priority.may_campaign:
            # Not a voter (a learner, removed, or joining), or priority 0: never campaigns,
            # but keeps checking, as a configuration entry may make it a voter.
            self._election_reset_at = self.clock.now()
            self._arm_election_timer()
            return
        if self.term >= MAX_TERM:
            log.error(
                "%s: term %d is the largest there is; not campaigning", self.peer_id, self.term
            )
            self._arm_election_timer()
            return
        self.leader_id = None
        self._pre_vote_term = self.term + 1
        self._pre_votes["started"].inc()
        self._votes = {self.peer_id}
        self._answered = {self.peer_id}
        self._priority.start_round()
        self._arm_vote_timer()
        log.debug("%s: pre-vote for term %d", self.peer_id, self._pre_vote_term)
        self.log_manager.tell(RequestVotes(self._pre_vote_term, self._others, pre_vote=True))
        self._maybe_won_pre_vote()

    def _maybe_won_pre_vote(self, grace_over: bool = False) -> None:
        if not self._pre_vote_term or not self.conf.has_quorum(self._votes):
            return
        priority = self._priority
        if priority.enabled and not grace_over and not self.conf.all_peers() <= self._answered:
            # A voter that has not answered yet may have a higher priority: wait a little.
            if self._grace_gen != self._vote_gen:
                self._grace_gen = self._vote_gen
                delay = 2 * self.raft_options.heartbeat_interval
                self.tell_later(self.clock, delay, PreVoteGrace(self._vote_gen))
            return
        if priority.should_yield():
            log.info(
                "%s: a voter of priority %d answered; not campaigning (priority %d)",
                self.peer_id,
                priority.heard,
                priority.priority,
            )
            priority.yielded()
            self._pre_votes["lost"].inc()
            self._pre_vote_term = 0
            self._vote_gen += 1
            self._election_reset_at = self.clock.now()
            self._arm_election_timer()
            return
        self._pre_votes["won"].inc()
        self._start_election()

    @handles(PreVoteGrace)
    def on_pre_vote_grace(self, msg: PreVoteGrace) -> None:
        if msg.generation == self._vote_gen:
            self._maybe_won_pre_vote(grace_over=True)

    def _start_election(self, transfer: bool = False) -> None:
        self._pre_vote_term = 0
        self.role = Role.CANDIDATE
        self.term += 1
        self.voted_for = self.peer_id
        self._votes = {self.peer_id}
        self._elections["started"].inc()
        self._arm_vote_timer()
        log.info("%s: election for term %d", self.peer_id, self.term)
        # The LogManager persists (term, self) before the first RequestVote leaves.
        self.log_manager.tell(
            RequestVotes(self.term, self._others, pre_vote=False, transfer=transfer)
        )
        self._maybe_won_election()

    def _maybe_won_election(self) -> None:
        if self.role is Role.CANDIDATE and self.conf.has_quorum(self._votes):
            self._become_leader()

    @handles(RequestVoteResponse)
    def handle_request_vote_response(self, resp: RequestVoteResponse) -> None:
        if resp.voter_id not in self.conf.all_peers():
            self.rejections.refuse("vote_response_from_non_member", resp.voter_id)
            return
        if self.role in (Role.ERROR, Role.SHUTDOWN):
            return
        if resp.term > self.term:
            self._become_follower(resp.term, None)
            return
        if resp.pre_vote and self._pre_vote_term and resp.req_term == self._pre_vote_term:
            self._answered.add(resp.voter_id)
            self._priority.heard_from(resp.priority)
        if not resp.granted:
            if resp.pre_vote:
                self._maybe_won_pre_vote()  # the last answer may be the one waited for
            return
        if resp.pre_vote:
            if self._pre_vote_term and resp.req_term == self._pre_vote_term:
                self._votes.add(resp.voter_id)
                self._maybe_won_pre_vote()
        elif self.role is Role.CANDIDATE and resp.req_term == self.term:
            self._votes.add(resp.voter_id)
            self._maybe_won_election()

    # -- elections: as voter -----------------------------------------------------------------

    @handles(RequestVoteRequest)
    def handle_request_vote(self, req: RequestVoteRequest) -> None:
        # Who may ask is who may lead: a peer just added (its own log has no configuration
        # yet, or an older one) must still vote for a candidate of the cluster's - a vote is
        # safe by the log check alone; the quorum is counted by the candidate's configuration.
        if req.candidate_id == self.peer_id or not self._may_lead(req.candidate_id, req.cluster_id):
            self._refuse_stranger("vote_request", req.candidate_id, req.cluster_id)
            return
        if self.role in (Role.ERROR, Role.SHUTDOWN):
            return
        if req.term < self.term:
            self._refuse_vote(req)
        elif req.pre_vote:
            if self._has_live_leader():
                self._refuse_vote(req)
            else:
                self.log_manager.tell(CheckVote(req, self.term))
        elif self._has_live_leader() and not req.transfer:
            # Not even for a higher term (§4.2.3): this is what makes the leader's lease safe.
            # A transfer's candidate is the exception: its leader asked for the campaign and
            # revoked its own lease first (actors/transfer.py).
            self._refuse_vote(req)
        else:
            if req.term > self.term:
                self._become_follower(req.term, None)
            if self.voted_for not in (None, req.candidate_id):
                self._refuse_vote(req)
            else:
                self.log_manager.tell(CheckVote(req, self.term))

    def _has_live_leader(self) -> bool:
        if self.role is Role.LEADER:
            return True
        recent = self.clock.now() - self._last_leader_contact < self.raft_options.election_timeout
        return self.leader_id is not None and recent

    def _refuse_vote(self, req: RequestVoteRequest) -> None:
        self.transport.send(
            req.candidate_id,
            RequestVoteResponse(
                self.term, False, req.pre_vote, self.peer_id, req.term, self._priority.priority
            ),
        )

    @handles(VoteGranted)
    def on_vote_granted(self, msg: VoteGranted) -> None:
        if msg.term == self.term and self.role is Role.FOLLOWER:
            self.voted_for = msg.candidate_id
            self._election_reset_at = self.clock.now()

    # -- role changes ------------------------------------------------------------------------

    def _become_follower(self, term: int, leader_id: str | None) -> None:
        if self.role in (Role.ERROR, Role.SHUTDOWN):
            return  # in ERROR nothing is persisted, so nothing changes in memory either
        if self.role is Role.LEADER:
            self._stop_leading()
        elif self.role is Role.CANDIDATE:
            self._elections["lost"].inc()
        elif self._pre_vote_term:
            self._pre_votes["lost"].inc()
        if term > self.term:
            self.term = term
            self.voted_for = None
            self.log_manager.tell(PersistTermVote(term, None))
        self.role = Role.FOLLOWER
        self.leader_id = leader_id
        self._pre_vote_term = 0
        self._votes = set()
        self._vote_gen += 1
        self._election_reset_at = self.clock.now()
        self._arm_election_timer()

    def _become_leader(self) -> None:
        log.info("%s: leader of term %d", self.peer_id, self.term)
        self._elections["won"].inc()
        self.role = Role.LEADER
        self.leader_id = self.peer_id
        self._count_leader()
        self._votes = set()
        self._vote_gen += 1
        self._election_gen += 1
        now = self.clock.now()
        self._peer_contact = dict.fromkeys(self._replication_targets(), now)
        self._peer_report = {}
        self._reads = ReadOnly(self.peer_id, lambda: self.conf)
        self._term_committed = False
        fail_all(self._follower_reads.drain(), NotLeaderError(None))  # retried, here now
        term = self.term
        applied = CompletionFuture(lambda _, error: self.tell_self(TermEntryApplied(term, error)))
        self.log_manager.tell(BecomeLeader(term, applied))
        self._arm_lease_check()

    def _stop_leading(self) -> None:
        log.info("%s: stepping down as leader of term %d", self.peer_id, self.term)
        self._end_transfer()
        self._end_change(LeadershipLostError(f"{self.peer_id} stopped leading mid-change"))
        if self._waiting_change is not None:
            fail(self._waiting_change.reply, NotLeaderError(None))
            self._waiting_change = None
        self._stop_replicators()
        self._fail_reads(NotLeaderError(None))
        self._lease_gen += 1
        self._end_leader_log(NotLeaderError(None))
        self.log_manager.tell(StepDown(self.term))

    def _end_leader_log(self, error: RaftError) -> None:
        """The tail goes back to the LogManager: nothing is appended here after this (the
        StepDown or EnterError told next is queued after every PersistLeaderEntries)."""
        self._leader_log = None
        early, self._early = self._early, []
        for msg in early:
            self._proposals[error.outcome_label].inc(len(msg.futures))
            fail_all(msg.futures, error)

    def _stop_replicators(self) -> None:
        for peer in sorted(self._replicating):
            self._stop_replicator(peer)

    def _stop_replicator(self, peer: str) -> None:
        self.replicators.stop(peer)
        del self._replicating[peer]
        self._peer_contact.pop(peer, None)
        self._peer_report.pop(peer, None)

    @handles(LeaderLogReady)
    def on_leader_log_ready(self, msg: LeaderLogReady) -> None:
        if self.role is not Role.LEADER or msg.term != self.term:
            return
        self._leader_log = LeaderLog(
            self.term,
            self.log_view,
            self.log_manager,
            self.ballot_box,
            self.fsm_caller,
            self._replicating,
            self.raft_options,
            self._proposals,
        )
        self._sync_replicators(msg.first_index)
        early, self._early = self._early, []
        for apply in early:
            self._leader_log.append_commands(apply.commands, apply.futures)
        self._reads.term_first_index = msg.first_index
        self._start_read_round()  # reads that arrived before the term began

    @handles(HigherTermSeen)
    def on_higher_term_seen(self, msg: HigherTermSeen) -> None:
        if msg.term > self.term:
            log.info("%s: %s is in term %d; stepping down", self.peer_id, msg.source, msg.term)
            self._become_follower(msg.term, None)

    # -- supervision -------------------------------------------------------------------------

    @handles(FatalError)
    def on_fatal_error(self, msg: FatalError) -> None:
        self.enter_error(f"{msg.component}: {msg.reason}")

    def enter_error(self, reason: str) -> None:
        """The whole peer enters ERROR; the first reason is the one reported. Idempotent."""
        if self.error is not None:
            return
        log.error("%s: entering ERROR: %s", self.peer_id, reason)
        self.error = reason
        if self.role is Role.LEADER:
            self._stop_leading()
        if self.role is not Role.SHUTDOWN:
            self.role = Role.ERROR
        self.leader_id = None
        self._invalidate_timers()
        self._fail_reads(NodeFailedError(f"node {self.peer_id} is in ERROR: {reason}"))
        self.log_manager.tell(EnterError(reason))
        if self.on_error is not None:
            try:
                self.on_error(reason)
            except Exception:
                log.exception("%s: the on_error hook raised", self.peer_id)

    def report_fatal(self, reason: str) -> None:
        """The Node is the supervisor: its own crash already entered ERROR (enter_error)."""

    # -- leader: check-quorum ----------------------------------------------------------------

    def _arm_lease_check(self) -> None:
        self._lease_gen += 1
        self.tell_later(
            self.clock, self.raft_options.lease_timeout / 4, LeaseCheck(self._lease_gen)
        )

    @handles(PeerContact)
    def on_peer_contact(self, msg: PeerContact) -> None:
        if self.role is Role.LEADER and msg.term == self.term and msg.peer_id in self._peer_contact:
            self._peer_contact[msg.peer_id] = max(
                self._peer_contact[msg.peer_id], msg.last_response_at
            )
            self._peer_report[msg.peer_id] = msg
            self._reads.acked(msg.peer_id, msg.acked_sent_at)
            if self._transfer is not None and self._transfer.target == msg.peer_id:
                self._maybe_send_timeout_now()
            change = self._change
            if change is not None and msg.peer_id in change.catching_up:
                installing = msg.replication == "snapshot"
                margin, last = self.raft_options.catchup_margin, self.log_view.last_index
                change.observe(
                    msg.peer_id, msg.match_index, msg.last_response_at, installing, last, margin
                )
                self._advance_change()

    @handles(LeaseCheck)
    def on_lease_check(self, msg: LeaseCheck) -> None:
        if msg.generation != self._lease_gen or self.role is not Role.LEADER:
            return
        horizon = self.clock.now() - self.raft_options.lease_timeout
        alive = {p for p, at in self._peer_contact.items() if at >= horizon} | {self.peer_id}
        if not self.conf.has_quorum(alive):
            log.warning("%s: no quorum heard within the lease; stepping down", self.peer_id)
            self._become_follower(self.term, None)
        else:
            self._arm_lease_check()

    # -- replication: as follower ------------------------------------------------------------

    @handles(AppendEntriesRequest)
    def handle_append_entries(self, req: AppendEntriesRequest) -> None:
        if trace.ON:
            trace.mark("follower.node")
        if self._accept_leader(req, "append_entries"):
            self.log_view.appends.hand()
            self.log_manager.tell(FollowerAppend(req, self.term))

    @handles(LeaderContact)
    def on_leader_contact(self, msg: LeaderContact) -> None:
        """The LogManager has `msg.request` already (Router): in the steady state only the
        contact is news; otherwise the full checks run, and answer a refusal, as if the request
        had come here first (the LogManager drops it if it is stale by the term it persisted,
        and the Node's term is never behind that)."""
        req = msg.request
        steady = (
            self.role is Role.FOLLOWER
            and req.term == self.term
            and req.leader_id == self.leader_id
            and not self._pre_vote_term
        )
        if steady:
            self._heard_from_leader()
        else:
            self._accept_leader(req, "append_entries")

    @handles(InstallSnapshotRequest)
    def handle_install_snapshot(self, req: InstallSnapshotRequest) -> None:
        if not self._accept_leader(req, "install_snapshot"):
            return
        if self.snapshot_executor is None:
            # Answered, so the leader backs off instead of resending: this peer cannot install.
            self.rejections.refuse("install_snapshot_without_snapshots", req.leader_id)
            self._refuse_leader(req, self.term)
            return
        self.snapshot_executor.tell(FollowerInstall(req, self.term))

    def _accept_leader(self, req: AppendEntriesRequest | InstallSnapshotRequest, what: str) -> bool:
        """The term and leader checks of a leader's request (Raft Fig. 2): whether to act on
        it, as this term's follower of req.leader_id. Refusals are answered here."""
        if req.leader_id == self.peer_id or not self._may_lead(req.leader_id, req.cluster_id):
            # Before anything else: a stranger must neither move our term nor be followed.
            self._refuse_stranger(what, req.leader_id, req.cluster_id)
            return False
        if self.role in (Role.ERROR, Role.SHUTDOWN):
            return False
        if req.term < self.term:
            self._refuse_leader(req, self.term)
            return False
        if req.term > self.term or self.role is Role.CANDIDATE or self._pre_vote_term:
            self._become_follower(req.term, req.leader_id)
        elif self.leader_id not in (None, req.leader_id) or self.role is Role.LEADER:
            # Two leaders claim one term: impossible unless something is badly wrong. Move both
            # to a new term (as SOFAJRaft does) rather than follow either.
            log.error(
                "%s: %s also leads term %d (leader %s)",
                self.peer_id,
                req.leader_id,
                self.term,
                self.leader_id,
            )
            self._become_follower(min(self.term + 1, MAX_TERM), None)
            self._refuse_leader(req, self.term)
            return False
        self.leader_id = req.leader_id
        self._count_leader()
        self._heard_from_leader()
        self._reach(req.leader_id)  # it may be a member our log does not name yet
        if not self.log_view.cluster_id and req.cluster_id:
            # A joining peer's first leader: its id is ours, durably before its entries
            # (queued next). Asked again until the LogManager publishes it: idempotent.
            self.log_manager.tell(AdoptClusterId(req.cluster_id))
        return True

    def _heard_from_leader(self) -> None:
        """This term's leader is alive: no election, and no pre-vote granted, for a while."""
        self._last_leader_contact = self.clock.now()
        self._priority.leader_heard()

    def _count_leader(self) -> None:
        """Count this term's leader in leader_changes, once (on every AppendEntries: cheap)."""
        if self._leader_seen_term != self.term:
            self._leader_seen_term = self.term
            self._leader_changes.inc()

    def _refuse_leader(self, req: AppendEntriesRequest | InstallSnapshotRequest, term: int) -> None:
        if isinstance(req, InstallSnapshotRequest):
            response: AppendEntriesResponse | InstallSnapshotResponse = InstallSnapshotResponse(
                term, False, self.peer_id, req.seq, req.term, req.last_included_index, 0, False
            )
        else:
            response = AppendEntriesResponse(
                term, False, self.log_view.last_index, self.peer_id, req.seq, req.term
            )
        self.transport.send(req.leader_id, response)

    # -- status ------------------------------------------------------------------------------

    def _followers(self) -> dict[str, dict[str, Any]]:
        """The leader's view of each follower: its match index, how far behind the leader's
        log it is, how long since it last answered (seconds), its replication state (probe,
        replicate, snapshot) and the AppendEntries in flight to it."""
        now, last = self.clock.now(), self.log_view.last_index
        followers = {}
        for peer in sorted(self._replicating):
            report = self._peer_report.get(peer)
            match = self._match_index(peer)
            followers[peer] = {
                "match_index": match,
                "lag": max(0, last - match),
                "last_contact_s": round(max(0.0, now - self._peer_contact.get(peer, now)), 3),
                "state": report.replication if report is not None else "probe",
                "inflight": report.inflight if report is not None else 0,
            }
        return followers

    def _match_index(self, peer: str) -> int:
        """Leader: the last index `peer` is known to hold (its Replicator's latest report)."""
        report = self._peer_report.get(peer)
        return report.match_index if report is not None else 0

    @handles(GetStatus)
    def on_get_status(self, msg: GetStatus) -> NodeStatus:
        conf_state = self.log_view.conf_state
        conf = conf_state.conf
        status = NodeStatus(
            id=self.peer_id,
            role=self.role.value,
            term=self.term,
            leader=self.leader_id,
            voted_for=self.voted_for,
            commit_index=self.log_view.committed_index,
            applied_index=self.log_view.applied_index,
            last_log_index=self.log_view.last_index,
            first_log_index=self.log_view.first_index,
            snapshot_index=self.log_view.snapshot_index,
            snapshot_term=self.log_view.snapshot_term,
            pid=os.getpid(),
            conf=sorted(conf.all_peers()),
            learners=sorted(conf.learners),
            old_conf=sorted(conf.old_peers),
            conf_index=conf_state.index,
            cluster_id=self.log_view.cluster_id,
            membership_change=self._change.stage.value if self._change is not None else None,
            error=self.error,
            replicators=(
                {p: r.state for p, r in sorted(self._peer_report.items())}
                if self.role is Role.LEADER
                else {}
            ),
            followers=self._followers() if self.role is Role.LEADER else {},
            rejected=self.rejections.as_dict(),
            transport=transport_refusals(self.transport),
        )
        if msg.reply is not None:
            complete(msg.reply, status)
        return status
