"""Node, alone: elections, voting rules, step-down, check-quorum, command admission.

The Node is driven on the test thread by ActorHarness with a ManualClock; its collaborators are
recording mailboxes, so each test asserts exactly what the Node told whom.
"""

from __future__ import annotations

import random
from typing import Any

import pykka
import pytest

from actors.clock import ManualClock
from actors.configuration import Configuration
from actors.errors import (
    CommandTooLargeError,
    LeadershipUnconfirmedError,
    NodeFailedError,
    NotLeaderError,
    OverloadedError,
)
from actors.log_view import LogView
from actors.messages import (
    Apply,
    BecomeLeader,
    CheckVote,
    ConfirmLeadership,
    EnterError,
    FatalError,
    FollowerAppend,
    Following,
    GetStatus,
    HigherTermSeen,
    LeaderContact,
    LeaderLogReady,
    LeadershipAck,
    LogAppended,
    PeerContact,
    PersistLeaderEntries,
    PersistTermVote,
    ReadIndex,
    RegisterPending,
    RequestVotes,
    StepDown,
    VoteGranted,
)
from actors.metrics import RaftMetrics
from actors.node import Node, Role
from actors.options import NodeOptions, RaftOptions
from actors.testing import (
    ActorHarness,
    RecordingMailbox,
    RecordingTransport,
    counts,
    is_pending,
)
from storage.entry import EntryType, LogEntry, command_entries
from storage.memory import MemoryLogStorage
from transport.rpc import (
    MAX_TERM,
    AppendEntriesRequest,
    AppendEntriesResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVoteRequest,
    RequestVoteResponse,
)

A, B, C = "a:1", "b:2", "c:3"
TIMEOUT = 1.0
FULL_TIMEOUT = 2 * TIMEOUT + 0.01  # timeout plus the largest random extra


class Replicators:
    def __init__(self) -> None:
        self.started: list[tuple[str, int, int]] = []
        self.stopped: list[str] = []
        self.mailboxes: dict[str, RecordingMailbox] = {}

    def start(self, peer_id: str, term: int, next_index: int) -> RecordingMailbox:
        self.started.append((peer_id, term, next_index))
        self.mailboxes[peer_id] = RecordingMailbox(peer_id)
        return self.mailboxes[peer_id]

    def stop(self, peer_id: str) -> None:
        self.stopped.append(peer_id)


class Fixture:
    def __init__(
        self,
        peers: tuple[str, ...] = (A, B, C),
        term: int = 0,
        raft_options: RaftOptions | None = None,
        join: bool = False,
    ) -> None:
        self.errors: list[str] = []
        self.clock = ManualClock()
        self.lm = RecordingMailbox("log_manager")
        self.bb = RecordingMailbox("ballot_box")
        self.fsm = RecordingMailbox("fsm_caller")
        self.transport = RecordingTransport(A)
        self.replicators = Replicators()
        self.metrics = RaftMetrics()
        raft = raft_options or RaftOptions(election_timeout=TIMEOUT, initial_election_advance=False)
        options = NodeOptions(A, Configuration.of(peers), raft, join=join)
        bootstrap = Configuration.of(()) if join else options.initial_conf
        self.node = Node(
            options,
            term=term,
            voted_for=None,
            log_view=LogView(MemoryLogStorage(), bootstrap_conf=bootstrap),
            log_manager=self.lm,
            ballot_box=self.bb,
            fsm_caller=self.fsm,
            transport=self.transport,
            replicators=self.replicators,
            clock=self.clock,
            rng=random.Random(7),
            on_error=self.errors.append,
            metrics=self.metrics,
        )
        self.harness = ActorHarness(self.node, self.clock)

    def send(self, message: Any) -> Any:
        return self.harness.send(message)

    def win(self) -> None:
        """Run pre-vote and vote to leadership in term 1, with B's votes (the LogManager has
        not answered BecomeLeader yet)."""
        self.harness.advance(FULL_TIMEOUT)
        self.send(RequestVoteResponse(0, True, True, B, 1))
        self.send(RequestVoteResponse(1, True, False, B, 1))
        assert self.node.role is Role.LEADER
        [self.become] = [m for m in self.lm.told if isinstance(m, BecomeLeader)]

    def elect(self) -> None:
        """Leader of term 1 (win), its log ready."""
        self.win()
        self.send(LeaderLogReady(1, 1))
        self.lm.clear()
        self.transport.take()


