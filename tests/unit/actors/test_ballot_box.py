"""BallotBox: quorum counting, Figure 8, joint consensus. Each test asserts exactly what the box
told the FSMCaller and the LogManager."""

from __future__ import annotations

import pytest

from actors.ballot_box import BallotBox
from actors.configuration import Configuration
from actors.messages import (
    ClearPending,
    Commit,
    Committed,
    Grant,
    ResetPending,
    SetConfiguration,
)
from actors.testing import ActorHarness, RecordingMailbox, Transcript

ABC = Configuration.of(["a", "b", "c"])
ABCDE = Configuration.of(["a", "b", "c", "d", "e"])


class Box:
    """A BallotBox on the test thread, with its two collaborators on one transcript."""

    def __init__(self) -> None:
        self.transcript = Transcript()
        self.fsm = RecordingMailbox("fsm_caller", self.transcript)
        self.log_manager = RecordingMailbox("log_manager", self.transcript)
        self.node = RecordingMailbox("node", self.transcript)
        self.actor = BallotBox(self.fsm, self.log_manager, self.node)
        self.harness = ActorHarness(self.actor)

    def send(self, *messages: object) -> None:
        for message in messages:
            self.harness.send(message)

    def commits(self) -> list[object]:
        """What was told since the last call, in order, across both collaborators."""
        told = list(self.transcript.entries)
        self.transcript.clear()
        self.fsm.clear()
        self.log_manager.clear()
        return told


def committed(index: int) -> list[object]:
    return [("fsm_caller", Commit(index)), ("log_manager", Committed(index))]


@pytest.fixture
def box() -> Box:
    return Box()


def test_majority_of_three_commits_and_the_leaders_own_grant_counts(box: Box) -> None:
    box.send(ResetPending(term=2, pending_index=1, conf=ABC))
    box.send(Grant("a", 3, 2))  # the leader itself (after its own fsync)
    assert box.commits() == []
    box.send(Grant("b", 2, 2))
    assert box.commits() == committed(2)
    box.send(Grant("b", 3, 2))
    assert box.commits() == committed(3)
    assert str(box.actor) == "LEADING term=2 pending=1 committed=3 match=a:3,b:3"


def test_five_peers_need_three(box: Box) -> None:
    box.send(ResetPending(3, 1, ABCDE), Grant("a", 10, 3), Grant("b", 10, 3))
    assert box.commits() == []
    box.send(Grant("c", 7, 3))
    assert box.commits() == committed(7)
    box.send(Grant("d", 9, 3))  # a,b at 10, d at 9, c at 7: three hold 9
    assert box.commits() == committed(9)


def test_figure_8_earlier_terms_commit_only_through_the_current_term() -> None:
    # Reference: Raft paper §5.4.2, Figure 8. Entries 1..3 are from earlier terms; the leader of
    # term 4 wrote its first entry at index 4.
    box = Box()
    box.send(ResetPending(term=4, pending_index=4, conf=ABCDE))
    box.send(Grant("a", 4, 4), Grant("b", 2, 4), Grant("c", 2, 4))
    assert box.commits() == []  # a majority holds 2, but 2 is of an earlier term
    box.send(Grant("b", 3, 4), Grant("c", 3, 4))
    assert box.commits() == []  # a majority holds 3: still nothing
    box.send(Grant("b", 4, 4))
    assert box.commits() == []  # only a and b hold 4
    box.send(Grant("c", 4, 4))
    assert box.commits() == committed(4)  # which commits 2 and 3 with it
    assert box.actor.last_committed_index == 4


def test_joint_ballot_needs_both_majorities(box: Box) -> None:
    # Reference: Raft dissertation §4.3, joint consensus.
    joint = Configuration.of(["a", "b", "c"], old_peers=["a", "d", "e"])
    box.send(ResetPending(5, 1, joint))
    box.send(Grant("a", 6, 5), Grant("b", 6, 5), Grant("c", 6, 5))
    assert box.commits() == []  # all of new, but only a of old
    box.send(Grant("d", 4, 5))
    assert box.commits() == committed(4)  # old majority {a,d} holds 4
    box.send(Grant("e", 6, 5))
    assert box.commits() == committed(6)


def test_joint_ballot_old_majority_alone_is_not_enough(box: Box) -> None:
    joint = Configuration.of(["a", "b", "c"], old_peers=["a", "d", "e"])
    box.send(ResetPending(5, 1, joint), Grant("a", 3, 5), Grant("d", 3, 5), Grant("e", 3, 5))
    assert box.commits() == []
    box.send(Grant("c", 3, 5))
    assert box.commits() == committed(3)


