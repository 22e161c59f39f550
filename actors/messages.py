"""Mailbox messages between the Raft actors (wire RPCs live in transport.rpc).

Grouped by the actor that receives them. Each is a small frozen dataclass; a message carrying
futures or mailboxes is never sent over the network.

How a client command flows (leader):

    RaftNode.apply ─Apply─▶ Node
      Node (its LeaderLog): assigns indexes, RegisterPending ▶ FSMCaller, makes entries
                  readable (LogView), PersistLeaderEntries ▶ LogManager, LogAppended ▶ each
                  Replicator
      LogManager: one fsync per batch (Flush), then Grant(self) ▶ BallotBox
      Replicator: AppendEntries ▶ follower ... AppendEntriesResponse ▶ Replicator
                  Grant(peer) ▶ BallotBox
      BallotBox:  quorum reached ▶ Commit ▶ FSMCaller, Committed ▶ LogManager
      FSMCaller:  StateMachine.on_apply(batch), completes each command's future

Follower: Node checks term/leader, then FollowerAppend ▶ LogManager, which checks the log,
resolves conflicts, appends, fsyncs and only then answers the leader and advances the commit
index (persist before you promise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pykka

from actors.configuration import Configuration
from actors.membership import ChangeRequest
from transport.rpc import AppendEntriesRequest, InstallSnapshotRequest, RequestVoteRequest

if TYPE_CHECKING:
    from storage.entry import LogEntry
    from storage.snapshot_storage import SnapshotMeta, SnapshotWriter

# -- to the Node -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Apply:
    """Client commands to replicate; each future completes with its state machine result."""

    commands: tuple[bytes, ...]
    futures: tuple[pykka.Future[Any], ...]


@dataclass(frozen=True, slots=True)
class Timer:
    """A timer an actor set for itself fired. Each kind is a subclass (dispatch is by exact
    type); `generation` tells the live timer from one re-armed or cancelled since (stale)."""

    generation: int


class PreVoteGrace(Timer):
    """Pre-vote with a quorum: time to decide without the voters that have not answered
    (priority election, actors/priority.py)."""

    __slots__ = ()


class ElectionTimeout(Timer):
    """Follower: time to check whether a leader was heard from lately."""

    __slots__ = ()


class VoteTimeout(Timer):
    """A (pre-)vote round got no quorum in time."""

    __slots__ = ()


class LeaseCheck(Timer):
    """Leader: time for the check-quorum tick."""

    __slots__ = ()


class ReadRoundTimeout(Timer):
    """Leader: the read round numbered `generation` is overdue (actors/read_only.py)."""

    __slots__ = ()


class FollowerReadTimeout(Timer):
    """Follower: the ReadIndexRequest numbered `generation` got no answer in time."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ReadIndex:
    """RaftNode -> Node: a linearizable read. `reply` completes with the index to read at once
    it is applied (actors/read_only.py), or fails (NotLeaderError, ReadTimeoutError). With
    `lease`, a leader whose lease holds answers at once, without a heartbeat round."""

    reply: pykka.Future[Any]
    lease: bool = False
    on_follower: bool = True  # a follower serves it (asking the leader); else NotLeaderError


@dataclass(frozen=True, slots=True)
class ConfirmLeadership:
    """Node -> Replicator: send the follower a request now, and acknowledge read round `round`
    once it has answered one sent from now on."""

    term: int
    round: int


@dataclass(frozen=True, slots=True)
class LeadershipAck:
    """Replicator -> Node: `peer_id` answered, in `term`, a request sent after read round
    `round` began."""

    peer_id: str
    term: int
    round: int


@dataclass(frozen=True, slots=True)
class VoteGranted:
    """LogManager -> Node: the vote for `candidate_id` in `term` is durable and was sent."""

    term: int
    candidate_id: str