@pytest.fixture
def f() -> Fixture:
    return Fixture()


def test_election_timeout_starts_a_pre_vote_that_changes_nothing(f: Fixture) -> None:
    f.harness.advance(TIMEOUT - 0.01)
    assert f.lm.told == []
    f.harness.advance(FULL_TIMEOUT)
    assert f.lm.take() == [RequestVotes(1, (B, C), pre_vote=True)]
    assert (f.node.role, f.node.term, f.node.voted_for) == (Role.FOLLOWER, 0, None)


def test_pre_vote_quorum_starts_a_real_election_persisted_by_the_log_manager(f: Fixture) -> None:
    f.harness.advance(FULL_TIMEOUT)
    f.lm.clear()
    f.send(RequestVoteResponse(0, True, True, B, 1))
    # §5.2: the vote for itself is made durable (by the LogManager, in this message) before
    # any RequestVote leaves; the Node itself sends none.
    assert f.lm.take() == [RequestVotes(1, (B, C), pre_vote=False)]
    assert f.transport.sent == []
    assert (f.node.role, f.node.term, f.node.voted_for) == (Role.CANDIDATE, 1, A)


def test_stale_pre_vote_response_is_ignored(f: Fixture) -> None:
    f.harness.advance(FULL_TIMEOUT)
    f.lm.clear()
    f.send(RequestVoteResponse(0, True, True, B, 7))  # answers some other round
    assert f.lm.told == []
    assert f.node.role is Role.FOLLOWER


def test_vote_quorum_makes_leader_which_starts_replicators(f: Fixture) -> None:
    f.harness.advance(FULL_TIMEOUT)
    f.send(RequestVoteResponse(0, True, True, C, 1))
    f.lm.clear()
    f.send(RequestVoteResponse(1, True, False, C, 1))
    assert f.node.role is Role.LEADER and f.node.leader_id == A
    [become] = f.lm.take()
    assert isinstance(become, BecomeLeader) and become.term == 1
    f.send(LeaderLogReady(1, 5))
    assert f.replicators.started == [(B, 1, 5), (C, 1, 5)]
    assert f.lm.take() == []


def test_single_peer_elects_itself() -> None:
    f = Fixture(peers=(A,))
    f.harness.advance(FULL_TIMEOUT)
    assert f.node.role is Role.LEADER
    assert [type(m) for m in f.lm.told] == [RequestVotes, RequestVotes, BecomeLeader]


def test_candidate_whose_vote_times_out_steps_down_and_waits_again(f: Fixture) -> None:
    f.harness.advance(FULL_TIMEOUT)
    f.send(RequestVoteResponse(0, True, True, B, 1))
    assert f.node.role is Role.CANDIDATE
    f.lm.clear()
    f.harness.advance(FULL_TIMEOUT)
    assert f.node.role is Role.FOLLOWER and f.node.term == 1
    f.harness.advance(FULL_TIMEOUT)  # then campaigns again, starting with a pre-vote
    assert RequestVotes(2, (B, C), pre_vote=True) in f.lm.told


def test_vote_request_with_higher_term_persists_term_before_log_check(f: Fixture) -> None:
    req = RequestVoteRequest(3, B, 10, 2, pre_vote=False)
    f.send(req)
    assert f.lm.take() == [PersistTermVote(3, None), CheckVote(req, 3)]
    assert f.node.term == 3
    assert f.transport.sent == []  # the LogManager answers, after the log check


def test_vote_request_with_stale_term_is_refused_directly(f: Fixture) -> None:
    f.send(RequestVoteRequest(3, B, 10, 2, pre_vote=False))
    f.lm.clear()
    f.send(RequestVoteRequest(2, C, 10, 2, pre_vote=False))
    assert f.lm.told == []
    assert f.transport.take() == [(C, RequestVoteResponse(3, False, False, A, 2))]


def test_one_vote_per_term(f: Fixture) -> None:
    """§5.2: at most one candidate per term gets this peer's vote."""
    f.send(RequestVoteRequest(3, B, 10, 2, pre_vote=False))
    f.send(VoteGranted(3, B))
    f.lm.clear()
    f.send(RequestVoteRequest(3, C, 10, 2, pre_vote=False))
    assert f.lm.told == []
    assert f.transport.take() == [(C, RequestVoteResponse(3, False, False, A, 3))]


