"""NodeStatus: what a node reports about itself (`RaftNode.status()`, `client status`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One peer as it sees itself. Indexes are read from the LogView without a lock, so they may
    be a moment old, never torn. `to_json` is the wire and CLI form; its keys are part of the
    public contract (`KVClient.status()`), so fields are only ever added."""

    id: str
    role: str  # a Role value: "follower", "candidate", "leader", "error", "shutdown"
    term: int
    leader: str | None
    voted_for: str | None
    commit_index: int
    applied_index: int
    last_log_index: int
    pid: int
    conf: list[str]  # the voters in force (while joint: of both configurations)
    first_log_index: int = 1  # entries before it were compacted into the snapshot
    snapshot_index: int = 0  # the newest snapshot's last index (0: none)
    snapshot_term: int = 0
    error: str | None = None  # why the node is in ERROR
    replicators: dict[str, str] = field(default_factory=dict)  # leader: follower -> progress
    # leader: follower -> {"match_index", "lag" (entries behind), "last_contact_s"}
    followers: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)  # untrusted input refused, by reason
    # What the transport refused: {"bad_frames": {reason: n}, "refused_connections": {...}}
    transport: dict[str, dict[str, int]] = field(default_factory=dict)
    learners: list[str] = field(default_factory=list)
    old_conf: list[str] = field(default_factory=list)  # while joint: the old voters
    conf_index: int = 0  # the configuration entry in force (0: bootstrap)
    # leader: the membership change under way ("catching_up", "joint", "stable") or None
    membership_change: str | None = None
    cluster_id: str = ""  # actors/identity.py; "" while a joining peer has not heard its leader

    @property
    def is_leader(self) -> bool:
        return self.role == "leader"

    def to_json(self) -> dict[str, Any]:
        """A JSON-like dict; `error`, `replicators`, `followers`, `rejected` and `transport`
        appear only when they say something."""
        out: dict[str, Any] = {
            "id": self.id,
            "role": self.role,
            "term": self.term,
            "leader": self.leader,
            "voted_for": self.voted_for,
            "commit_index": self.commit_index,
            "applied_index": self.applied_index,
            "last_log_index": self.last_log_index,
            "pid": self.pid,
            "conf": list(self.conf),
            "first_log_index": self.first_log_index,
            "snapshot_index": self.snapshot_index,
            "snapshot_term": self.snapshot_term,
            "learners": list(self.learners),
            "old_conf": list(self.old_conf),
            "conf_index": self.conf_index,
            "cluster_id": self.cluster_id,
        }
        if self.membership_change:
            out["membership_change"] = self.membership_change
        if self.error:
            out["error"] = self.error
        if self.replicators:
            out["replicators"] = dict(self.replicators)
        if self.followers:
            out["followers"] = {peer: dict(info) for peer, info in self.followers.items()}
        if self.rejected:
            out["rejected"] = dict(self.rejected)
        if self.transport:
            out["transport"] = {kind: dict(counts) for kind, counts in self.transport.items()}
        return out


def transport_refusals(transport: object) -> dict[str, dict[str, int]]:
    """NodeStatus.transport from a transport that counts what it refuses (ZmqTransport's
    `stats`); {} for one that does not (the memory transport of tests)."""
    stats = getattr(transport, "stats", None)
    found = {
        "bad_frames": getattr(stats, "bad_frames_by_reason", None),
        "refused_connections": getattr(stats, "refused_connections", None),
    }
    return {kind: dict(counts) for kind, counts in found.items() if counts}


@dataclass(frozen=True, slots=True)
class Leadership:
    """Who leads, as one peer's Node knows it: published at the end of each of its messages."""

    role: str  # a Role value
    term: int
    leader: str | None


class LeaderWatch:
    """The Node's latest Leadership, for any thread to read at once (`current`, one atomic
    attribute) or wait on (`condition`, notified on every change): `RaftNode.is_leader`,
    `leader_id` and `wait_for_leader` read this instead of asking the actor. The Node's
    thread is the only writer."""

    def __init__(self) -> None:
        self.current = Leadership("follower", 0, None)
        self.condition = threading.Condition()

    def publish(self, leadership: Leadership) -> None:
        with self.condition:
            self.current = leadership
            self.condition.notify_all()