def test_commit_never_goes_backwards(box: Box) -> None:
    box.send(ResetPending(2, 1, ABC), Grant("a", 5, 2), Grant("b", 5, 2))
    assert box.commits() == committed(5)
    box.send(Grant("b", 3, 2), Grant("c", 4, 2))  # lower grants: match only grows
    assert box.commits() == []
    # A new term that starts after the commit point keeps it; lower quorums commit nothing.
    box.send(ResetPending(3, 6, ABC), Grant("a", 6, 3), Grant("c", 4, 3))
    assert box.commits() == []
    box.send(Grant("c", 6, 3))
    assert box.commits() == committed(6)


def test_grants_from_non_voters_never_count(box: Box) -> None:
    # Learners and peers still catching up are replicated to, but hold no ballot.
    box.send(ResetPending(2, 1, ABC), Grant("a", 5, 2), Grant("x", 5, 2), Grant("y", 5, 2))
    assert box.commits() == []


def test_a_new_configuration_counts_grants_already_received(box: Box) -> None:
    # x and y caught up before the joint configuration made them voters: with it, a and x
    # and y are a majority of {a,x,y} but not of {a,b,c}; b then completes both.
    box.send(ResetPending(2, 1, ABC), Grant("a", 5, 2), Grant("x", 5, 2), Grant("y", 4, 2))
    box.send(SetConfiguration(2, Configuration.of(["a", "x", "y"], ["a", "b", "c"])))
    assert box.commits() == []
    box.send(Grant("b", 5, 2))
    assert box.commits() == committed(5)
    # C_new alone: a majority of {a,x,y} commits without b or c.
    box.send(SetConfiguration(2, Configuration.of(["a", "x", "y"])), Grant("a", 7, 2))
    assert box.commits() == []
    box.send(Grant("y", 6, 2))
    assert box.commits() == committed(6)


def test_a_smaller_configuration_commits_at_once(box: Box) -> None:
    box.send(ResetPending(2, 1, ABCDE), Grant("a", 5, 2), Grant("b", 5, 2))
    assert box.commits() == []
    box.send(SetConfiguration(2, Configuration.of(["a", "b", "c"], ["a", "b", "c", "d", "e"])))
    assert box.commits() == []  # still needs 3 of the old five
    box.send(SetConfiguration(2, ABC))
    assert box.commits() == committed(5)


def test_a_configuration_of_another_term_is_ignored(box: Box) -> None:
    box.send(ResetPending(3, 1, ABCDE), Grant("a", 5, 3), Grant("b", 5, 3))
    box.send(SetConfiguration(2, ABC))
    assert box.commits() == []
    assert box.actor.conf == ABCDE


def test_grants_of_another_term_are_ignored(box: Box) -> None:
    # A replicator of term 2 still draining after the leader was re-elected in term 3: its
    # indexes may name other entries in term 3's log.
    box.send(ResetPending(3, 4, ABC), Grant("a", 5, 3), Grant("b", 5, 2))
    assert box.commits() == []
    box.send(Grant("b", 5, 3))
    assert box.commits() == committed(5)


def test_nothing_counts_before_reset_pending(box: Box) -> None:
    box.send(Grant("a", 5, 0), Grant("b", 5, 0), Grant("c", 5, 0))
    assert box.commits() == []
    assert str(box.actor) == "IDLE term=0 committed=0"


def test_clear_pending_stops_commits(box: Box) -> None:
    box.send(ResetPending(2, 1, ABC), Grant("a", 5, 2), ClearPending(2), Grant("b", 5, 2))
    assert box.commits() == []
    assert not box.actor.is_leading


def test_stale_clear_pending_is_ignored(box: Box) -> None:
    box.send(ResetPending(3, 1, ABC), ClearPending(2), Grant("a", 2, 3), Grant("b", 2, 3))
    assert box.commits() == committed(2)


def test_stale_reset_pending_is_ignored(box: Box) -> None:
    box.send(ResetPending(3, 1, ABC), Grant("a", 2, 3), ResetPending(2, 1, ABC))
    box.send(Grant("b", 2, 3))
    assert box.commits() == committed(2)


def test_reset_pending_clears_matches_of_the_old_term(box: Box) -> None:
    box.send(ResetPending(2, 1, ABC), Grant("a", 3, 2), Grant("b", 1, 2))
    assert box.commits() == committed(1)
    box.send(ResetPending(3, 4, ABC), Grant("a", 4, 3))
    assert box.actor.match == {"a": 4}
    assert box.commits() == []