def test_pre_vote_refused_while_a_live_leader_is_heard(f: Fixture) -> None:
    f.send(AppendEntriesRequest(1, B, 0, 0, (), 0, 1))
    f.lm.clear()
    f.send(RequestVoteRequest(2, C, 99, 1, pre_vote=True))
    assert f.transport.take() == [(C, RequestVoteResponse(1, False, True, A, 2))]
    assert f.lm.told == []
    assert f.node.term == 1  # a pre-vote never changes the term


def test_pre_vote_considered_once_the_leader_is_silent(f: Fixture) -> None:
    f.send(AppendEntriesRequest(1, B, 0, 0, (), 0, 1))
    f.clock.advance(TIMEOUT + 0.01)  # no heartbeat since
    f.lm.clear()
    req = RequestVoteRequest(2, C, 99, 1, pre_vote=True)
    f.send(req)
    assert f.lm.take() == [CheckVote(req, 1)]


def test_append_entries_with_stale_term_refused_with_current_term(f: Fixture) -> None:
    f.send(RequestVoteRequest(3, B, 0, 0, pre_vote=False))
    f.lm.clear()
    f.send(AppendEntriesRequest(2, C, 0, 0, (), 0, 9))
    assert f.transport.take() == [(C, AppendEntriesResponse(3, False, 0, A, 9, 2))]
    assert f.lm.told == []


def test_accepted_append_entries_goes_to_the_log_manager(f: Fixture) -> None:
    req = AppendEntriesRequest(2, B, 0, 0, (), 0, 1)
    f.send(req)
    assert f.lm.take() == [PersistTermVote(2, None), FollowerAppend(req, 2), Following(B, 2)]
    assert f.node.leader_id == B


def test_a_contact_handed_over_by_the_router_keeps_the_leader_alive_and_tells_no_one(
    f: Fixture,
) -> None:
    """Steady state: the LogManager has the request already; the Node only notes the contact,
    which keeps refusing pre-votes while the leader is heard."""
    f.send(AppendEntriesRequest(1, B, 0, 0, (), 0, 1))
    f.lm.clear()
    for n in range(3):  # heartbeats, each within the timeout of the last
        f.clock.advance(TIMEOUT * 0.6)
        f.send(LeaderContact(AppendEntriesRequest(1, B, 0, 0, (), 0, 2 + n)))
    assert f.lm.told == [] and f.transport.take() == []
    f.send(RequestVoteRequest(2, C, 99, 1, pre_vote=True))
    assert f.transport.take() == [(C, RequestVoteResponse(1, False, True, A, 2))]
    assert f.node.role is Role.FOLLOWER and f.node.term == 1


def test_a_contact_on_a_view_that_moved_on_is_refused_as_the_request_would_be(
    f: Fixture,
) -> None:
    f.send(AppendEntriesRequest(1, B, 0, 0, (), 0, 1))
    f.clock.advance(TIMEOUT + 0.01)  # B fell silent, and C campaigns
    f.send(RequestVoteRequest(3, C, 0, 0, pre_vote=False))  # term 3 since the Router looked
    f.transport.take()
    f.lm.clear()
    f.send(LeaderContact(AppendEntriesRequest(1, B, 0, 0, (), 0, 7)))
    assert f.transport.take() == [(B, AppendEntriesResponse(3, False, 0, A, 7, 1))]
    assert f.lm.told == [] and f.node.term == 3


def test_candidate_seeing_leader_of_its_term_becomes_follower(f: Fixture) -> None:
    f.harness.advance(FULL_TIMEOUT)
    f.send(RequestVoteResponse(0, True, True, B, 1))
    assert f.node.role is Role.CANDIDATE
    f.send(AppendEntriesRequest(1, C, 0, 0, (), 0, 1))
    assert f.node.role is Role.FOLLOWER and f.node.leader_id == C and f.node.term == 1


def test_leader_steps_down_on_higher_term(f: Fixture) -> None:
    f.elect()
    f.send(HigherTermSeen(5, B))
    assert f.node.role is Role.FOLLOWER and f.node.term == 5 and f.node.voted_for is None
    # Leadership of term 1 ends before term 5 is persisted: LogManager handles them in order.
    assert f.lm.take() == [StepDown(1), PersistTermVote(5, None)]
    assert f.replicators.stopped == [B, C]


def test_check_quorum_leader_without_contact_steps_down(f: Fixture) -> None:
    f.elect()
    f.harness.advance(0.95)  # past the 0.9 s lease, nobody answered
    assert f.node.role is Role.FOLLOWER and f.node.term == 1
    assert StepDown(1) in f.lm.told


