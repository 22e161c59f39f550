"""Node and membership changes (actors/membership.py), alone with recording collaborators.

A leader appends its configuration entries itself (actors/leader_log.py): `_appended` finds the
one it appended, with the future it registered with the FSMCaller, and `_commit` plays the
FSMCaller's part, completing that future."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pykka
import pytest

from actors.configuration import Configuration
from actors.errors import (
    CatchUpError,
    ChangeInProgressError,
    LeadershipLostError,
    MembershipChangeError,
    NotLeaderError,
    UnknownPeerError,
)
from actors.membership import FIRST_ANSWER_PATIENCE, ChangeRequest, Op
from actors.messages import (
    Apply,
    ChangeMembership,
    CheckVote,
    ConfigurationChanged,
    GetStatus,
    HigherTermSeen,
    LogAppended,
    PeerContact,
    PersistLeaderEntries,
    RegisterPending,
    RequestVotes,
    SetConfiguration,
    TransferLeadership,
)
from actors.node import Role
from actors.options import RaftOptions
from actors.testing import is_pending
from storage.entry import EntryType, LogEntry
from tests.unit.actors.test_node import FULL_TIMEOUT, TIMEOUT, A, B, C, Fixture
from transport.rpc import AppendEntriesRequest, RequestVoteRequest, TimeoutNowRequest

D, E = "d:4", "e:5"
LAST = 5  # the leader's last log index before any configuration entry


@pytest.fixture
def f() -> Fixture:
    return Fixture()


def _leader(f: Fixture) -> None:
    """Leader of term 1, its first entry committed, LAST entries in its log."""
    f.elect()
    f.node.log_view.append_unstable([LogEntry(i, 1, EntryType.DATA, b"x") for i in (1, 2, 3, 4, 5)])
    _settle(f)


def _settle(f: Fixture) -> None:
    """Complete the term's first entry (BecomeLeader's future) as the FSMCaller would."""
    f.become.applied.set(None)
    f.harness.run()


def _change(f: Fixture, op: Op, *peers: str) -> pykka.ThreadingFuture[Any]:
    reply: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
    f.send(ChangeMembership(ChangeRequest.of(op, peers), reply))
    return reply


def _contact(f: Fixture, peer: str, match: int, replication: str = "replicate") -> None:
    now = f.clock.now()
    f.send(PeerContact(peer, f.node.term, now, "R", match, replication, 0, now))


def _quorum_heard(f: Fixture, seconds: float) -> None:
    """Let `seconds` pass while B and C answer every heartbeat (the lease holds)."""
    step = f.node.raft_options.heartbeat_interval
    for _ in range(round(seconds / step)):
        f.harness.advance(step)
        _contact(f, B, LAST)
        _contact(f, C, LAST)


@dataclass
class _ConfAppend:
    term: int
    conf: Configuration
    applied: Any  # the future the FSMCaller completes once the entry is applied


def _conf_appends(f: Fixture) -> list[PersistLeaderEntries]:
    return [m for m in f.lm.told if isinstance(m, PersistLeaderEntries)]


def _appended(f: Fixture) -> _ConfAppend:
    """The one configuration entry the Node appended to its log (in force now), announced to
    the BallotBox, its future registered with the FSMCaller, and handed to the LogManager."""
    [persist] = _conf_appends(f)
    f.lm.clear()
    [entry] = persist.entries
    assert entry.type == EntryType.CONFIGURATION
    assert f.node.log_view.last_index == entry.index
    conf = Configuration.decode(entry.data)
    assert f.bb.take() == [SetConfiguration(persist.term, conf)]
    [register] = [m for m in f.fsm.take() if isinstance(m, RegisterPending)]
    assert register.first_index == entry.index
    [applied] = register.futures
    return _ConfAppend(persist.term, conf, applied)


def _commit(f: Fixture, append: _ConfAppend, error: BaseException | None = None) -> None:
    if error is None:
        append.applied.set(None)
    else:
        append.applied.set_exception(error)
    f.harness.run()


def _error(future: pykka.ThreadingFuture[Any]) -> BaseException:
    with pytest.raises(Exception) as info:
        future.get(timeout=0)
    return info.value


def _replicating(f: Fixture) -> list[str]:
    return sorted(f.node._replicating)


# -- the whole way ----------------------------------------------------------------------------


def test_adding_a_peer_catches_it_up_then_goes_joint_then_stable() -> None:
    f = Fixture(raft_options=RaftOptions(TIMEOUT, initial_election_advance=False, catchup_margin=2))
    _leader(f)
    reply = _change(f, Op.ADD_PEER, D)
    assert _replicating(f) == [B, C, D]  # D is replicated to at once, counted for nothing
    assert D in f.transport.peers  # and reachable: the transport was told its id
    assert f.node.conf == Configuration.of([A, B, C])  # nothing in force yet
    assert not _conf_appends(f)
    _contact(f, D, LAST - 3)
    assert not _conf_appends(f)  # not close enough
    _contact(f, D, LAST)
    joint = _appended(f)
    assert joint.conf == Configuration.of([A, B, C, D], [A, B, C])
    assert f.send(GetStatus()).membership_change == "joint"
    _commit(f, joint)
    stable = _appended(f)
    assert stable.conf == Configuration.of([A, B, C, D])
    assert is_pending(reply)
    _commit(f, stable)
    assert reply.get(timeout=0) == Configuration.of([A, B, C, D])
    status = f.send(GetStatus())
    assert (status.conf, status.membership_change) == ([A, B, C, D], None)
    assert f.node.role is Role.LEADER


def test_removing_a_peer_stops_its_replicator_only_once_c_new_is_committed(f: Fixture) -> None:
    _leader(f)
    reply = _change(f, Op.REMOVE_PEER, C)
    joint = _appended(f)  # nobody to catch up: joint at once
    assert joint.conf == Configuration.of([A, B], [A, B, C])
    _commit(f, joint)
    stable = _appended(f)
    assert _replicating(f) == [B, C]  # C still gets C_new
    f.lm.clear()
    _commit(f, stable)
    assert reply.get(timeout=0) == Configuration.of([A, B])
    f.send(Apply((b"y",), (pykka.ThreadingFuture(),)))
    assert LogAppended(f.node.log_view.last_index) not in f.replicators.mailboxes[C].told
    assert _replicating(f) == [B]
    assert f.replicators.stopped == [C]


def test_a_removed_leader_hands_over_to_the_most_up_to_date_voter_and_steps_down(
    f: Fixture,
) -> None:
    _leader(f)
    _contact(f, B, 3)
    _contact(f, C, LAST)
    reply = _change(f, Op.REMOVE_PEER, A)
    _commit(f, _appended(f))
    stable = _appended(f)
    assert f.node.role is Role.LEADER  # leads C_new (without counting itself) until committed
    f.transport.take()
    _commit(f, stable)
    assert reply.get(timeout=0) == Configuration.of([B, C])
    sent = [(to, m) for to, m in f.transport.take() if isinstance(m, TimeoutNowRequest)]
    assert sent == [(C, TimeoutNowRequest(1, A))]
    assert f.node.role is Role.FOLLOWER
    # Not a voter any more: it never campaigns, however long it hears nothing.
    f.lm.clear()
    f.harness.advance(5 * FULL_TIMEOUT)
    assert not [m for m in f.lm.told if isinstance(m, RequestVotes)]


def test_learners_are_replicated_to_and_a_learner_change_needs_no_joint_stage(
    f: Fixture,
) -> None:
    _leader(f)
    reply = _change(f, Op.ADD_LEARNERS, D, E)
    stable = _appended(f)
    assert stable.conf == Configuration.of([A, B, C], (), [D, E])
    assert _replicating(f) == [B, C, D, E]
    _commit(f, stable)
    assert reply.get(timeout=0).learners == frozenset({D, E})
    # Promotion catches the learner up like any new voter.
    promote = _change(f, Op.PROMOTE_LEARNER, D)
    _contact(f, D, LAST + 1)
    joint = _appended(f)
    assert joint.conf == Configuration.of([A, B, C, D], [A, B, C], [E])
    _commit(f, joint)
    _commit(f, _appended(f))
    assert promote.get(timeout=0) == Configuration.of([A, B, C, D], (), [E])


# -- refusals and failures --------------------------------------------------------------------


def test_a_peer_that_makes_no_progress_fails_the_change_and_nothing_changes(f: Fixture) -> None:
    _leader(f)
    reply = _change(f, Op.ADD_PEER, D)
    assert _replicating(f) == [B, C, D]
    _quorum_heard(f, FIRST_ANSWER_PATIENCE - 0.5)
    assert is_pending(reply)  # a first answer may take a reconnect or two
    _quorum_heard(f, 1.5)
    assert isinstance(_error(reply), CatchUpError)
    assert _replicating(f) == [B, C]
    assert f.node.conf == Configuration.of([A, B, C])
    assert not _conf_appends(f)


def test_a_peer_that_answered_and_then_stalls_fails_after_an_election_timeout() -> None:
    f = Fixture(raft_options=RaftOptions(TIMEOUT, initial_election_advance=False, catchup_margin=2))
    _leader(f)
    reply = _change(f, Op.ADD_PEER, D)
    _contact(f, D, 1)  # it answered: reachable, far behind
    _quorum_heard(f, TIMEOUT * 0.9)
    assert is_pending(reply)
    _quorum_heard(f, TIMEOUT * 0.9)
    assert isinstance(_error(reply), CatchUpError)
    assert _replicating(f) == [B, C]


def test_a_peer_that_keeps_progressing_is_given_more_time(f: Fixture) -> None:
    raft = f.node.raft_options
    _leader(f)
    f.node.log_view.append_unstable(
        [LogEntry(i, 1, EntryType.DATA, b"x") for i in range(LAST + 1, 3 * raft.catchup_margin)]
    )
    reply = _change(f, Op.ADD_PEER, D)
    for step in range(1, 6):  # five election timeouts, a little progress in each
        _quorum_heard(f, TIMEOUT * 0.9)
        _contact(f, D, step)
    assert is_pending(reply)
    # Installing a snapshot: no match index yet, but answers keep it alive.
    for _ in range(3):
        _quorum_heard(f, TIMEOUT * 0.9)
        _contact(f, D, 5, "snapshot")
    assert is_pending(reply)
    _contact(f, D, f.node.log_view.last_index)
    assert _appended(f).conf.is_joint


def test_one_change_at_a_time_and_not_before_the_terms_first_entry_commits(
    f: Fixture,
) -> None:
    f.elect()
    first = _change(f, Op.REMOVE_PEER, C)  # waits for the term's first entry
    second = _change(f, Op.ADD_PEER, D)
    assert isinstance(_error(second), ChangeInProgressError)
    assert not _conf_appends(f)
    _settle(f)
    assert _appended(f).conf == Configuration.of([A, B], [A, B, C])
    busy = _change(f, Op.ADD_PEER, D)
    assert isinstance(_error(busy), ChangeInProgressError)
    transfer: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
    f.send(TransferLeadership(B, transfer))
    assert isinstance(_error(transfer), ChangeInProgressError)
    assert is_pending(first)


def test_bad_requests_fail_definitely_and_a_change_to_what_is_completes_at_once(
    f: Fixture,
) -> None:
    _leader(f)
    assert isinstance(_error(_change(f, Op.REMOVE_PEER, D)), UnknownPeerError)
    assert isinstance(_error(_change(f, Op.PROMOTE_LEARNER, B)), UnknownPeerError)
    assert isinstance(_error(_change(f, Op.ADD_LEARNERS, B)), MembershipChangeError)
    assert _change(f, Op.ADD_PEER, B).get(timeout=0) == Configuration.of([A, B, C])
    assert not _conf_appends(f)
    with pytest.raises(MembershipChangeError):
        ChangeRequest.of(Op.ADD_PEER, [])
    with pytest.raises(MembershipChangeError):
        ChangeRequest.of(Op.REMOVE_PEER, [""])


def test_changing_every_voter_at_once_goes_through_one_joint_configuration(
    f: Fixture,
) -> None:
    _leader(f)
    reply = _change(f, Op.CHANGE_PEERS, C, D, E)
    _contact(f, D, LAST)
    assert not _conf_appends(f)  # E still behind
    _contact(f, E, LAST)
    joint = _appended(f)
    assert joint.conf == Configuration.of([C, D, E], [A, B, C])
    _commit(f, joint)
    _commit(f, _appended(f))
    assert reply.get(timeout=0) == Configuration.of([C, D, E])
    assert f.node.conf == Configuration.of([C, D, E])
    assert f.node.role is Role.FOLLOWER  # A is no voter of C_new: it handed over


def test_a_follower_refuses_a_change_with_its_leaders_hint(f: Fixture) -> None:
    f.send(AppendEntriesRequest(1, B, 0, 0, (), 0, 1))
    error = _error(_change(f, Op.ADD_PEER, D))
    assert isinstance(error, NotLeaderError) and error.leader_hint == B


def test_a_change_waiting_for_the_terms_first_entry_fails_if_leadership_ends(
    f: Fixture,
) -> None:
    f.elect()
    waiting = _change(f, Op.REMOVE_PEER, C)
    f.send(HigherTermSeen(2, B))
    assert isinstance(_error(waiting), NotLeaderError)


def test_stepping_down_mid_change_fails_it_with_an_unknown_outcome(f: Fixture) -> None:
    _leader(f)
    reply = _change(f, Op.REMOVE_PEER, C)
    _appended(f)
    f.send(HigherTermSeen(2, B))
    error = _error(reply)
    assert isinstance(error, LeadershipLostError) and error.outcome_unknown


# -- a new leader, followers ------------------------------------------------------------------


def test_a_new_leader_rolls_a_half_done_joint_change_forward(f: Fixture) -> None:
    joint = Configuration.of([A, B, D], [A, B, C])
    f.node.log_view.append_unstable([LogEntry(1, 1, EntryType.CONFIGURATION, joint.encode())])
    f.elect()  # B's vote: a majority of {A,B,C} and of {A,B,D}
    assert f.node.role is Role.LEADER
    assert _replicating(f) == [B, C, D]
    _settle(f)  # the term's first entry (carrying the joint configuration) commits
    stable = _appended(f)
    assert stable.conf == Configuration.of([A, B, D])
    _commit(f, stable)
    assert _replicating(f) == [B, D]
    assert f.send(GetStatus()).membership_change is None


def test_a_follower_follows_the_configuration_of_its_log(f: Fixture) -> None:
    view = f.node.log_view
    conf = Configuration.of([B, C, D])  # A was removed
    view.append_unstable([LogEntry(1, 1, EntryType.CONFIGURATION, conf.encode())])
    f.send(ConfigurationChanged())
    assert D in f.transport.peers
    f.lm.clear()
    f.harness.advance(5 * FULL_TIMEOUT)
    assert not [m for m in f.lm.told if isinstance(m, RequestVotes)]  # no voter: no campaign
    # D leads now: a voter of the configuration in force, so it is followed.
    f.send(AppendEntriesRequest(2, D, 1, 1, (), 1, 1))
    assert f.node.leader_id == D
    assert f.send(GetStatus()).rejected == {}


def test_a_joining_peer_follows_only_its_contacts_until_it_has_a_configuration() -> None:
    f = Fixture(join=True)
    assert f.node.conf.is_empty
    f.send(AppendEntriesRequest(1, "x:9", 0, 0, (), 0, 1))  # a stranger
    assert f.node.leader_id is None
    assert f.send(GetStatus()).rejected == {"append_entries_from_non_member": 1}
    f.send(AppendEntriesRequest(1, B, 0, 0, (), 0, 1))  # a contact (--peers)
    assert f.node.leader_id == B
    f.lm.clear()
    f.harness.advance(5 * FULL_TIMEOUT)
    assert not [m for m in f.lm.told if isinstance(m, RequestVotes)]


def test_a_replicator_started_mid_term_hears_of_later_appends(f: Fixture) -> None:
    _leader(f)
    _change(f, Op.ADD_LEARNERS, D)
    _appended(f)
    f.replicators.mailboxes[D].clear()
    f.send(Apply((b"y",), (pykka.ThreadingFuture(),)))
    assert f.replicators.mailboxes[D].take() == [LogAppended(LAST + 2)]


def test_a_peer_just_added_votes_for_a_candidate_its_log_does_not_name_yet() -> None:
    # Seed 497 of the sweep: C_new made a joining peer a voter before any entry reached it;
    # had it refused the cluster's candidates as strangers, no candidate could win.
    f = Fixture(join=True)
    f.send(RequestVoteRequest(1, B, 5, 1, False))  # B: one of its --peers
    assert CheckVote in [type(m) for m in f.lm.told]  # the log check decides
    f.lm.clear()
    f.send(RequestVoteRequest(1, "x:9", 5, 1, False))  # a stranger: refused
    assert f.lm.told == []
    assert f.send(GetStatus()).rejected == {"vote_request_from_non_member": 1}
