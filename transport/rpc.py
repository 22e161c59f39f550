"""Wire messages between peers, and between clients and peers.

Each is a frozen dataclass; the codec (transport.codec) gives each a stable type tag and
validates every field on decode. Peer ids are "host:port" strings. Field names follow
SOFAJRaft's rpc.proto where it has the message.

Correlation: a Replicator numbers its requests (`seq`); responses echo `seq` and the term the
request was sent in (`req_term`), so a response from an earlier pipeline or an earlier term is
recognisable as stale without closures.

Bounds: every term is at most MAX_TERM and every log index at most MAX_INDEX (the codec refuses
anything larger on decode, and a node never moves its term past MAX_TERM, so every term a peer
sends can be decoded by every other). Both are far beyond any real use (2**62 elections) and
fit a signed 64-bit integer, so no peer can be made to overflow. MAX_TERM is the last term: a
peer there cannot campaign again, which only a faulty member could bring about.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from storage.entry import LogEntry

MAX_TERM: Final = 1 << 62
MAX_INDEX: Final = 1 << 62


@dataclass(frozen=True, slots=True)
class RequestVoteRequest:
    term: int  # for a pre-vote: the term the candidate would stand in (its term + 1)
    candidate_id: str
    last_log_index: int
    last_log_term: int
    pre_vote: bool
    # The candidate campaigns because its leader handed over (TimeoutNowRequest): voters grant
    # even though they heard from that leader recently (the dissertation's §3.10).
    transfer: bool = False
    cluster_id: str = ""  # the sender's cluster (actors/identity.py); "" = none yet

    @property
    def sender(self) -> str:
        return self.candidate_id


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    term: int  # the voter's current term
    granted: bool
    pre_vote: bool
    voter_id: str
    req_term: int  # the term of the request this answers
    # The voter's RaftOptions.election_priority (-1: disabled): a candidate that hears of a
    # higher one yields to it (actors/priority.py).
    priority: int = -1

    @property
    def sender(self) -> str:
        return self.voter_id


@dataclass(frozen=True, slots=True)
class AppendEntriesRequest:
    term: int
    leader_id: str
    prev_log_index: int
    prev_log_term: int
    # contiguous, starting at prev_log_index + 1; empty = heartbeat/probe
    entries: tuple[LogEntry, ...]
    committed_index: int
    seq: int
    cluster_id: str = ""  # the sender's cluster (actors/identity.py); "" = none yet

    @property
    def sender(self) -> str:
        return self.leader_id


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    term: int
    success: bool
    last_log_index: int  # the follower's last log index (lets the leader jump back on mismatch)
    peer_id: str
    seq: int
    req_term: int
    # On a mismatch at prev_log_index (Raft dissertation §5.3's optimisation): the term of the
    # follower's entry there and the first index it holds of that term, so the leader skips a
    # whole conflicting term per round trip. conflict_term 0: the follower's log ends before
    # prev_log_index (then conflict_index is its last index + 1). Both 0 on success.
    conflict_term: int = 0
    conflict_index: int = 0

    @property
    def sender(self) -> str:
        return self.peer_id


@dataclass(frozen=True, slots=True)
class InstallSnapshotRequest:
    """One chunk of the leader's snapshot (SOFAJRaft's InstallSnapshot, streamed: the data
    travels in the request itself, `offset` .. `offset + len(data)` of `size` bytes).

    The snapshot is named by (last_included_index, last_included_term); `conf` is the
    configuration at that index (actors.configuration encoding), `size` and `checksum` (crc32)
    describe the whole data so the follower verifies it before installing. `done` marks the
    last chunk."""

    term: int
    leader_id: str
    last_included_index: int
    last_included_term: int
    conf: bytes
    size: int
    checksum: int
    offset: int
    data: bytes
    done: bool
    seq: int
    cluster_id: str = ""  # the sender's cluster (actors/identity.py); "" = none yet

    @property
    def sender(self) -> str:
        return self.leader_id


@dataclass(frozen=True, slots=True)
class InstallSnapshotResponse:
    """The follower's answer to one chunk. `next_offset` is how many bytes of the snapshot
    (last_included_index) it holds contiguously: the leader resumes from there, so a duplicate,
    a gap or a restarted follower costs a rewind, never a wrong byte. `success` with `done`
    means installed: the follower's log and state machine are at last_included_index."""

    term: int
    success: bool
    peer_id: str
    seq: int
    req_term: int
    last_included_index: int
    next_offset: int
    done: bool

    @property
    def sender(self) -> str:
        return self.peer_id


@dataclass(frozen=True, slots=True)
class ReadIndexRequest:
    """Follower -> leader: the read index for the follower's waiting reads (one request
    serves a batch of them); answered once a heartbeat round confirmed the leadership."""

    term: int  # the follower's current term
    peer_id: str
    request_id: int

    @property
    def sender(self) -> str:
        return self.peer_id


