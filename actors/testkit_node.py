"""A Node for a unit test, and an election driven by hand.

    kit = build_node(peer="a", peers=["a", "b", "c"])
    term = elect(kit)                       # pre-vote, vote, leader: as b and c would answer
    assert kit.node.role is Role.LEADER and term == 1
    assert [p for p, _, _ in kit.replicators.started] == ["b", "c"]

The Node runs in an ActorHarness on a ManualClock; its LogManager and SnapshotExecutor are
RecordingMailboxes, its transport a RecordingTransport and its Replicators recording mailboxes
made by a RecordingReplicators factory, all on one Transcript. Nothing answers the Node unless
the test does: `elect` sends what a real LogManager and real peers would (see its docstring).

Time: `kit.advance(seconds)` fires timers only; no answer arrives inside the window. A pre-vote
started and timed out within one call is therefore lost without anyone having had a chance to
answer it, which is rarely what a test means: `NodeKit.advance` raises PreVoteAbandoned then
(pass `expire_pre_votes=True` when that is the point). See docs/TESTING.md.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from actors.configuration import Configuration
from actors.futures import complete
from actors.log_view import LogView
from actors.messages import BecomeLeader, LeaderLogReady
from actors.node import Node
from actors.options import NodeOptions, RaftOptions
from actors.role import Role
from actors.status import LeaderWatch
from actors.testing import RecordingMailbox, RecordingTransport, Transcript, counts
from actors.testkit_actors import PEERS, ActorKit, Neighbours, memory_log, raft_options
from storage.entry import EntryType, LogEntry
from transport.rpc import RequestVoteResponse


class RecordingReplicators:
    """The Node's ReplicatorFactory, recording: each started Replicator is a RecordingMailbox
    (on the factory's transcript, named "replicator PEER"), kept in `mailboxes` until stopped.

    `started` lists (peer, term, next_index) and `stopped` the peers, in call order."""

    def __init__(self, transcript: Transcript | None = None) -> None:
        self.transcript = transcript
        self.started: list[tuple[str, int, int]] = []
        self.stopped: list[str] = []
        self.mailboxes: dict[str, RecordingMailbox] = {}  # the running ones

    def start(self, peer_id: str, term: int, next_index: int) -> RecordingMailbox:
        self.started.append((peer_id, term, next_index))
        mailbox = RecordingMailbox(f"replicator {peer_id}", self.transcript)
        self.mailboxes[peer_id] = mailbox
        return mailbox

    def stop(self, peer_id: str) -> None:
        self.stopped.append(peer_id)
        self.mailboxes.pop(peer_id, None)


class PreVoteAbandoned(AssertionError):
    """`NodeKit.advance` let a pre-vote start and time out in one call: no answer could reach
    it. Advance less (or use `elect`), or pass `expire_pre_votes=True` if that is the point."""


@dataclass(eq=False)
class NodeKit(ActorKit[Node]):
    """A Node (`kit.node`) with recording collaborators. `errors` collects what the Node's
    on_error hook was called with; `leader_watch` is where it publishes its leadership."""

    options: NodeOptions
    log_view: LogView
    log_manager: RecordingMailbox
    ballot_box: RecordingMailbox  # a leader's SetConfiguration (membership changes)
    fsm_caller: RecordingMailbox  # a leader's RegisterPending (the futures of its entries)
    transport: RecordingTransport
    replicators: RecordingReplicators
    snapshot_executor: RecordingMailbox | None
    leader_watch: LeaderWatch
    errors: list[str] = field(default_factory=list)

    @property
    def node(self) -> Node:
        return self.actor

    @property
    def full_election_timeout(self) -> float:
        """The longest a follower waits before its pre-vote (timeout plus the whole random
        extra), plus a little: advancing this far from a reset always starts one."""
        raft = self.options.raft
        return raft.election_timeout + raft.election_delay + 0.001

    def advance(self, seconds: float, *, expire_pre_votes: bool = False) -> None:
        """ActorHarness.advance, raising PreVoteAbandoned when a pre-vote started inside this
        window also timed out inside it (unless `expire_pre_votes`)."""
        started_before = self._pre_votes("started")
        lost_at_start = self._pre_votes("lost")
        started_seen = started_before

        def check() -> bool:
            nonlocal started_seen, lost_at_start
            # Rounds never overlap, so a loss after a start seen in this window is that
            # round's: it timed out with no chance of an answer.
            started, lost = self._pre_votes("started"), self._pre_votes("lost")
            if started > started_seen:
                started_seen, lost_at_start = started, lost
            elif lost > lost_at_start and started_seen > started_before and not expire_pre_votes:
                raise PreVoteAbandoned(
                    f"{self.node.peer_id}'s pre-vote started and timed out within one "
                    f"advance({seconds:g}): advance less, or use elect()"
                )
            return False

        self.harness.advance(seconds, until=check)

    @property
    def pre_vote_running(self) -> bool:
        """Whether the Node runs a pre-vote now (started, neither won nor lost yet)."""
        return self._pre_votes("started") > self._pre_votes("won") + self._pre_votes("lost")

    def _pre_votes(self, outcome: str) -> int:
        return counts(self.metrics.pre_votes).get(outcome, 0)


def build_node(
    peer: str = "a",
    peers: Sequence[str] = PEERS,
    *,
    term: int = 0,
    voted_for: str | None = None,
    entries: Sequence[LogEntry] = (),
    join: bool = False,
    snapshots: bool = False,
    seed: int = 7,
    options: RaftOptions | None = None,
    **raft: Any,
) -> NodeKit:
    """The Node of `peer` in a cluster of `peers` (its bootstrap configuration), restarted
    with durable (`term`, `voted_for`) and a log of `entries`; its randomness is seeded with
    `seed`. `raft` are RaftOptions fields (or pass `options`): the defaults are production's,
    so the first election timer fires after the short initial advance."""
    raft_opts = raft_options(options, raft)
    node_options = NodeOptions(peer, Configuration.of(peers), raft_opts, join=join)
    n = Neighbours()
    bootstrap = Configuration.of(()) if join else node_options.initial_conf
    log_view = LogView(memory_log(entries), bootstrap_conf=bootstrap)
    log_manager = n.mailbox("log_manager")
    ballot_box = n.mailbox("ballot_box")
    fsm_caller = n.mailbox("fsm_caller")
    transport = n.transport(peer)
    replicators = RecordingReplicators(n.transcript)
    executor = n.mailbox("snapshot_executor") if snapshots else None
    leader_watch = LeaderWatch()
    errors: list[str] = []
    node = Node(
        node_options,
        term=term,
        voted_for=voted_for,
        log_view=log_view,
        log_manager=log_manager,
        ballot_box=ballot_box,
        fsm_caller=fsm_caller,
        transport=transport,
        replicators=replicators,
        clock=n.clock,
        rng=random.Random(seed),
        on_error=errors.append,
        snapshot_executor=executor,
        metrics=n.metrics,
        leader_watch=leader_watch,
    )
    return NodeKit(
        *n.kit(node), node_options, log_view, log_manager, ballot_box, fsm_caller, transport,
        replicators, executor, leader_watch, errors,
    )  # fmt: skip


def elect(
    kit: NodeKit,
    voters: Sequence[str] | None = None,
    *,
    commit: bool = False,
    within: float | None = None,
) -> int:
    """Make `kit.node` the leader, as a real cluster would, and return its term.

    1. Unless a pre-vote or an election runs already, advance the clock one timer at a time
       until the Node starts a pre-vote (never past it: see PreVoteAbandoned), at most
       `within` seconds (default: four full election timeouts).
    2. Answer the pre-vote from each of `voters` (default: every other voter), granting,
       until the Node campaigns; then the real vote, as each voter's LogManager would once it
       had persisted its vote.
    3. Answer the Node's BecomeLeader as its LogManager would: append the term's first entry
       (the configuration in force) to `kit.log_view`, then LeaderLogReady with its index (the
       Replicators start there; the Node appends proposals after it). With `commit`, also
       settle the BecomeLeader's `applied` future: the term's first entry committed and
       applied (membership changes and reads may then proceed).

    Then everything the election told (the log manager, ballot box, FSMCaller, transport,
    transcript) is forgotten,
    so the test sees only what follows; the Replicators started are in `kit.replicators`.
    Raises AssertionError when the Node does not campaign or does not win with those votes."""
    node = kit.node
    if node.role not in (Role.FOLLOWER, Role.CANDIDATE):
        raise AssertionError(f"{node.peer_id} cannot be elected: {node}")
    answering = (
        list(voters) if voters is not None else sorted(node.conf.all_peers() - {node.peer_id})
    )

    def campaigning() -> bool:
        return node.role is not Role.FOLLOWER or kit.pre_vote_running

    limit = 4 * kit.full_election_timeout if within is None else within
    if not kit.harness.advance(limit, until=campaigning):
        raise AssertionError(
            f"{node.peer_id} did not campaign within {limit:g}s (a learner, joining, "
            f"priority 0, or a leader heard from?)"
        )
    _answer(kit, answering, pre_vote=True, done=lambda: node.role is not Role.FOLLOWER)
    _answer(kit, answering, pre_vote=False, done=lambda: node.role is Role.LEADER)
    [become] = [m for m in kit.log_manager.of_type(BecomeLeader) if m.term == node.term]
    first = kit.log_view.last_index + 1
    conf = kit.log_view.conf.encode()
    kit.log_view.append_unstable([LogEntry(first, node.term, EntryType.CONFIGURATION, conf)])
    kit.send(LeaderLogReady(node.term, first))
    if commit and become.applied is not None:
        complete(become.applied, None)  # tells the Node TermEntryApplied, on its own queue
        kit.harness.run()
    for mailbox in (kit.log_manager, kit.ballot_box, kit.fsm_caller):
        mailbox.clear()
    kit.transport.take()
    kit.transcript.clear()
    return node.term


def _answer(
    kit: NodeKit, voters: Sequence[str], *, pre_vote: bool, done: Callable[[], bool]
) -> None:
    """Grant the Node's latest (pre-)vote round from each voter in turn until `done()`."""
    node = kit.node
    if done():
        return  # won alone (a one-voter cluster), or the round needs no answer
    # A pre-vote asks for the next term without moving to it; a vote is in the term itself.
    round_term = node.term + 1 if pre_vote else node.term
    for voter in voters:
        kit.send(RequestVoteResponse(node.term, True, pre_vote, voter, round_term))
        if done():
            return
    kind = "pre-vote" if pre_vote else "vote"
    raise AssertionError(f"{node.peer_id} did not win its {kind} with {list(voters)}: {node}")