@dataclass(frozen=True, slots=True)
class LeaderLogReady:
    """LogManager -> Node: leader mode is set up in the log; the first entry of `term` is at
    `first_index`. Replicators start from there."""

    term: int
    first_index: int


@dataclass(frozen=True, slots=True)
class PeerContact:
    """Replicator -> Node, about once per heartbeat: when `peer_id` last answered, and how its
    replication stands (for check-quorum and status)."""

    peer_id: str
    term: int
    last_response_at: float
    state: str  # the replicator described, for status
    match_index: int = 0  # the last index the follower is known to hold
    replication: str = "probe"  # its ReplicatorState, lower case: probe, replicate, snapshot
    inflight: int = 0  # AppendEntries sent to it and not answered yet
    acked_sent_at: float = -float("inf")  # send time of the newest request it answered (lease)


@dataclass(frozen=True, slots=True)
class HigherTermSeen:
    """A collaborator saw `term` > ours in a response: the Node must step down."""

    term: int
    source: str


@dataclass(frozen=True, slots=True)
class FatalError:
    """Any actor -> Node: it cannot go on (an exception escaped a handler, the state machine
    raised, storage failed, an invariant would break). The Node moves the peer to ERROR."""

    component: str
    reason: str


@dataclass(frozen=True, slots=True)
class GetStatus:
    """Returns a NodeStatus when asked (edges only); also completes `reply` with it when
    given, for callers that must not block."""

    reply: pykka.Future[Any] | None = None


# -- to the LogManager -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PersistLeaderEntries:
    """Node (leader, actors/leader_log.py) -> LogManager: `entries` of `term` are in the
    LogView's tail; write them (group commit), then Grant the leader's own vote for them."""

    term: int
    entries: list[LogEntry]


@dataclass(frozen=True, slots=True)
class FollowerAppend:
    """An AppendEntries the Node accepted (term and leader checked) while in `node_term`, or
    one the Router handed straight over because the Node's published Leadership already
    follows that leader in that term (then `node_term` is the request's, and the Node hears
    of it by LeaderContact). The LogManager checks the log, appends, fsyncs, then answers the
    leader; one whose `node_term` is older than the term it persisted is stale (the Router's
    view was), so it appends nothing and leaves the answer to the Node."""

    request: AppendEntriesRequest
    node_term: int


@dataclass(frozen=True, slots=True)
class LeaderContact:
    """The Router handed `request` to the LogManager directly (FollowerAppend): the Node does
    the rest of accepting it (contact time, pre-vote stickiness), or refuses it if its view has
    moved on since it published the leadership the Router read."""

    request: AppendEntriesRequest


@dataclass(frozen=True, slots=True)
class PersistTermVote:
    """Make (term, voted_for) durable. Anything queued after this is handled after it is."""

    term: int
    voted_for: str | None


@dataclass(frozen=True, slots=True)
class AdoptClusterId:
    """A joining peer's first leader is of cluster `cluster_id`: make it this peer's, durably,
    before anything queued after it (the leader's entries). actors/identity.py."""

    cluster_id: str


@dataclass(frozen=True, slots=True)
class RequestVotes:
    """Start a (pre-)vote round in `term`: for a real vote first persist (term, self); then send
    RequestVote with this log's authoritative last id to `peers`."""

    term: int
    peers: tuple[str, ...]
    pre_vote: bool
    transfer: bool = False  # a campaign its leader asked for (TimeoutNowRequest)


@dataclass(frozen=True, slots=True)
class TransferLeadership:
    """RaftNode -> Node (leader): hand leadership to `target` (None: the most up-to-date other
    voter). `reply` completes with the target's id once this leader stepped down for a newer
    term after sending it TimeoutNow; it fails with NotLeaderError, UnknownPeerError,
    ChangeInProgressError or, after an election timeout, TransferLeadershipError."""

    target: str | None
    reply: Any