def test_check_quorum_leader_hearing_a_majority_stays(f: Fixture) -> None:
    f.elect()
    for _ in range(10):
        f.harness.advance(0.2)
        f.send(PeerContact(B, 1, f.clock.now(), "REPLICATE"))
    assert f.node.role is Role.LEADER
    assert f.send(GetStatus()).replicators == {B: "REPLICATE"}


def test_a_leaders_status_has_each_followers_match_lag_and_last_contact(f: Fixture) -> None:
    f.elect()
    last = f.node.log_view.last_index
    f.harness.advance(0.2)
    contact = PeerContact(B, 1, f.clock.now() - 0.05, "REPLICATE", last, "replicate", 3)
    f.send(contact)
    followers = f.send(GetStatus()).followers
    assert followers[B] == {
        "match_index": last,
        "lag": 0,
        "last_contact_s": 0.05,
        "state": "replicate",
        "inflight": 3,
    }
    assert followers[C]["match_index"] == 0 and followers[C]["lag"] == last
    assert (followers[C]["state"], followers[C]["inflight"]) == ("probe", 0)
    assert followers[C]["last_contact_s"] == pytest.approx(0.2)  # since it became leader


def test_apply_on_follower_fails_with_leader_hint(f: Fixture) -> None:
    f.send(AppendEntriesRequest(1, B, 0, 0, (), 0, 1))
    future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
    f.send(Apply((b"x",), (future,)))
    with pytest.raises(NotLeaderError) as info:
        future.get(timeout=1)
    assert info.value.leader_hint == B


def test_apply_on_leader_appends_here_and_the_log_manager_only_persists(f: Fixture) -> None:
    """The leader's append runs on the Node's thread (actors/leader_log.py): the entries are
    in the LogView at once, the FSMCaller has their futures, the Replicators are told, and the
    LogManager is asked to write them (and grant them once durable)."""
    f.elect()
    future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
    f.send(Apply((b"x", b"y"), (future, future)))
    entries = command_entries(1, 1, (b"x", b"y"))
    assert f.node.log_view.entries(1, 2) == entries
    assert f.fsm.take() == [RegisterPending(1, (future, future))]
    assert f.lm.take() == [PersistLeaderEntries(1, entries)]
    assert f.replicators.mailboxes[B].take() == [LogAppended(2)]
    assert f.replicators.mailboxes[C].take() == [LogAppended(2)]


def test_apply_before_the_leader_log_is_ready_waits_for_it(f: Fixture) -> None:
    """Until LeaderLogReady the LogManager owns the log's tail (it appends the term's first
    entry): a proposal waits, then continues the log after that entry."""
    f.win()
    future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
    f.send(Apply((b"x",), (future,)))
    f.lm.clear()
    assert f.fsm.take() == []
    first = LogEntry(1, 1, EntryType.CONFIGURATION, f.node.conf.encode())
    f.node.log_view.append_unstable([first])  # as the LogManager does on BecomeLeader
    f.send(LeaderLogReady(1, 1))
    assert f.lm.take() == [PersistLeaderEntries(1, command_entries(2, 1, (b"x",)))]
    assert f.fsm.take() == [RegisterPending(2, (future,))]


def test_proposals_waiting_for_the_leader_log_fail_when_leadership_ends(f: Fixture) -> None:
    f.win()
    future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
    f.send(Apply((b"x",), (future,)))
    f.lm.clear()
    f.send(AppendEntriesRequest(2, C, 0, 0, (), 0, 1))  # a newer leader
    with pytest.raises(NotLeaderError):
        future.get(timeout=1)
    f.send(LeaderLogReady(1, 1))  # late, for the old term: nothing is appended
    assert not [m for m in f.lm.told if isinstance(m, PersistLeaderEntries)]
    assert f.node.log_view.last_index == 0


def test_a_leader_beyond_its_in_flight_bound_refuses_and_appends_nothing() -> None:
    f = Fixture(
        raft_options=RaftOptions(
            election_timeout=TIMEOUT, max_pending_entries=2, initial_election_advance=False
        )
    )
    f.elect()
    first, second = pykka.ThreadingFuture[Any](), pykka.ThreadingFuture[Any]()
    f.send(Apply((b"a", b"b"), (first, first)))
    f.send(Apply((b"c",), (second,)))
    with pytest.raises(OverloadedError):
        second.get(timeout=1)
    assert f.node.log_view.last_index == 2
    assert [len(m.entries) for m in f.lm.take()] == [2]
    f.node.log_view.applied_index = 2  # the FSMCaller applied both: room again
    f.send(Apply((b"c",), (second,)))
    assert f.lm.take() == [PersistLeaderEntries(1, command_entries(3, 1, (b"c",)))]


