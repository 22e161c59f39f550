"""Options of a Raft node, validated at construction (SOFAJRaft's defaults in comments)."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.configuration import Configuration
from actors.errors import OptionsError
from transport.codec import DEFAULT_MAX_FRAME_SIZE

FRAME_HEADROOM = 64 * 1024  # an AppendEntries' own fields, next to its one (largest) command


@dataclass(frozen=True)
class RaftOptions:
    """Tuning of one node. Every duration is in seconds."""

    election_timeout: float = (
        1.0  # electionTimeoutMs 1000; the actual timeout adds up to this again
    )
    max_election_delay: float | None = None  # random extra on top; None = election_timeout
    leader_lease_ratio: float = 0.9  # leaderLeaseTimeRatio 90%: check-quorum window
    heartbeat_ratio: int = 10  # heartbeat every election_timeout / 10
    max_inflight: int = 256  # maxReplicatorInflightMsgs
    max_entries_per_request: int = 1024  # maxEntriesSize
    max_body_bytes: int = 512 * 1024  # maxBodySize
    max_apply_batch: int = 1024  # entries handed to the state machine per on_apply call
    block_interval: float | None = None  # replicator wait after an RPC error; None = heartbeat
    rpc_timeout: float | None = (
        None  # oldest in-flight AppendEntries age before reset; None = election_timeout
    )
    # At start, campaign after two heartbeats plus the random delay instead of a whole election
    # timeout more (etcd's initial-election-tick-advance; see Node.startup).
    initial_election_advance: bool = True
    log_tail_entries: int = 8192  # committed entries kept in memory for replicators and the FSM
    # Largest command `apply` accepts: it must fit one AppendEntries frame with room to spare,
    # or replication of everything after it would stall for ever.
    max_command_bytes: int = 8 * 1024 * 1024
    # Back-pressure: a leader holds at most this many proposals (entries, and bytes of their
    # commands) appended but not yet applied; past it `apply` fails fast with OverloadedError.
    max_pending_entries: int = 32768
    max_pending_bytes: int = 64 * 1024 * 1024
    # Snapshots (hashicorp/raft's SnapshotThreshold, SnapshotInterval and TrailingLogs; SOFAJRaft's
    # snapshotIntervalSecs and snapshotLogIndexMargin). They take effect only on a node started
    # with a snapshot storage and a state machine that can save and load itself.
    snapshot_threshold: int = 8192  # snapshot after this many applied entries; 0 = never by count
    snapshot_interval: float = 120.0  # and at least this often when something was applied; 0 = off
    snapshot_log_margin: int = 4096  # entries kept before a snapshot, for slightly slow followers
    snapshot_chunk_bytes: int = 1024 * 1024  # InstallSnapshot data per chunk
    snapshot_max_inflight: int = 4  # InstallSnapshot chunks in flight per follower
    snapshot_throttle_bytes: int = 0  # per-follower InstallSnapshot bytes/s; 0 = unthrottled
    # Membership changes (actors/membership.py): a peer being added must get within this many
    # entries of the leader's last index (catchupMargin 1000) before it may vote; it fails the
    # change once it made no progress for an election timeout.
    catchup_margin: int = 1000
    # SOFAJRaft's electionPriority: -1 disabled (everyone campaigns alike), 0 never leads,
    # higher values are preferred (actors/priority.py).
    election_priority: int = -1

    def __post_init__(self) -> None:
        checks = {
            "election_timeout must be > 0": self.election_timeout > 0,
            "leader_lease_ratio must be in (0, 1]": 0 < self.leader_lease_ratio <= 1,
            "heartbeat_ratio must be >= 2": self.heartbeat_ratio >= 2,
            "max_inflight must be >= 1": self.max_inflight >= 1,
            "max_entries_per_request must be >= 1": self.max_entries_per_request >= 1,
            "max_body_bytes must be >= 1": self.max_body_bytes >= 1,
            "max_apply_batch must be >= 1": self.max_apply_batch >= 1,
            "log_tail_entries must be >= 0": self.log_tail_entries >= 0,
            "max_election_delay must be >= 0": (self.max_election_delay or 0) >= 0,
            "block_interval must be > 0": self.block_interval is None or self.block_interval > 0,
            "rpc_timeout must be > 0": self.rpc_timeout is None or self.rpc_timeout > 0,
            "max_command_bytes must be >= 1 and leave room in a frame": (
                1 <= self.max_command_bytes <= DEFAULT_MAX_FRAME_SIZE - FRAME_HEADROOM
            ),
            "max_pending_entries must be >= 1": self.max_pending_entries >= 1,
            "max_pending_bytes must be >= max_command_bytes": (
                self.max_pending_bytes >= self.max_command_bytes
            ),
            "snapshot_threshold must be >= 0": self.snapshot_threshold >= 0,
            "snapshot_interval must be >= 0": self.snapshot_interval >= 0,
            "snapshot_log_margin must be >= 0": self.snapshot_log_margin >= 0,
            "snapshot_chunk_bytes must be >= 1 and leave room in a frame": (
                1 <= self.snapshot_chunk_bytes <= DEFAULT_MAX_FRAME_SIZE - FRAME_HEADROOM
            ),
            "snapshot_max_inflight must be >= 1": self.snapshot_max_inflight >= 1,
            "catchup_margin must be >= 0": self.catchup_margin >= 0,
            "election_priority must be in -1..2**31-1": -1 <= self.election_priority < 2**31,
            "snapshot_throttle_bytes must be 0 or >= snapshot_chunk_bytes": (
                self.snapshot_throttle_bytes == 0
                or self.snapshot_throttle_bytes >= self.snapshot_chunk_bytes
            ),
        }
        for message, ok in checks.items():
            if not ok:
                raise OptionsError(message)

    @property
    def election_delay(self) -> float:
        return self.election_timeout if self.max_election_delay is None else self.max_election_delay

    @property
    def heartbeat_interval(self) -> float:
        return self.election_timeout / self.heartbeat_ratio

    @property
    def lease_timeout(self) -> float:
        return self.election_timeout * self.leader_lease_ratio

    @property
    def replicator_block(self) -> float:
        return self.heartbeat_interval if self.block_interval is None else self.block_interval

    @property
    def replicator_rpc_timeout(self) -> float:
        # Half the election timeout: a lost request is retried before any follower's election
        # timer (at least one election timeout) can fire.
        return self.election_timeout / 2 if self.rpc_timeout is None else self.rpc_timeout


@dataclass(frozen=True)
class NodeOptions:
    """Who this node is and whom it starts with.

    `initial_conf` bootstraps a brand-new cluster: it is used only while the node's own log and
    snapshot hold no configuration (afterwards the durable one rules, whatever this says).
    With `join` a brand-new node starts with no configuration at all: it never campaigns,
    follows a leader among `initial_conf`'s peers (contact hints only) and learns its
    configuration from the log once that leader has added it.

    `cluster_token` tells apart clusters founded with the same peers: a founding node's cluster
    id is derived from `initial_conf` and the token (actors/identity.py); a joining node takes
    its leader's."""

    peer_id: str
    initial_conf: Configuration
    raft: RaftOptions = field(default_factory=RaftOptions)
    join: bool = False
    cluster_token: str = ""

    def __post_init__(self) -> None:
        if not self.peer_id:
            raise OptionsError("peer_id must not be empty")
        if not self.initial_conf.peers:
            raise OptionsError("initial_conf must name at least one peer")
        if not self.join and self.peer_id not in self.initial_conf.all_peers():
            raise OptionsError(
                f"peer_id {self.peer_id} is not in the configuration {self.initial_conf}"
            )
