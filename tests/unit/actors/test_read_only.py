"""ReadOnly: the read-index and lease rules (Raft dissertation §6.4), as plain decisions."""

from __future__ import annotations

import pytest

from actors.configuration import Configuration
from actors.read_only import ReadOnly

A, B, C, D, E = "a", "b", "c", "d", "e"


def ready(peers: tuple[str, ...] = (A, B, C), first: int = 10) -> ReadOnly:
    conf = Configuration.of(peers)
    reads = ReadOnly(A, lambda: conf)
    reads.term_first_index = first
    return reads


def test_a_new_leader_serves_nothing_before_its_terms_first_entry() -> None:
    """§6.4 step 1: until an entry of its term commits, the leader does not know the commit
    index; the read index is at least the term's first entry, so the read waits for it."""
    conf = Configuration.of((A, B, C))
    reads = ReadOnly(A, lambda: conf)
    reads.add(4, "r1")
    assert reads.start_round() is None  # the term has not begun: no round, no read
    reads.term_first_index = 10
    started = reads.start_round()
    assert started is not None
    assert reads.acknowledge(B, started.number) == [(10, "r1")]


def test_the_read_index_is_the_commit_index_on_arrival_once_the_term_has_committed() -> None:
    reads = ready(first=10)
    reads.add(25, "r1")
    started = reads.start_round()
    assert started is not None
    assert reads.acknowledge(B, started.number) == [(25, "r1")]


def test_a_read_needs_a_quorum_of_acknowledgements() -> None:
    reads = ready((A, B, C, D, E))
    reads.add(12, "r1")
    started = reads.start_round()
    assert started is not None
    assert reads.acknowledge(B, started.number) is None  # a and b: 2 of 5
    assert reads.acknowledge(B, started.number) is None  # b again counts once
    assert reads.acknowledge(C, started.number) == [(12, "r1")]  # a, b, c: 3 of 5


def test_reads_during_a_round_share_the_next_one() -> None:
    reads = ready()
    reads.add(11, "r1")
    first = reads.start_round()
    assert first is not None
    reads.add(12, "r2")
    reads.add(13, "r3")
    assert reads.start_round() is None  # one round in flight at a time
    assert reads.acknowledge(B, first.number) == [(11, "r1")]
    second = reads.start_round()
    assert second is not None and second.number == first.number + 1
    assert reads.acknowledge(C, second.number) == [(12, "r2"), (13, "r3")]


def test_an_acknowledgement_of_an_earlier_round_or_from_a_stranger_counts_for_nothing() -> None:
    reads = ready()
    reads.add(11, "r1")
    first = reads.start_round()
    assert first is not None
    assert reads.expire(first.number) == ["r1"]
    reads.add(12, "r2")
    second = reads.start_round()
    assert second is not None
    assert reads.acknowledge(B, first.number) is None  # late: its round is over
    assert reads.acknowledge("x", second.number) is None  # not a member
    assert reads.acknowledge(C, second.number) == [(12, "r2")]


def test_a_cluster_of_one_confirms_alone() -> None:
    reads = ready((A,))
    reads.add(11, "r1")
    assert reads.start_round() is not None
    assert reads.confirmed_alone() == [(11, "r1")]


def test_a_joint_configuration_needs_both_quorums() -> None:
    conf = Configuration.of((A, D, E), old_peers=(A, B, C))
    reads = ReadOnly(A, lambda: conf)
    reads.term_first_index = 1
    reads.add(5, "r1")
    started = reads.start_round()
    assert started is not None
    assert reads.acknowledge(B, started.number) is None  # old quorum only
    assert reads.acknowledge(D, started.number) == [(5, "r1")]


def test_leadership_ending_drains_every_read() -> None:
    reads = ready()
    reads.add(11, "r1")
    reads.start_round()
    reads.add(12, "r2")
    assert sorted(reads.drain()) == ["r1", "r2"]
    assert reads.start_round() is None


LEASE = 0.9  # election timeout 1 s, leader_lease_ratio 0.9


def test_the_lease_runs_from_the_quorum_th_latest_acknowledged_send() -> None:
    reads = ready((A, B, C, D, E))
    reads.acked(B, 5.0)
    reads.acked(C, 4.0)
    reads.acked(D, 3.0)
    # a (now), b 5.0, c 4.0: the third latest is 4.0, so no other leader before 4.0 + 1 s.
    assert reads.lease_start(6.0) == 4.0
    assert reads.lease_valid(4.0 + LEASE - 0.01, LEASE)
    assert not reads.lease_valid(4.0 + LEASE, LEASE)


def test_an_older_acknowledgement_never_moves_the_lease_back() -> None:
    reads = ready()
    reads.acked(B, 5.0)
    reads.acked(B, 3.0)  # a reordered report
    assert reads.lease_start(5.5) == 5.0


@pytest.mark.parametrize("first", [0, 10])
def test_without_acknowledgements_or_before_the_term_there_is_no_lease(first: int) -> None:
    reads = ready(first=first)
    if first:
        assert not reads.lease_valid(0.0, LEASE)  # nobody answered yet: read-index instead
    else:
        reads.acked(B, 0.0)
        assert not reads.lease_valid(0.1, LEASE)  # not ready: nothing is served