def test_fatal_error_enters_error_state_and_refuses_service(f: Fixture) -> None:
    """Supervision: the first FatalError from any actor moves the whole peer to ERROR at once:
    no more heartbeats (Replicators stopped), votes, elections or commands; the LogManager is
    told (it tells the FSMCaller, which fails what is pending); on_error is called once."""
    f.elect()
    f.send(FatalError("FSMCaller", "boom"))
    assert f.node.role is Role.ERROR
    assert f.replicators.stopped == [B, C]
    assert StepDown(1) in f.lm.told and EnterError("FSMCaller: boom") in f.lm.told
    assert f.errors == ["FSMCaller: boom"]
    future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
    f.send(Apply((b"x",), (future,)))
    with pytest.raises(NodeFailedError, match="boom") as info:
        future.get(timeout=1)
    assert info.value.outcome_unknown is False  # refused before it reached the log
    f.lm.clear()
    f.send(RequestVoteRequest(5, B, 9, 9, False))
    f.send(FatalError("LogManager", "second"))
    f.harness.advance(10 * FULL_TIMEOUT)
    assert f.lm.told == []  # an ERROR node never campaigns nor votes
    assert f.transport.take() == []
    assert f.errors == ["FSMCaller: boom"]  # the first reason, reported once
    assert f.send(GetStatus()).error == "FSMCaller: boom"


