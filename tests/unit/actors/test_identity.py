"""A cluster's identity (actors/identity.py): derivation, bootstrap, and which leaders and
candidates the Node accepts by id; adoption by the LogManager."""

from __future__ import annotations

import pytest

from actors.identity import Kinship, bootstrap_identity, compare, derive_cluster_id
from actors.messages import (
    AdoptClusterId,
    CheckVote,
    FollowerAppend,
    Following,
    GetStatus,
    PersistTermVote,
)
from storage.entry import EntryType, LogEntry
from storage.memory import MemoryMetaStorage
from storage.meta_storage import MAX_CLUSTER_ID
from tests.unit.actors.test_node import A, B, C, Fixture
from transport.rpc import AppendEntriesRequest, InstallSnapshotRequest, RequestVoteRequest

OURS, THEIRS = derive_cluster_id([A, B, C]), derive_cluster_id([A, B, C], "another")
X = "x:9"  # a peer no log or hint of the fixture's names


def test_the_derived_id_depends_on_founders_and_token_not_on_order() -> None:
    assert derive_cluster_id([A, B, C]) == derive_cluster_id([C, A, B]) == OURS
    assert len(OURS) == 16 and int(OURS, 16) >= 0
    assert derive_cluster_id([A, B]) != OURS
    assert THEIRS != OURS


def test_compare() -> None:
    assert compare(OURS, OURS) is Kinship.SAME
    assert compare(OURS, THEIRS) is Kinship.OTHER
    assert compare("", THEIRS) is Kinship.UNKNOWN
    assert compare(OURS, "") is Kinship.UNKNOWN
    assert compare("", "x" * (MAX_CLUSTER_ID + 1)) is Kinship.OTHER  # never adoptable


def test_a_fresh_founding_peer_takes_the_derived_id_durably() -> None:
    meta = MemoryMetaStorage()
    assert bootstrap_identity(meta, True, True, [B, A, C], "", A) == OURS
    assert meta.crash().cluster_id == OURS
    # Restarted with other --peers (contact hints now): the durable id stays.
    assert bootstrap_identity(meta, True, False, [A, X], "", A) == OURS


@pytest.mark.parametrize(("founding", "fresh"), [(False, True), (True, False)])
def test_a_joining_peer_or_one_with_old_data_takes_no_id(founding: bool, fresh: bool) -> None:
    meta = MemoryMetaStorage(term=0 if fresh else 3)
    assert bootstrap_identity(meta, founding, fresh, [A, B, C], "", A) == ""
    assert meta.cluster_id == ""


def test_an_id_once_set_never_changes() -> None:
    meta = MemoryMetaStorage(cluster_id=OURS)
    meta.set_cluster_id(OURS)  # the same: fine
    with pytest.raises(ValueError, match="belongs to cluster"):
        meta.set_cluster_id(THEIRS)
    with pytest.raises(ValueError, match="characters"):
        MemoryMetaStorage().set_cluster_id("")


def _fixture(cluster_id: str, join: bool = False) -> Fixture:
    f = Fixture(join=join)
    f.node.log_view.cluster_id = cluster_id
    return f


def _told(f: Fixture) -> list[type]:
    """What the Node told its LogManager, but for the term it persists on the way."""
    return [type(m) for m in f.lm.told if not isinstance(m, PersistTermVote)]


def _heartbeat(leader: str, cluster_id: str, term: int = 2) -> AppendEntriesRequest:
    return AppendEntriesRequest(term, leader, 0, 0, (), 0, 1, cluster_id)


def test_a_cut_off_voter_follows_a_leader_of_its_cluster_it_has_never_heard_of() -> None:
    f = _fixture(OURS)
    f.send(_heartbeat(X, OURS))
    assert (f.node.leader_id, f.node.term) == (X, 2)
    assert _told(f) == [FollowerAppend, Following]  # no adoption: the id is known
    assert X in f.transport.peers  # it can answer
    assert f.send(GetStatus()).rejected == {}


def test_a_member_by_name_of_another_cluster_is_refused() -> None:
    f = _fixture(OURS)
    f.send(_heartbeat(B, THEIRS))
    snapshot = InstallSnapshotRequest(2, B, 5, 1, b"", 0, 0, 0, b"", True, 1, THEIRS)
    f.send(snapshot)
    f.send(RequestVoteRequest(3, B, 9, 2, False, cluster_id=THEIRS))
    assert (f.node.leader_id, f.node.term) == (None, 0)  # not followed, the term unmoved
    assert f.lm.told == []
    assert f.send(GetStatus()).rejected == {
        "append_entries_from_other_cluster": 1,
        "install_snapshot_from_other_cluster": 1,
        "vote_request_from_other_cluster": 1,
    }


def test_without_an_id_on_either_side_names_decide() -> None:
    legacy = _fixture("")
    legacy.send(_heartbeat(X, OURS))  # a stranger by name, and we have no id to compare
    assert legacy.node.leader_id is None
    assert legacy.send(GetStatus()).rejected == {"append_entries_from_non_member": 1}
    ours = _fixture(OURS)
    ours.send(_heartbeat(B, ""))  # a member by name that sends no id
    assert ours.node.leader_id == B


def test_a_candidate_of_the_cluster_its_log_does_not_name_gets_the_log_check() -> None:
    f = _fixture(OURS)
    f.send(RequestVoteRequest(1, X, 5, 1, False, cluster_id=OURS))
    assert _told(f) == [CheckVote]


@pytest.mark.parametrize("leader", [B, X], ids=["a contact", "not a contact"])
def test_a_joining_peer_adopts_its_first_leaders_id_before_its_entries(leader: str) -> None:
    # Even a leader its hints do not name: they may all be gone (a joining peer wiped and
    # restarted with the flags it was first started with).
    f = _fixture("", join=True)
    f.send(_heartbeat(X, ""))  # no id, not a contact: names decide, and refuse it
    assert f.node.leader_id is None
    f.send(_heartbeat(leader, OURS))
    assert f.node.leader_id == leader
    assert _told(f) == [AdoptClusterId, FollowerAppend, Following]
    assert AdoptClusterId(OURS) in f.lm.told


def test_a_joining_peer_with_entries_but_no_id_goes_by_names() -> None:
    f = _fixture("", join=True)
    f.node.log_view.append_unstable([LogEntry(1, 1, EntryType.DATA, b"x")])
    f.send(_heartbeat(X, OURS))
    assert f.node.leader_id is None
