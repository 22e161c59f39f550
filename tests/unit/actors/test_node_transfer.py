"""Node and leadership transfer (actors/transfer.py), alone with recording collaborators: the
leader stops taking proposals, sends TimeoutNow only once the target holds its whole log, drops
its lease, completes on stepping down and gives up after an election timeout; the target
campaigns at once without a pre-vote; voters grant a transfer's vote despite a live leader."""

from __future__ import annotations

from typing import Any

import pykka
import pytest

from actors.configuration import Configuration
from actors.errors import (
    ChangeInProgressError,
    LeaderTransferringError,
    NotLeaderError,
    OverloadedError,
    TransferLeadershipError,
    UnknownPeerError,
)
from actors.messages import (
    Apply,
    CheckVote,
    Following,
    GetStatus,
    HigherTermSeen,
    PeerContact,
    PersistLeaderEntries,
    PersistTermVote,
    ReadIndex,
    RequestVotes,
    TransferLeadership,
)
from actors.node import Role
from actors.testing import is_pending
from actors.transfer import pick_target
from tests.unit.actors.test_node import TIMEOUT, A, B, C, Fixture
from transport.rpc import AppendEntriesRequest, RequestVoteRequest, TimeoutNowRequest

LAST = 5  # the leader's last log index in these tests


@pytest.fixture
def f() -> Fixture:
    return Fixture()


def _elect(f: Fixture) -> None:
    """Leader of term 1 with LAST entries in its log (the recording LogManager appends none)."""
    f.elect()
    f.node.log_view.last_index = LAST


def _future() -> pykka.ThreadingFuture[Any]:
    return pykka.ThreadingFuture()


def _error(future: pykka.ThreadingFuture[Any]) -> BaseException:
    with pytest.raises(Exception) as info:
        future.get(timeout=0)
    return info.value


def _contact(f: Fixture, peer: str, match: int) -> PeerContact:
    return PeerContact(peer, 1, f.clock.now(), "REPLICATE", match, "replicate", 0, f.clock.now())


def _timeout_nows(f: Fixture) -> list[tuple[str, Any]]:
    return [(to, m) for to, m in f.transport.take() if isinstance(m, TimeoutNowRequest)]


def test_transfer_waits_for_the_target_to_hold_the_whole_log_then_sends_timeout_now(
    f: Fixture,
) -> None:
    _elect(f)
    f.send(_contact(f, C, LAST - 1))
    reply = _future()
    f.send(TransferLeadership(C, reply))
    assert _timeout_nows(f) == []  # C lacks the last entry: not yet
    f.send(_contact(f, B, LAST))
    assert _timeout_nows(f) == []  # B's catching up is no matter
    f.send(_contact(f, C, LAST))
    assert _timeout_nows(f) == [(C, TimeoutNowRequest(1, A))]
    f.send(_contact(f, C, LAST))
    assert _timeout_nows(f) == []  # once
    assert is_pending(reply)
    # The target's campaign reaches us: we step down, and the transfer is done.
    f.send(HigherTermSeen(2, C))
    assert f.node.role is Role.FOLLOWER
    assert reply.get(timeout=0) == C


def test_a_transferring_leader_takes_no_proposals_and_no_lease_reads(f: Fixture) -> None:
    _elect(f)
    f.send(_contact(f, B, LAST))
    f.send(TransferLeadership(B, _future()))
    assert _timeout_nows(f)
    proposal = _future()
    f.lm.clear()
    f.send(Apply((b"x",), (proposal,)))
    error = _error(proposal)
    assert isinstance(error, LeaderTransferringError) and isinstance(error, OverloadedError)
    assert not any(isinstance(m, PersistLeaderEntries) for m in f.lm.told)
    assert f.node._reads.lease_valid(f.clock.now(), 10.0) is False  # revoked for the term
    read = _future()
    f.send(ReadIndex(read, lease=True, on_follower=False))
    assert is_pending(read)  # a heartbeat round instead of the lease


