"""Router: an AppendEntries of the leader the Node follows, in its term, goes straight to the
LogManager (the Node told after), or is answered at once when it is a heartbeat on a quiet log
(actors/quiet_heartbeat.py); anything else goes to the Node first."""

from __future__ import annotations

import pytest

from actors.log_view import LogView
from actors.messages import FollowerAppend, LeaderContact
from actors.status import Leadership, LeaderWatch
from actors.testing import RecordingMailbox, RecordingTransport, Transcript
from actors.wiring import PeerActors, Replicators, Router
from storage.entry import EntryType, LogEntry
from storage.memory import MemoryLogStorage, MemoryMetaStorage
from transport.rpc import AppendEntriesRequest, AppendEntriesResponse

CLUSTER = "cluster-1"


def router(leadership: Leadership, cluster_id: str = CLUSTER) -> tuple[Router, Transcript]:
    transcript = Transcript()
    storage = MemoryLogStorage()
    storage.append_entries([LogEntry(i, 1, EntryType.DATA, b"x") for i in (1, 2, 3)])
    view = LogView(storage)
    view.set_committed(2)
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
    return Router("a", actors, RecordingTransport("a", transcript)), transcript


def append(
    term: int = 2,
    leader: str = "b",
    cluster_id: str = CLUSTER,
    prev: tuple[int, int] = (3, 1),
    entries: tuple[LogEntry, ...] = (),
    commit: int = 2,
) -> AppendEntriesRequest:
    return AppendEntriesRequest(term, leader, *prev, entries, commit, 7, cluster_id)


def test_the_followed_leaders_append_goes_to_the_log_manager_then_the_node() -> None:
    r, transcript = router(Leadership("follower", 2, "b"))
    req = append(entries=(LogEntry(4, 2, EntryType.DATA, b"y"),))
    r.deliver(req)
    assert transcript.entries == [
        ("log_manager", FollowerAppend(req, 2)),
        ("node", LeaderContact(req)),
    ]
    assert r.actors.log_view.appends.handed == 1


def test_a_heartbeat_on_a_quiet_durable_log_is_answered_at_once() -> None:
    r, transcript = router(Leadership("follower", 2, "b"))
    req = append()
    r.deliver(req)
    assert transcript.entries == [
        ("send:b", AppendEntriesResponse(2, True, 3, "a", 7, 2)),
        ("node", LeaderContact(req)),
    ]


def _unstable_tail(view: LogView) -> None:
    view.append_unstable([LogEntry(4, 1, EntryType.DATA, b"x")])


def _append_in_flight(view: LogView) -> None:
    view.appends.hand()


def _log_manager_failed(view: LogView) -> None:
    view.appends.closed = True


@pytest.mark.parametrize(
    ("req", "change"),
    [
        (append(), _append_in_flight),  # its ack must leave first
        (append(), _unstable_tail),  # success would vouch for a non-durable entry
        (append(), _log_manager_failed),
        (append(prev=(3, 2)), None),  # a mismatch: the LogManager's hint
        (append(prev=(4, 1)), None),  # after our end
        (append(commit=3), None),  # moves the commit index: the LogManager's
    ],
)
def test_a_heartbeat_takes_the_log_managers_way_unless_the_answer_is_certain(
    req: AppendEntriesRequest, change: object
) -> None:
    r, transcript = router(Leadership("follower", 2, "b"))
    if callable(change):
        change(r.actors.log_view)
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