def test_a_crash_of_the_node_itself_enters_error(
    f: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception escaping one of the Node's own handlers does not stop the actor silently:
    the Node enters ERROR and keeps answering (status says why, commands are refused)."""

    def boom(node: Node, msg: PeerContact) -> None:
        raise RuntimeError("bug in a handler")

    f.elect()
    monkeypatch.setitem(Node._handlers, PeerContact, boom)
    f.send(PeerContact(B, 1, 0.0, "PROBE"))
    assert f.node.role is Role.ERROR and f.node.crashed
    assert "RuntimeError" in (f.send(GetStatus()).error or "")
    assert len(f.errors) == 1 and "bug in a handler" in f.errors[0]


def test_append_entries_from_a_non_member_is_refused_and_counted(f: Fixture) -> None:
    """Reproduced: AppendEntries(term=7, leader_id="evil:9") made a node follow evil:9, move to
    term 7 and commit an injected entry. A sender that is not a voter is refused before
    anything else: no term change, no leader, nothing to the LogManager, no answer."""
    entry = LogEntry(1, 7, EntryType.DATA, b"injected")
    f.send(AppendEntriesRequest(7, "evil:9", 0, 0, (entry,), 1, 1))
    assert (f.node.term, f.node.leader_id, f.node.role) == (0, None, Role.FOLLOWER)
    assert f.lm.told == [] and f.transport.take() == []
    f.send(AppendEntriesRequest(8, A, 0, 0, (), 0, 1))  # ourselves: no peer leads in our name
    assert f.node.term == 0 and f.lm.told == []
    assert f.send(GetStatus()).rejected == {"append_entries_from_non_member": 2}


def test_a_higher_term_is_adopted_only_from_a_member(f: Fixture) -> None:
    f.harness.advance(FULL_TIMEOUT)  # a pre-vote is running
    f.send(RequestVoteResponse(99, False, True, "evil:9", 1))
    f.send(RequestVoteRequest(99, "evil:9", 0, 0, False))
    assert f.node.term == 0
    assert f.send(GetStatus()).rejected == {
        "vote_request_from_non_member": 1,
        "vote_response_from_non_member": 1,
    }
    f.send(RequestVoteResponse(3, False, True, B, 1))  # a member's higher term counts
    assert f.node.term == 3


def test_a_node_at_the_largest_term_never_campaigns_past_it() -> None:
    """Terms are bounded (MAX_TERM) so that every term can be encoded and incremented; a node
    already there cannot start an election (its term + 1 could not be sent)."""
    f = Fixture(term=MAX_TERM)
    f.harness.advance(10 * FULL_TIMEOUT)
    assert f.node.term == MAX_TERM and f.node.role is Role.FOLLOWER
    assert f.lm.of_type(RequestVotes) == []


def test_an_empty_apply_is_a_no_op(f: Fixture) -> None:
    """Reproduced: apply_batch([]) on the leader raised IndexError in the LogManager."""
    f.elect()
    f.send(Apply((), ()))
    assert f.lm.told == []


def test_an_oversized_command_is_refused_definitely_and_the_rest_go_on() -> None:
    f = Fixture(
        raft_options=RaftOptions(
            election_timeout=TIMEOUT, max_command_bytes=10, initial_election_advance=False
        )
    )
    f.elect()
    small, large = pykka.ThreadingFuture[Any](), pykka.ThreadingFuture[Any]()
    f.send(Apply((b"x" * 10, b"x" * 11), (small, large)))
    with pytest.raises(CommandTooLargeError) as info:
        large.get(timeout=1)
    assert info.value.outcome_unknown is False
    assert f.lm.take() == [PersistLeaderEntries(1, command_entries(1, 1, (b"x" * 10,)))]
    assert f.send(GetStatus()).rejected == {"oversized_command": 1}


def test_at_start_a_follower_campaigns_after_two_heartbeats_and_the_random_part() -> None:
    """etcd's initial-election-tick-advance: a restarted cluster need not wait a whole
    election timeout more; two heartbeats first, for a live leader to make itself known."""
    f = Fixture(raft_options=RaftOptions(election_timeout=TIMEOUT, max_election_delay=0.0))
    settle = 2 * TIMEOUT / 10
    f.harness.advance(settle - 0.01)
    assert f.lm.told == []
    f.harness.advance(0.02)
    assert f.lm.take() == [RequestVotes(1, (B, C), pre_vote=True)]


def test_at_start_a_leader_heard_in_time_means_no_campaign() -> None:
    f = Fixture(raft_options=RaftOptions(election_timeout=TIMEOUT, max_election_delay=0.0))
    f.send(AppendEntriesRequest(1, B, 0, 0, (), 0, 1))  # the live leader's first heartbeat
    f.lm.clear()
    f.harness.advance(TIMEOUT - 0.01)  # the usual timeout runs from that contact
    assert not [m for m in f.lm.told if isinstance(m, RequestVotes)]


# -- metrics ----------------------------------------------------------------------------------


def test_a_won_campaign_counts_a_pre_vote_an_election_and_a_leader(f: Fixture) -> None:
    f.elect()
    assert counts(f.metrics.pre_votes) == {"started": 1, "won": 1, "lost": 0}
    assert counts(f.metrics.elections) == {"started": 1, "won": 1, "lost": 0}
    assert f.metrics.leader_changes.value() == 1


def test_a_vote_that_times_out_is_a_lost_election(f: Fixture) -> None:
    f.harness.advance(FULL_TIMEOUT)
    f.send(RequestVoteResponse(0, True, True, B, 1))
    f.harness.advance(FULL_TIMEOUT)
    assert f.node.role is Role.FOLLOWER
    assert counts(f.metrics.elections) == {"started": 1, "won": 0, "lost": 1}
    assert f.metrics.leader_changes.value() == 0


def test_a_pre_vote_ended_by_a_leader_is_lost_and_each_terms_leader_counted_once(
    f: Fixture,
) -> None:
    f.harness.advance(FULL_TIMEOUT)  # a pre-vote for term 1 starts
    for seq in (1, 2, 3):  # then B's heartbeats of term 1
        f.send(AppendEntriesRequest(1, B, 0, 0, (), 0, seq))
    assert counts(f.metrics.pre_votes) == {"started": 1, "won": 0, "lost": 1}
    assert f.metrics.leader_changes.value() == 1
    f.send(AppendEntriesRequest(2, C, 0, 0, (), 0, 4))  # C leads term 2
    f.send(AppendEntriesRequest(2, C, 0, 0, (), 0, 5))
    assert f.metrics.leader_changes.value() == 2


def test_proposals_refused_at_the_door_are_counted_by_outcome() -> None:
    f = Fixture(
        raft_options=RaftOptions(
            election_timeout=TIMEOUT, max_command_bytes=10, initial_election_advance=False
        )
    )
    f.send(Apply((b"x", b"y"), (pykka.ThreadingFuture(), pykka.ThreadingFuture())))
    f.send(Apply((b"x" * 11,), (pykka.ThreadingFuture(),)))
    f.elect()
    f.send(Apply((b"z",), (pykka.ThreadingFuture(),)))  # appended (actors/leader_log.py)
    f.send(FatalError("FSMCaller", "boom"))
    f.send(Apply((b"z",), (pykka.ThreadingFuture(),)))
    f.harness.stop()
    f.send(Apply((b"z",), (pykka.ThreadingFuture(),)))
    assert counts(f.metrics.proposals) == {
        "appended": 1,
        "overloaded": 0,
        "not_leader": 2,
        "too_large": 1,
        "failed": 1,
        "stopped": 1,
        "transferring": 0,  # tests/unit/actors/test_node_transfer.py
    }


# -- reads (actors/read_only.py) ---------------------------------------------------------------


def test_a_real_vote_is_refused_too_while_a_live_leader_is_heard(f: Fixture) -> None:
    """§4.2.3: not even a higher term moves a voter that heard from its leader within the
    election timeout; without this a lease could overlap a new leader."""
    f.send(AppendEntriesRequest(1, B, 0, 0, (), 0, 1))
    f.lm.clear()
    f.send(RequestVoteRequest(2, C, 99, 1, pre_vote=False))
    assert f.transport.take() == [(C, RequestVoteResponse(1, False, False, A, 2))]
    assert f.lm.told == [] and f.node.term == 1


def read(f: Fixture, lease: bool = False) -> pykka.Future[Any]:
    reply: pykka.Future[Any] = pykka.ThreadingFuture()
    f.send(ReadIndex(reply, lease))
    return reply


def test_a_follower_without_a_leader_refuses_reads(f: Fixture) -> None:
    with pytest.raises(NotLeaderError):
        read(f).get(timeout=0)


def test_a_follower_asks_its_leader_once_for_a_batch_of_reads(f: Fixture) -> None:
    f.send(AppendEntriesRequest(1, B, 0, 0, (), 0, 1))
    f.transport.take()
    first = read(f)
    assert f.transport.take() == [(B, ReadIndexRequest(1, A, 1))]
    second, third = read(f), read(f, lease=True)  # one request out at a time: they wait
    assert f.transport.take() == []
    f.send(ReadIndexResponse(1, B, 1, True, 9))
    assert first.get(timeout=0) == 9
    assert is_pending(second) and is_pending(third)
    assert f.transport.take() == [(B, ReadIndexRequest(1, A, 2))]  # one for both
    f.send(ReadIndexResponse(1, B, 2, True, 11))
    assert (second.get(timeout=0), third.get(timeout=0)) == (11, 11)
    late = read(f)
    f.harness.advance(TIMEOUT / 2 + 0.01)  # no answer within the RPC timeout
    with pytest.raises(LeadershipUnconfirmedError):
        late.get(timeout=0)


def test_reads_waiting_on_a_follower_that_lost_its_leader_fail_instead_of_hanging(
    f: Fixture,
) -> None:
    f.send(AppendEntriesRequest(1, B, 0, 0, (), 0, 1))
    first, second = read(f), read(f)  # the first asked B; the second waits for the answer
    f.send(HigherTermSeen(2, C))  # a new term: no leader known
    assert f.node.leader_id is None
    f.send(ReadIndexResponse(1, B, 1, True, 4))
    assert first.get(timeout=0) == 4
    with pytest.raises(NotLeaderError):  # retryable, and at once: nobody is asked for it
        second.get(timeout=0)


def test_a_leader_answers_a_followers_read_index_after_its_round(f: Fixture) -> None:
    f.elect()
    f.node.log_view.committed_index = 5
    f.send(ReadIndexRequest(1, B, 42))
    assert f.transport.take() == []  # not before a quorum confirmed the leadership
    f.send(LeadershipAck(C, 1, 1))
    assert f.transport.take() == [(B, ReadIndexResponse(1, A, 42, True, 5))]
    f.send(ReadIndexRequest(1, "x:9", 43))  # a stranger learns nothing
    assert f.transport.take() == []
    assert f.node.rejections.as_dict()["read_index_from_non_member"] == 1


def test_a_followers_read_index_covers_writes_applied_before_the_log_view_shows_them(
    f: Fixture,
) -> None:
    """Regression (found by the chaos runner: a follower read missed an acknowledged put). The
    BallotBox tells the FSMCaller of a commit before the LogManager publishes it in the
    LogView, so the leader may have applied (and acknowledged) index 9 while the LogView still
    says 5. A follower told to read at 5 would miss it."""
    f.elect()
    f.node.log_view.committed_index = 5
    f.node.log_view.applied_index = 9
    f.send(ReadIndexRequest(1, B, 42))
    f.send(LeadershipAck(C, 1, 1))
    assert f.transport.take() == [(B, ReadIndexResponse(1, A, 42, True, 9))]


def test_a_leader_answers_reads_after_a_quorum_confirms_one_round(f: Fixture) -> None:
    f.elect()  # its term's first entry is at 1
    f.node.log_view.committed_index = 7
    first, second = read(f), read(f)
    confirms = {p: m.of_type(ConfirmLeadership) for p, m in f.replicators.mailboxes.items()}
    assert confirms == {B: [ConfirmLeadership(1, 1)], C: [ConfirmLeadership(1, 1)]}
    assert is_pending(first)
    f.send(LeadershipAck(C, 1, 1))
    assert first.get(timeout=0) == 7
    # The second arrived during round 1: it shares round 2, which starts now.
    assert is_pending(second)
    assert f.replicators.mailboxes[B].of_type(ConfirmLeadership)[-1] == ConfirmLeadership(1, 2)
    f.send(LeadershipAck(B, 1, 2))
    assert second.get(timeout=0) == 7


def test_a_round_without_a_quorum_in_time_fails_its_reads(f: Fixture) -> None:
    f.elect()
    reply = read(f)
    f.harness.advance(TIMEOUT / 2 + 0.01)  # the replicators' RPC timeout
    assert f.node.role is Role.LEADER
    with pytest.raises(LeadershipUnconfirmedError):
        reply.get(timeout=0)


def test_stepping_down_fails_the_reads_waiting(f: Fixture) -> None:
    f.elect()
    reply = read(f)
    f.send(RequestVoteResponse(5, False, False, B, 1))  # a higher term: step down
    assert f.node.role is Role.FOLLOWER
    with pytest.raises(NotLeaderError):
        reply.get(timeout=0)


def test_a_lease_read_is_served_at_once_while_the_lease_holds_and_not_after(f: Fixture) -> None:
    f.elect()
    f.node.log_view.committed_index = 3
    f.send(PeerContact(B, 1, f.clock.now(), "REPLICATE", 3, "replicate", 0, f.clock.now()))
    assert read(f, lease=True).get(timeout=0) == 3  # no round
    assert all(not m.of_type(ConfirmLeadership) for m in f.replicators.mailboxes.values())
    f.clock.advance(0.9 * TIMEOUT)  # the lease (election timeout x 0.9) is over
    late = read(f, lease=True)
    assert is_pending(late)  # it fell back to a read-index round
    assert f.replicators.mailboxes[B].of_type(ConfirmLeadership) == [ConfirmLeadership(1, 1)]


def test_whom_it_follows_is_told_once_per_change_and_published_for_other_threads(
    f: Fixture,
) -> None:
    def published() -> tuple[str, int, str | None]:
        now = f.node.leader_watch.current
        return (now.role, now.term, now.leader)

    assert published() == ("follower", 0, None)
    for _ in range(3):  # every heartbeat of the same leader: nothing new to tell
        f.send(AppendEntriesRequest(2, B, 0, 0, (), 0, 1))
    assert [m for m in f.lm.told if isinstance(m, Following)] == [Following(B, 2)]
    assert published() == ("follower", 2, B)
    f.lm.clear()
    f.send(AppendEntriesRequest(3, C, 0, 0, (), 0, 1))  # a new term's leader
    assert f.lm.take()[-1] == Following(C, 3) and published() == ("follower", 3, C)
    f.harness.advance(FULL_TIMEOUT)  # C went silent: a pre-vote, following no one
    assert [m for m in f.lm.told if isinstance(m, Following)] == [Following(None, 3)]
    assert published() == ("follower", 3, None)


def test_a_leader_is_published_and_follows_no_one(f: Fixture) -> None:
    f.elect()
    now = f.node.leader_watch.current
    assert (now.role, now.term, now.leader) == ("leader", 1, A)
    assert [m for m in f.lm.told if isinstance(m, Following)] == []  # it never followed


def test_shutdown_is_published(f: Fixture) -> None:
    f.harness.stop()
    assert f.node.leader_watch.current.role == "shutdown"
