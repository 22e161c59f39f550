"""Configuration (quorums, encoding, learners), ConfigurationLog and the requests of
actors/membership.py: pure functions, checked value by value."""

from __future__ import annotations

import msgpack
import pytest

from actors.configuration import Configuration, ConfigurationLog
from actors.errors import MembershipChangeError, UnknownPeerError
from actors.membership import Catchup, ChangeRequest, ConfChange, Op

ABC = Configuration.of("abc")


def test_joint_quorums_need_both_majorities_and_learners_never_count() -> None:
    joint = Configuration.of("cde", "abc", learners="xy")
    assert joint.has_quorum("acd") and not joint.has_quorum("abx") and not joint.has_quorum("cdexy")
    assert joint.quorum_match({"a": 9, "b": 9, "c": 5, "d": 5, "x": 99, "y": 99}) == 5
    assert joint.all_peers() == frozenset("abcde") and joint.members() == frozenset("abcdexy")
    assert joint.stable() == Configuration.of("cde", learners="xy")


def test_a_voter_is_never_also_a_learner() -> None:
    assert Configuration.of("ab", learners="bc").learners == frozenset("c")


def test_encoding_round_trips_and_reads_what_earlier_versions_wrote() -> None:
    for conf in (ABC, Configuration.of("cde", "abc"), Configuration.of("ab", learners="c")):
        assert Configuration.decode(conf.encode()) == conf
    assert ABC.encode() == msgpack.packb([["a", "b", "c"], []])  # no learners: the old form
    with pytest.raises(ValueError):
        Configuration.decode(msgpack.packb([[], []]))
    with pytest.raises(ValueError):
        Configuration.decode(msgpack.packb([["a"], [], [1]]))


def test_the_configuration_log_follows_appends_truncations_and_snapshots() -> None:
    confs = ConfigurationLog(ABC)
    assert confs.state().index == 0 and confs.state().previous == ABC
    joint, new = Configuration.of("abd", "abc"), Configuration.of("abd")
    confs.add(5, joint)
    confs.add(9, new)
    assert (confs.state().index, confs.state().conf, confs.state().previous) == (9, new, joint)
    confs.truncate_suffix(8)
    assert confs.state().conf == joint
    confs.truncate_suffix(0)
    confs.truncate_suffix(0)  # the base stays
    assert confs.state().conf == ABC
    confs.add(5, joint)
    confs.add(9, new)
    confs.set_base(7, joint)  # a snapshot at 7: what came before is summed up in it
    assert [confs.state().conf, confs.state().previous] == [new, joint]
    confs.truncate_suffix(7)
    assert (confs.state().index, confs.state().conf) == (7, joint)


@pytest.mark.parametrize(
    ("op", "peers", "expected"),
    [
        (Op.ADD_PEER, "d", Configuration.of("abcd", learners="xy")),
        (Op.ADD_PEER, "x", Configuration.of("abcx", learners="y")),  # a learner is promoted
        (Op.REMOVE_PEER, "a", Configuration.of("bc", learners="xy")),
        (Op.REMOVE_PEER, "x", Configuration.of("abc", learners="y")),
        (Op.CHANGE_PEERS, "cde", Configuration.of("cde", learners="xy")),
        (Op.ADD_LEARNERS, "z", Configuration.of("abc", learners="xyz")),
        (Op.REMOVE_LEARNERS, "xy", Configuration.of("abc")),
        (Op.PROMOTE_LEARNER, "y", Configuration.of("abcy", learners="x")),
    ],
)
def test_each_request_makes_its_configuration(op: Op, peers: str, expected: Configuration) -> None:
    conf = Configuration.of("abc", learners="xy")
    assert ChangeRequest.of(op, peers).target(conf) == expected


@pytest.mark.parametrize(
    ("op", "peers", "error"),
    [
        (Op.REMOVE_PEER, "q", UnknownPeerError),
        (Op.PROMOTE_LEARNER, "a", UnknownPeerError),
        (Op.REMOVE_LEARNERS, "a", UnknownPeerError),
        (Op.ADD_LEARNERS, "a", MembershipChangeError),
        (Op.CHANGE_PEERS, "xy", None),  # two learners become the voters: allowed
    ],
)
def test_requests_that_cannot_apply_say_why(op: Op, peers: str, error: type | None) -> None:
    conf = Configuration.of("abc", learners="xy")
    request = ChangeRequest.of(op, peers)
    if error is None:
        assert request.target(conf) == Configuration.of("xy")
    else:
        with pytest.raises(error):
            request.target(conf)


def test_no_request_may_leave_no_voter() -> None:
    with pytest.raises(MembershipChangeError, match="no voter"):
        ChangeRequest.of(Op.REMOVE_PEER, "a").target(Configuration.of("a"))


def test_a_change_waits_for_an_answer_then_for_the_margin() -> None:
    change = ConfChange(ABC, Configuration.of("abcd"), None, 1)
    change.catching_up["d"] = Catchup(started=10.0, progress_at=10.0)
    change.observe("d", 0, answered_at=9.0, installing=False, last_index=100, margin=5)
    assert "d" in change.catching_up  # an answer from before the change began: not reachable
    change.observe("d", 90, answered_at=11.0, installing=False, last_index=100, margin=5)
    assert "d" in change.catching_up  # 10 behind, more than the margin
    assert change.stalled(now=11.5, patience=1.0) == []
    assert change.stalled(now=12.5, patience=1.0) == ["d"]
    change.observe("d", 96, answered_at=13.0, installing=False, last_index=100, margin=5)
    assert change.catching_up == {}
