"""Router: an AppendEntries of the leader the Node follows, in its term, goes straight to the
LogManager (the Node told after); anything else goes to the Node first."""

from __future__ import annotations

import pytest

from actors.log_view import LogView
from actors.messages import FollowerAppend, LeaderContact
from actors.status import Leadership, LeaderWatch
from actors.testing import RecordingMailbox, Transcript
from actors.wiring import PeerActors, Replicators, Router
from storage.memory import MemoryLogStorage, MemoryMetaStorage
from transport.rpc import AppendEntriesRequest

CLUSTER = "cluster-1"


def router(leadership: Leadership, cluster_id: str = CLUSTER) -> tuple[Router, Transcript]:
    transcript = Transcript()
    view = LogView(MemoryLogStorage())
    view.cluster_id = cluster_id
    watch = LeaderWatch()
    watch.publish(leadership)
    actors = PeerActors(
        node=RecordingMailbox("node", transcript),
        log_manager=RecordingMailbox("log_manager", transcript),
        ballot_box=RecordingMailbox("ballot_box", transcript),
        fsm_caller=RecordingMailbox("fsm_caller", transcript),
        log_view=view,
        meta=MemoryMetaStorage(),
        replicators=Replicators(lambda *_: RecordingMailbox(), lambda _: None),
        leader_watch=watch,
    )
    return Router("a", actors), transcript


def append(term: int = 2, leader: str = "b", cluster_id: str = CLUSTER) -> AppendEntriesRequest:
    return AppendEntriesRequest(term, leader, 0, 0, (), 0, 1, cluster_id)


def test_the_followed_leaders_append_goes_to_the_log_manager_then_the_node() -> None:
    r, transcript = router(Leadership("follower", 2, "b"))
    req = append()
    r.deliver(req)
    assert transcript.entries == [
        ("log_manager", FollowerAppend(req, 2)),
        ("node", LeaderContact(req)),
    ]


@pytest.mark.parametrize(
    ("leadership", "req", "cluster_id"),
    [
        (Leadership("follower", 2, "b"), append(term=3), CLUSTER),  # a newer term
        (Leadership("follower", 2, "b"), append(leader="c"), CLUSTER),  # another leader
        (Leadership("follower", 2, None), append(), CLUSTER),  # no leader known yet
        (Leadership("candidate", 2, None), append(), CLUSTER),
        (Leadership("leader", 2, "a"), append(leader="a"), CLUSTER),
        (Leadership("error", 2, "b"), append(), CLUSTER),
        (Leadership("follower", 2, "b"), append(cluster_id="other"), CLUSTER),
        (Leadership("follower", 2, "b"), append(cluster_id=""), ""),  # no ids: by name, Node
    ],
)
def test_anything_else_goes_to_the_node_first(
    leadership: Leadership, req: AppendEntriesRequest, cluster_id: str
) -> None:
    r, transcript = router(leadership, cluster_id)
    r.deliver(req)
    assert transcript.entries == [("node", req)]