@dataclass(frozen=True, slots=True)
class TimeoutNowRequest:
    """Leader -> the follower it hands leadership to, once that follower holds the leader's
    whole log: campaign now, without a pre-vote (leadership transfer)."""

    term: int  # the leader's term
    leader_id: str

    @property
    def sender(self) -> str:
        return self.leader_id


@dataclass(frozen=True, slots=True)
class ReadIndexResponse:
    """Leader -> follower: `success` with the index to read at once the follower has applied
    it; not `success` when the peer asked cannot confirm that it leads."""

    term: int
    peer_id: str
    request_id: int
    success: bool
    read_index: int

    @property
    def sender(self) -> str:
        return self.peer_id


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """A client command. (client_id, seq) lets the state machine de-duplicate retried writes
    (Raft dissertation §6.3); request_id correlates the reply on the client's connection."""

    client_id: str
    request_id: int
    seq: int
    command: bytes

    @property
    def sender(self) -> str:
        return self.client_id


# ClientQuery.consistency values (as actors.read_only serves them).
LINEARIZABLE, LEASE, SERIALIZABLE = "linearizable", "lease", "serializable"
CONSISTENCIES = (LINEARIZABLE, LEASE, SERIALIZABLE)


@dataclass(frozen=True, slots=True)
class ClientQuery:
    """A client read, served without the log (RaftNode.read): `consistency` is
    "linearizable", "lease" or "serializable"; `anywhere`: a follower may serve it (else only
    the leader does). Answered with a ClientResponse like a ClientRequest."""

    client_id: str
    request_id: int
    query: bytes
    consistency: str
    anywhere: bool

    @property
    def sender(self) -> str:
        return self.client_id


class ClientStatus:
    """Values of ClientResponse.status (ints on the wire)."""

    OK = 0
    NOT_LEADER = 1  # see leader_hint; nothing was done
    ERROR = 2  # a definite failure, see message
    UNKNOWN = 3  # outcome unknown (e.g. leadership lost after the command was appended)
    OVERLOADED = 4  # too much in flight on the leader; nothing was done: back off, retry


@dataclass(frozen=True, slots=True)
class ClientResponse:
    request_id: int
    status: int  # a ClientStatus value
    result: bytes = b""
    leader_hint: str = ""
    message: str = ""
    peer_id: str = ""

    @property
    def sender(self) -> str:
        return self.peer_id


# AdminRequest.op values: operations on the peer itself, answered with a msgpack map.
ADMIN_SNAPSHOT = "snapshot"  # -> {"peer", "index", "term", "bytes"} of the snapshot taken
# To the leader; `target` the voter to hand over to ("" for the most up-to-date one)
# -> {"from": the old leader, "to": the new one}.
ADMIN_TRANSFER_LEADER = "transfer-leader"
# Membership changes, to the leader; `target` the peer (HOST:PORT) -> {"leader": the leader
# that made the change, "voters": [...], "learners": [...]}, the configuration once committed.
ADMIN_ADD_PEER = "add-peer"  # make a voter (a new peer catches up first; a learner is promoted)
ADMIN_ADD_LEARNER = "add-learner"  # replicate to it, never counted in a quorum
ADMIN_PROMOTE = "promote"  # make a learner a voter
ADMIN_REMOVE_PEER = "remove-peer"  # remove a voter (the leader itself too) or a learner
MEMBERSHIP_OPS = (ADMIN_ADD_PEER, ADMIN_ADD_LEARNER, ADMIN_PROMOTE, ADMIN_REMOVE_PEER)


@dataclass(frozen=True, slots=True)
class AdminRequest:
    """An operator's request to the peer it is sent to (AdminClient): `op` names it
    ("snapshot"), `target` is its argument if it has one. Answered with a ClientResponse whose
    `result` is a msgpack map (see transport.client.AdminClient)."""

    client_id: str
    request_id: int
    op: str
    target: str = ""

    @property
    def sender(self) -> str:
        return self.client_id


@dataclass(frozen=True, slots=True)
class StatusRequest:
    client_id: str
    request_id: int

    @property
    def sender(self) -> str:
        return self.client_id


@dataclass(frozen=True, slots=True)
class StatusResponse:
    request_id: int
    peer_id: str
    status: dict[str, Any] = field(default_factory=dict)  # JSON-like values only

    @property
    def sender(self) -> str:
        return self.peer_id


RpcMessage = (
    RequestVoteRequest
    | RequestVoteResponse
    | AppendEntriesRequest
    | AppendEntriesResponse
    | InstallSnapshotRequest
    | InstallSnapshotResponse
    | ReadIndexRequest
    | ReadIndexResponse
    | TimeoutNowRequest
    | ClientRequest
    | ClientQuery
    | ClientResponse
    | AdminRequest
    | StatusRequest
    | StatusResponse
)
