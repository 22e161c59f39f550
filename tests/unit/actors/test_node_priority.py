"""Priority election (actors/priority.py) in the Node, alone with recording collaborators: a
peer of priority 0 never campaigns; a candidate with a pre-vote quorum waits a grace for every
voter's answer, yields to a higher priority, and after giving a round up campaigns anyway; a
disabled priority changes nothing."""

from __future__ import annotations

from actors.messages import RequestVotes
from actors.node import Role
from actors.options import RaftOptions
from actors.priority import PriorityElection
from tests.unit.actors.test_node import FULL_TIMEOUT, TIMEOUT, B, C, Fixture
from transport.rpc import AppendEntriesRequest, RequestVoteResponse


def _fixture(priority: int) -> Fixture:
    raft = RaftOptions(TIMEOUT, initial_election_advance=False, election_priority=priority)
    return Fixture(raft_options=raft)


def _pre_vote(f: Fixture) -> int:
    """Let the election timer fire; the pre-vote's term."""
    f.lm.clear()
    f.harness.advance(FULL_TIMEOUT)
    [request] = [m for m in f.lm.take() if isinstance(m, RequestVotes) and m.pre_vote]
    return request.term


def _answer(f: Fixture, voter: str, term: int, priority: int, granted: bool = True) -> None:
    f.send(RequestVoteResponse(f.node.term, granted, True, voter, term, priority))


def _elections(f: Fixture) -> list[RequestVotes]:
    return [m for m in f.lm.told if isinstance(m, RequestVotes) and not m.pre_vote]


def test_priority_zero_never_campaigns_but_a_disabled_one_does() -> None:
    never = _fixture(0)
    never.harness.advance(10 * FULL_TIMEOUT)
    assert not [m for m in never.lm.told if isinstance(m, RequestVotes)]
    plain = _fixture(-1)
    term = _pre_vote(plain)
    _answer(plain, B, term, 100)  # a disabled peer never yields
    assert _elections(plain) and plain.node.role is Role.CANDIDATE


def test_a_candidate_yields_to_a_higher_priority_voter() -> None:
    f = _fixture(5)
    term = _pre_vote(f)
    _answer(f, B, term, 1)
    assert not _elections(f)  # a quorum, but C may have a higher priority: wait for it
    _answer(f, C, term, 9, granted=False)
    assert not _elections(f) and f.node.role is Role.FOLLOWER  # yielded to C
    # C did not win in time (its log may be behind): the next round decays past it.
    term = _pre_vote(f)
    _answer(f, B, term, 1)
    _answer(f, C, term, 9, granted=False)
    assert _elections(f) and f.node.role is Role.CANDIDATE


def test_a_voter_that_does_not_answer_costs_only_the_grace() -> None:
    f = _fixture(5)
    term = _pre_vote(f)
    _answer(f, B, term, 1)
    assert not _elections(f)
    f.harness.advance(2 * f.node.raft_options.heartbeat_interval + 0.001)
    assert _elections(f)  # C is down: B's grant and ours are a quorum


def test_the_highest_priority_campaigns_at_once_and_a_leader_resets_the_decay() -> None:
    f = _fixture(9)
    term = _pre_vote(f)
    _answer(f, B, term, 1)
    _answer(f, C, term, 5)
    assert _elections(f)
    low = _fixture(1)
    term = _pre_vote(low)
    _answer(low, B, term, 30)
    _answer(low, C, term, 2)
    assert low.node._priority.decay == 10
    low.send(AppendEntriesRequest(1, B, 0, 0, (), 0, 1))
    assert low.node._priority.decay == 0


def test_decay_is_a_fifth_of_the_priority_heard_or_ten() -> None:
    p = PriorityElection(1)
    p.heard_from(100)
    assert p.should_yield()
    p.yielded()
    assert p.decay == 20 and p.should_yield()
    for _ in range(4):
        p.yielded()
    assert not p.should_yield()