@dataclass(frozen=True, slots=True)
class ChangeMembership:
    """RaftNode -> Node (leader): carry out one membership change (actors/membership.py).
    `reply` completes with the new (stable) Configuration once it is committed; it fails with
    NotLeaderError, ChangeInProgressError, UnknownPeerError, MembershipChangeError, CatchUpError
    or (outcome unknown) LeadershipLostError."""

    request: ChangeRequest
    reply: Any


class CatchupCheck(Timer):
    """Leader: time to check that the peers a membership change adds are still catching up."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ConfEntryApplied:
    """Node -> itself: the configuration entry of change `generation` was applied (committed),
    or could not be (`error`: leadership lost, ERROR)."""

    generation: int
    error: BaseException | None


@dataclass(frozen=True, slots=True)
class TermEntryApplied:
    """Node -> itself: the first entry of leader term `term` was applied (committed)."""

    term: int
    error: BaseException | None


@dataclass(frozen=True, slots=True)
class ConfigurationChanged:
    """LogManager -> Node: the log's configuration changed by a follower append, a truncation
    or a snapshot install (the Node reads it from the LogView; it learns new members' ids)."""


@dataclass(frozen=True, slots=True)
class TransferTimeout:
    """Leader: the transfer numbered `generation` has had its election timeout."""

    generation: int


@dataclass(frozen=True, slots=True)
class CheckVote:
    """The Node found nothing against this (pre-)vote request in `node_term` (term, leader,
    voted-for); the LogManager decides on the log (§5.4.1), for a real vote re-checks the
    durable voted-for, persists the vote, and answers the candidate."""

    request: RequestVoteRequest
    node_term: int


@dataclass(frozen=True, slots=True)
class BecomeLeader:
    """Enter leader mode for `term`: reset the BallotBox, tell the FSMCaller, append the first
    entry of the term (a CONFIGURATION entry carrying the log's configuration), then answer
    LeaderLogReady. `applied`, if given, completes when that entry is applied."""

    term: int
    applied: Any = None


@dataclass(frozen=True, slots=True)
class StepDown:
    """Leave leader mode of `term`: pending commands fail with LeadershipLostError."""

    term: int


@dataclass(frozen=True, slots=True)
class Committed:
    """BallotBox -> LogManager: the commit index reached `index` (guards truncation)."""

    index: int


@dataclass(frozen=True, slots=True)
class Flush:
    """LogManager -> itself: write and fsync everything appended since the last Flush. Being
    queued behind the appends already waiting, it turns them into one group commit."""


@dataclass(frozen=True, slots=True)
class EnterError:
    """Node -> LogManager -> FSMCaller: the peer is in ERROR; stop work, fail what is pending."""

    reason: str


# -- to the Replicator -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogAppended:
    """New entries up to `last_index` are readable in the LogView."""

    last_index: int


class HeartbeatTick(Timer):
    """Replicator: time to heartbeat (and to report contact to the Node)."""

    __slots__ = ()


class Unblock(Timer):
    """Replicator: the wait after an RPC error is over: probe again."""

    __slots__ = ()


# -- to the BallotBox ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResetPending:
    """A new leader term: ballots start at `pending_index` (entries before it are from earlier
    terms and commit only through it, Raft paper Fig. 8)."""

    term: int
    pending_index: int
    conf: Configuration


@dataclass(frozen=True, slots=True)
class SetConfiguration:
    """LogManager -> BallotBox: from now on leader term `term` counts by `conf` (a
    configuration entry was appended)."""

    term: int
    conf: Configuration


@dataclass(frozen=True, slots=True)
class Grant:
    """`peer_id` holds every entry up to `last_index` of the current leader's log (durably).

    `term` is the leader term the sender replicates for; the BallotBox ignores a Grant of
    another term (a Replicator of an earlier term may still be draining its mailbox, and its
    indexes may name different entries in this term's log)."""

    peer_id: str
    last_index: int
    term: int


@dataclass(frozen=True, slots=True)
class ClearPending:
    """Leadership of `term` ended: stop counting."""

    term: int


# -- to the FSMCaller ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterPending:
    """The futures of the DATA entries first_index, first_index+1, ... (leader only)."""

    first_index: int
    futures: tuple[pykka.Future[Any], ...]


@dataclass(frozen=True, slots=True)
class Commit:
    """Entries up to `index` are committed: apply them."""

    index: int


@dataclass(frozen=True, slots=True)
class LeaderStart:
    """This node leads `term`; call on_leader_start once `first_index` is applied."""

    term: int
    first_index: int


@dataclass(frozen=True, slots=True)
class LeaderStop:
    """Leadership of `term` ended: fail pending futures (outcome unknown), on_leader_stop."""

    term: int


@dataclass(frozen=True, slots=True)
class Following:
    """Node -> LogManager -> FSMCaller: this peer follows `leader_id` in `term` (None: no
    one; it leads, campaigns, or knows no leader). Told whenever that changes."""

    leader_id: str | None
    term: int


@dataclass(frozen=True, slots=True)
class ApplyCommitted:
    """FSMCaller -> itself: apply the next batch up to the commit target. Being queued behind
    the Commits already waiting, it coalesces them into one pass."""


@dataclass(frozen=True, slots=True)
class GetApplied:
    """Asked (edges only: tests, tools): returns the FSMCaller's applied index."""


@dataclass(frozen=True, slots=True)
class ReadAt:
    """A read of the state machine (`StateMachine.on_read(query)`) once `index` is applied;
    `reply` completes with its result. Index 0: at once (serializable)."""

    index: int
    query: bytes
    reply: pykka.Future[Any]


@dataclass(frozen=True, slots=True)
class TakeSnapshot:
    """Snapshot now (RaftNode.snapshot, the interval timer): `reply`, if any, completes with the
    SnapshotMeta saved (or the latest one, when nothing was applied since). `if_changed`: the
    timer's request, skipped when nothing was applied since the last snapshot."""

    reply: pykka.Future[Any] | None = None
    if_changed: bool = False


@dataclass(frozen=True, slots=True)
class SnapshotDone:
    """SnapshotExecutor -> FSMCaller: the save it asked for ended; `error` None = committed."""

    meta: SnapshotMeta
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """LogManager -> FSMCaller (follower): an installed snapshot replaces the state machine; the
    log already starts after it (or matches it)."""

    meta: SnapshotMeta


# -- to the SnapshotExecutor -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SaveSnapshot:
    """FSMCaller -> SnapshotExecutor: the state machine captured its state in `writer`; run
    `finish` (its writing off the apply path, if it returned one), then commit."""

    writer: SnapshotWriter
    finish: Callable[[], None] | None


@dataclass(frozen=True, slots=True)
class FollowerInstall:
    """Node -> SnapshotExecutor: a chunk of the leader's snapshot, the term already checked."""

    request: InstallSnapshotRequest
    node_term: int


@dataclass(frozen=True, slots=True)
class SnapshotLoaded:
    """FSMCaller -> SnapshotExecutor: the installed snapshot is the state now (or was already
    covered): acknowledge it to the leader."""

    meta: SnapshotMeta
    error: str | None = None


class SnapshotTick(Timer):
    """SnapshotExecutor: the snapshot interval elapsed."""

    __slots__ = ()


class ChunkTick(Timer):
    """Replicator: the snapshot throttle allows more bytes, or time to check chunks overdue."""

    __slots__ = ()


# -- to the LogManager (snapshots) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotSaved:
    """SnapshotExecutor -> LogManager: a local snapshot is durable: compact the log before it."""

    meta: SnapshotMeta


@dataclass(frozen=True, slots=True)
class InstallLog:
    """SnapshotExecutor -> LogManager (follower): the leader's snapshot is durable here: make
    the log start after it (keeping a matching suffix), then have the FSMCaller load it."""

    meta: SnapshotMeta
