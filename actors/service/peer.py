"""One peer of the replicated KV service: its storage, transport, Raft node and KV server.

This is what `launcher.py run --self H:P` runs. The launcher parses the command line and handles
signals; this module owns the data layout and the readiness line:

- a peer keeps its data in `DATA_DIR/<host>_<port>/` (`log/` segments, `meta` (the term and
  vote) and `snapshot/`, the newest snapshots), so a peer restarted by the supervisor or by hand
  with `--self` finds its state;
- once it is serving it prints one line containing `READY_MARK`, which the launcher's
  supervisor, the tests, the chaos runner and the benchmarks wait for (see local_peer.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from actors.clock import RealClock
from actors.configuration import Configuration
from actors.errors import OptionsError
from actors.options import NodeOptions, RaftOptions
from actors.raft_node import RaftNode
from actors.service.errors import ServiceError
from actors.service.http_status import StatusHTTPServer
from actors.service.kv_server import KVServer
from actors.service.kv_store import KVStateMachine
from storage.errors import StorageError
from storage.log_storage import SegmentLogStorage
from storage.meta_storage import FileMetaStorage
from storage.snapshot_storage import SnapshotStorage
from transport.errors import BindError
from transport.peers import parse_peer
from transport.security import KeyDirectoryError, PeerSecurity, read_http_token
from transport.zmq_transport import ZmqTransport, peer_address

READY_MARK = " serving (pid "
"""Part of the line a peer prints once it serves: `peer H:P serving (pid N, data in DIR)`."""

ORPHAN_CHECK_INTERVAL = 1.0  # seconds between checks that the supervisor is still there


class PeerStartError(ServiceError):
    """The peer cannot start: its data directory is unusable or its port is taken."""


class PeerFailedError(ServiceError):
    """The peer entered ERROR while serving. It stopped cleanly; a supervisor restarts it from
    its durable state (crash-only), which is how it recovers."""


def peer_data_dir(data_dir: Path | str, peer_id: str) -> Path:
    """Where `peer_id` keeps its data under `data_dir`: `<data_dir>/<host>_<port>`."""
    host, port = parse_peer(peer_id)
    return Path(data_dir) / f"{host}_{port}"


@dataclass(frozen=True)
class PeerConfig:
    """Everything one peer process needs; the launcher builds it from its flags."""

    peer_id: str
    peers: tuple[str, ...]
    data_dir: Path
    election_timeout_ms: int = 1000
    fsync: bool = True  # False for benchmarks only: a power failure loses acknowledged writes
    snapshot_threshold: int = RaftOptions.snapshot_threshold
    snapshot_interval_s: float = RaftOptions.snapshot_interval
    snapshot_log_margin: int = RaftOptions.snapshot_log_margin
    snapshot_throttle_bytes: int = 0  # per follower, bytes/s; 0 = unthrottled
    http: str | None = None  # H:P of the operators' HTTP server (/metrics, /health, ...)
    keys: Path | None = None  # CurveZMQ key directory (transport.security); None: plaintext
    # A brand-new peer that waits to be added (`admin add-peer`) instead of bootstrapping:
    # `peers` are then only contact hints, and need not include `peer_id`.
    join: bool = False
    priority: int = RaftOptions.election_priority  # -1: disabled, 0: never leads, higher wins
    # Tells apart clusters founded with the same --peers (actors/identity.py): used only by a
    # brand-new founding peer, to derive the cluster id it persists.
    cluster_token: str = ""
    # The Raft clock's rate against the machine's (actors.clock.RealClock): the chaos runner's
    # clock nemesis only, through the launcher's hidden --clock-rate.
    clock_rate: float = 1.0

    @property
    def peer_dir(self) -> Path:
        return peer_data_dir(self.data_dir, self.peer_id)

    @property
    def contacts(self) -> tuple[str, ...]:
        """The other peers of `peers`: whom the transport connects to at start (more are
        added as the configuration names them)."""
        return tuple(p for p in self.peers if p != self.peer_id)

    def node_options(self) -> NodeOptions:
        """Raises OptionsError for a bad configuration (e.g. peer_id not among peers without
        `join`, or a joining peer with no other peer to contact). Whatever `peers` says, a peer
        with durable state uses the configuration of its own log and snapshot."""
        raft = RaftOptions(
            election_timeout=self.election_timeout_ms / 1000,
            snapshot_threshold=self.snapshot_threshold,
            snapshot_interval=self.snapshot_interval_s,
            snapshot_log_margin=self.snapshot_log_margin,
            snapshot_throttle_bytes=self.snapshot_throttle_bytes,
            election_priority=self.priority,
        )
        if self.join:
            if not self.contacts:
                raise OptionsError(
                    f"a joining peer needs the address of a running peer besides itself "
                    f"({self.peer_id})"
                )
            # Contact hints only: the configuration comes from the leader that adds it.
            return NodeOptions(self.peer_id, Configuration.of(self.contacts), raft, join=True)
        conf = Configuration.of(self.peers)
        return NodeOptions(self.peer_id, conf, raft, cluster_token=self.cluster_token)


def _serve_http(
    node: RaftNode, address: str, peer_dir: Path, token: str | None
) -> StatusHTTPServer:
    host, port = parse_peer(address)
    try:
        return StatusHTTPServer(node, (host, port), peer_dir, token)
    except OSError as error:
        raise PeerStartError(f"cannot serve HTTP on {address}: {error}") from error


def run_peer(
    config: PeerConfig,
    stop: threading.Event,
    orphaned: Callable[[], bool] = lambda: False,
) -> None:
    """Serve until `stop` is set or `orphaned()` turns true (checked every second), then stop
    cleanly. Raises OptionsError for a bad configuration, PeerStartError when the data
    directory or the port cannot be used, and PeerFailedError (after stopping cleanly) when the
    peer entered ERROR: it sets `stop` then, so the wait ends at once."""
    options = config.node_options()
    peer_dir = config.peer_dir
    try:
        peer_dir.mkdir(parents=True, exist_ok=True)
        log_storage = SegmentLogStorage(peer_dir / "log", sync=config.fsync)
        meta = FileMetaStorage(peer_dir / "meta")
        snapshots = SnapshotStorage(peer_dir / "snapshot", sync=config.fsync)
    except (StorageError, OSError) as error:
        raise PeerStartError(f"cannot use data directory {peer_dir}: {error}") from error
    try:
        security, http_token = None, None
        if config.keys is not None:
            security = PeerSecurity(config.keys, config.peer_id)  # checks our own key
            security.check_peers(list(config.contacts))
            if config.http is not None:
                http_token = read_http_token(config.keys)  # /status and /metrics need it
    except KeyDirectoryError as error:
        raise PeerStartError(f"cannot use keys: {error}") from error
    transport = ZmqTransport(
        config.peer_id, peer_address(config.peer_id), config.contacts, security=security
    )
    failure: list[str] = []
    clock = RealClock(config.clock_rate)  # ours, not the node's: stopped after the node

    def on_error(reason: str) -> None:  # on the Node's thread: only record and wake
        failure.append(reason)
        stop.set()

    try:
        node = RaftNode.start(
            options,
            KVStateMachine(),
            log_storage,
            meta,
            transport,
            clock=clock,
            on_error=on_error,
            snapshot_storage=snapshots,
        )
    except (StorageError, OSError) as error:  # e.g. the log does not continue the snapshot
        clock.stop()
        raise PeerStartError(f"cannot use data directory {peer_dir}: {error}") from error
    except BindError as error:
        clock.stop()
        _, port = parse_peer(config.peer_id)
        raise PeerStartError(f"cannot listen: {error.reason} (port {port} in use?)") from error
    http: StatusHTTPServer | None = None
    try:
        KVServer(node, transport)
        if config.http is not None:
            http = _serve_http(node, config.http, peer_dir, http_token)
        print(f"peer {config.peer_id}{READY_MARK}{os.getpid()}, data in {peer_dir})", flush=True)
        while not stop.wait(ORPHAN_CHECK_INTERVAL):
            if orphaned():
                break
    finally:
        if http is not None:
            http.close()
        node.stop()
        clock.stop()
    if failure:
        raise PeerFailedError(f"entered ERROR: {failure[0]}")
    print(f"peer {config.peer_id} stopped", flush=True)