def test_a_transfer_that_does_not_finish_in_an_election_timeout_fails_and_leads_on(
    f: Fixture,
) -> None:
    _elect(f)
    reply = _future()
    f.send(TransferLeadership(B, reply))
    for _ in range(6):  # B answers (so the lease holds) but never catches up
        f.harness.advance(TIMEOUT / 5)
        f.send(_contact(f, B, LAST - 1))
    assert isinstance(_error(reply), TransferLeadershipError)
    assert f.node.role is Role.LEADER
    proposal = _future()
    f.lm.clear()
    f.send(Apply((b"x",), (proposal,)))
    assert [type(m) for m in f.lm.told] == [PersistLeaderEntries]  # proposals resume


def test_transfer_refusals_busy_unknown_not_leader_and_self(f: Fixture) -> None:
    follower_reply = _future()
    f.send(TransferLeadership(B, follower_reply))
    assert isinstance(_error(follower_reply), NotLeaderError)
    _elect(f)
    unknown = _future()
    f.send(TransferLeadership("z:9", unknown))
    assert isinstance(_error(unknown), UnknownPeerError)
    itself = _future()
    f.send(TransferLeadership(A, itself))
    assert itself.get(timeout=0) == A and f.node.role is Role.LEADER
    first, second = _future(), _future()
    f.send(TransferLeadership(B, first))
    f.send(TransferLeadership(C, second))
    assert isinstance(_error(second), ChangeInProgressError) and is_pending(first)


def test_stepping_down_before_the_handover_fails_the_transfer(f: Fixture) -> None:
    _elect(f)
    reply = _future()
    f.send(TransferLeadership(B, reply))  # B has not caught up: no TimeoutNow sent
    f.send(HigherTermSeen(3, C))
    assert isinstance(_error(reply), TransferLeadershipError)


def test_timeout_now_from_the_leader_starts_an_election_without_pre_vote(f: Fixture) -> None:
    f.send(AppendEntriesRequest(1, B, 0, 0, (), 0, 1))
    f.lm.clear()
    f.send(TimeoutNowRequest(1, B))
    assert f.node.role is Role.CANDIDATE and f.node.term == 2
    assert f.lm.take() == [
        RequestVotes(2, (B, C), pre_vote=False, transfer=True),
        Following(None, 2),  # a candidate follows no one
    ]


@pytest.mark.parametrize(
    "request_",
    [
        TimeoutNowRequest(1, C),  # not our leader
        TimeoutNowRequest(2, B),  # not our term
        TimeoutNowRequest(1, "z:9"),  # not a member at all
    ],
)
def test_timeout_now_from_anyone_but_the_current_leader_is_ignored(
    f: Fixture, request_: TimeoutNowRequest
) -> None:
    f.send(AppendEntriesRequest(1, B, 0, 0, (), 0, 1))
    f.lm.clear()
    f.send(request_)
    assert f.node.role is Role.FOLLOWER and f.node.term == 1 and f.lm.take() == []
    if request_.leader_id == "z:9":
        assert f.send(GetStatus()).rejected == {"timeout_now_from_non_member": 1}


def test_voters_grant_a_transfer_vote_despite_a_live_leader(f: Fixture) -> None:
    f.send(AppendEntriesRequest(1, B, 0, 0, (), 0, 1))  # B leads, heard just now
    f.lm.clear()
    plain = RequestVoteRequest(2, C, 10, 1, pre_vote=False)
    f.send(plain)
    assert f.lm.take() == []  # refused: a live leader
    transfer = RequestVoteRequest(2, C, 10, 1, pre_vote=False, transfer=True)
    f.send(transfer)
    assert f.lm.take() == [PersistTermVote(2, None), CheckVote(transfer, 2), Following(None, 2)]


def test_pick_target_prefers_the_most_up_to_date_voter() -> None:
    conf = Configuration.of((A, B, C))
    assert pick_target(A, conf, None, {B: 5, C: 9}) == C
    assert pick_target(A, conf, None, {B: 9, C: 9}) == B  # ties: the smallest id
    assert pick_target(A, conf, None, {}) == B
    assert pick_target(A, conf, B, {C: 9}) == B
    with pytest.raises(UnknownPeerError):
        pick_target(A, conf, A, {})
    with pytest.raises(UnknownPeerError, match="only voter"):
        pick_target(A, Configuration.of((A,)), None, {})
