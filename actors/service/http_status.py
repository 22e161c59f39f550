"""A peer's HTTP face for operators: /metrics, /health, /status and a status page at /.

    server = StatusHTTPServer(node, ("127.0.0.1", 9001), data_dir)   # serves on its own thread
    server.close()

- `/metrics`: the Prometheus text format, written by prometheus_client from a registry of this
  peer's own. Its collector reads, when scraped, the node's status (`RaftNode.status`), the
  counters and histograms the actors keep (`RaftNode.metrics`, actors/metrics.py: a hot path
  pays an increment or a bisect for them, never a call into prometheus_client) and the
  process's figures from psutil.
- `/health`: 200 and a small JSON body when the peer is serving (leader or follower, not in
  ERROR) and knows a leader; 503 otherwise. What load balancers and Kubernetes probes call.
- `/status`: the same JSON as `launcher.py client status` prints for this peer.
- `/`: a page that shows the cluster as this peer sees it, refreshed in place every second
  from /status (a leader also knows each follower's match index, lag and last contact).

Authentication: with a `token` (a peer run with --keys: the key directory's `http/token`,
transport/security.py) every route but /health answers 401 unless the request carries the
token, as `Authorization: Bearer TOKEN` (Prometheus' `authorization: credentials_file`, curl
`-H`) or as the password of HTTP Basic authentication, any user name (what a browser asks for,
and then sends with the status page's own requests). /health stays open for probes: it tells
only whether the peer serves. Without a token (no --keys) everything is open, like the
cluster's port: keep such a cluster on a trusted network. The token travels in clear text: put
TLS in front (a reverse proxy) where the network between the operator and the peer is not
trusted.

Threads: the server runs on daemon threads of its own, one per request (ThreadingHTTPServer).
A request asks the Node for its status (blocking that HTTP thread briefly, never an actor).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from actors.metrics import Counter, Histogram, Metrics
from actors.raft_node import RaftNode
from actors.service.offline import disk_bytes
from actors.status import NodeStatus

log = logging.getLogger(__name__)

PREFIX = "pykka_raft"
ROLES = ("follower", "candidate", "leader", "error", "shutdown")
STATUS_TIMEOUT = 2.0  # seconds a request waits for the node's status
SERVING_ROLES = frozenset({"leader", "follower"})
REPLICATION_STATES = ("probe", "replicate", "snapshot")


def is_healthy(status: NodeStatus) -> bool:
    """Serving (leader or follower, not in ERROR) and a leader known."""
    return status.role in SERVING_ROLES and status.leader is not None and status.error is None


class RaftCollector:
    """Builds the metrics at scrape time from the node's status and the process (psutil)."""

    def __init__(self, node: RaftNode, data_dir: Path | None) -> None:
        self.node = node
        self.data_dir = data_dir
        self.process = psutil.Process()

    def collect(self) -> Iterator[Metric]:
        try:
            status = self.node.status(timeout=STATUS_TIMEOUT)
        except Exception as exc:  # stopped, or too busy to answer in time
            log.warning("metrics: no status from the node: %s", exc)
            status = None
        up = GaugeMetricFamily(f"{PREFIX}_up", "1 when the node answered for this scrape")
        up.add_metric([], 1.0 if status is not None else 0.0)
        yield up
        if status is not None:
            yield from self._raft(status)
        yield from hot_path(self.node.metrics)
        yield from self._process()

    def _raft(self, status: NodeStatus) -> Iterator[Metric]:
        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"{PREFIX}_{name}", doc)
            family.add_metric([], value)
            return family

        yield gauge("term", "The current term", status.term)
        role = GaugeMetricFamily(f"{PREFIX}_role", "1 for this peer's role", labels=["role"])
        for name in ROLES:
            role.add_metric([name], 1.0 if status.role == name else 0.0)
        yield role
        yield gauge("leader_known", "1 when this peer knows a leader", status.leader is not None)
        yield gauge("healthy", "1 when serving with a known leader", is_healthy(status))
        indexes = {
            "commit_index": ("Highest log index known committed", status.commit_index),
            "applied_index": ("Highest index applied to the state machine", status.applied_index),
            "last_log_index": ("Last index in the log", status.last_log_index),
            "first_log_index": ("First index still in the log", status.first_log_index),
            "snapshot_index": ("Last index of the newest snapshot", status.snapshot_index),
        }
        for name, (doc, value) in indexes.items():
            yield gauge(name, doc, value)
        yield gauge("members", "Voting members in the configuration", len(status.conf))
        rejected = CounterMetricFamily(
            f"{PREFIX}_rejected_messages",
            "Messages refused as untrusted input, by reason",
            labels=["reason"],
        )
        for reason, count in sorted(status.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        refusals = {
            "bad_frames": "Frames the transport dropped as bad, by reason",
            "refused_connections": "Connections refused in their handshake (--keys), by reason",
        }
        for kind, doc in refusals.items():
            family = CounterMetricFamily(f"{PREFIX}_{kind}", doc, labels=["reason"])
            for reason, count in sorted(status.transport.get(kind, {}).items()):
                family.add_metric([reason], count)
            yield family
        lag = GaugeMetricFamily(
            f"{PREFIX}_follower_lag_entries",
            "Leader only: entries a follower is behind the leader's log",
            labels=["peer"],
        )
        contact = GaugeMetricFamily(
            f"{PREFIX}_follower_last_contact_seconds",
            "Leader only: seconds since a follower last answered",
            labels=["peer"],
        )
        inflight = GaugeMetricFamily(
            f"{PREFIX}_follower_inflight_requests",
            "Leader only: AppendEntries sent to a follower and not answered yet",
            labels=["peer"],
        )
        state = GaugeMetricFamily(
            f"{PREFIX}_follower_state",
            "Leader only: 1 for the replication state a follower is in",
            labels=["peer", "state"],
        )
        for peer, info in sorted(status.followers.items()):
            lag.add_metric([peer], info["lag"])
            contact.add_metric([peer], info["last_contact_s"])
            inflight.add_metric([peer], info.get("inflight", 0))
            for name in REPLICATION_STATES:
                state.add_metric([peer, name], 1.0 if info.get("state") == name else 0.0)
        yield lag
        yield contact
        yield inflight
        yield state

    def _process(self) -> Iterator[Metric]:
        process = self.process
        with process.oneshot():
            memory = process.memory_info().rss
            times = process.cpu_times()
            threads = process.num_threads()
            fds = process.num_fds()
        figures = [
            ("process_resident_memory_bytes", "Resident memory of the peer process", memory),
            ("process_threads", "Threads of the peer process", threads),
            ("process_open_fds", "Open file descriptors of the peer process", fds),
        ]
        for name, doc, value in figures:
            family = GaugeMetricFamily(f"{PREFIX}_{name}", doc)
            family.add_metric([], value)
            yield family
        cpu = CounterMetricFamily(
            f"{PREFIX}_process_cpu_seconds", "CPU time of the peer process (user + system)"
        )
        cpu.add_metric([], times.user + times.system)
        yield cpu
        if self.data_dir is not None:
            family = GaugeMetricFamily(
                f"{PREFIX}_data_dir_bytes", "Bytes in the peer's data directory (log, snapshots)"
            )
            family.add_metric([], disk_bytes(self.data_dir))
            yield family


def hot_path(metrics: Metrics) -> Iterator[Metric]:
    """The actors' counters and histograms as Prometheus families (counters get `_total`)."""
    for family in metrics.families():
        name = f"{PREFIX}_{family.name}"
        if isinstance(family, Counter):
            counter = CounterMetricFamily(name, family.doc, labels=family.labels)
            for sample in family.samples():
                counter.add_metric(sample.labels, sample.value)
            yield counter
        elif isinstance(family, Histogram):
            histogram = HistogramMetricFamily(name, family.doc, labels=family.labels)
            bounds = [*map(floatToGoString, family.bounds), "+Inf"]  # as prometheus_client does
            for h in family.samples():
                histogram.add_metric(h.labels, list(zip(bounds, h.buckets, strict=True)), h.sum)
            yield histogram


class StatusHTTPServer:
    """See the module docstring. Raises OSError if `address` cannot be bound."""

    def __init__(
        self,
        node: RaftNode,
        address: tuple[str, int],
        data_dir: Path | None = None,
        token: str | None = None,
    ) -> None:
        self.node = node
        self.token = token
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RaftCollector(node, data_dir))
        handler = type("Handler", (_Handler,), {"app": self})
        self._server = ThreadingHTTPServer(address, handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},  # how soon close() takes effect
            name="http-status",
            daemon=True,
        )
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # -- the routes ---------------------------------------------------------------------------

    def route(self, path: str, authorization: str | None = None) -> tuple[int, str, bytes]:
        """(HTTP status, content type, body) for a GET of `path` with that Authorization
        header."""
        path = path.split("?", 1)[0]
        if path != "/health" and not self.authorized(authorization):
            return HTTPStatus.UNAUTHORIZED, JSON, _json({"error": "authentication required"})
        if path == "/metrics":
            return HTTPStatus.OK, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path in ("/health", "/status"):
            status = self._status()
            if path == "/status":
                body: dict[str, Any] = status.to_json() if status else {"error": "no status"}
                return (
                    (HTTPStatus.OK if status else HTTPStatus.SERVICE_UNAVAILABLE),
                    JSON,
                    _json(body),
                )
            healthy = status is not None and is_healthy(status)
            summary = {
                "healthy": healthy,
                "id": status.id if status else None,
                "role": status.role if status else "unknown",
                "leader": status.leader if status else None,
                "term": status.term if status else None,
            }
            code = HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE
            return code, JSON, _json(summary)
        if path in ("/", "/index.html"):
            return HTTPStatus.OK, "text/html; charset=utf-8", PAGE.encode()
        return HTTPStatus.NOT_FOUND, JSON, _json({"error": f"no such page: {path[:100]}"})

    def authorized(self, authorization: str | None) -> bool:
        """Whether an Authorization header carries the token (always, without a token)."""
        if self.token is None:
            return True
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        offered = credentials.strip()
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(offered, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            offered = decoded.partition(":")[2]  # user:password; the user name is not checked
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(offered.encode(), self.token.encode())

    def _status(self) -> NodeStatus | None:
        try:
            return self.node.status(timeout=STATUS_TIMEOUT)
        except Exception as exc:
            log.warning("http: no status from the node: %s", exc)
            return None


JSON = "application/json"


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


class _Handler(BaseHTTPRequestHandler):
    app: StatusHTTPServer
    server_version = "pykka-raft"

    def do_GET(self) -> None:
        try:
            code, content_type, body = self.app.route(self.path, self.headers.get("Authorization"))
        except Exception:
            log.exception("http: %s failed", self.path[:100])
            code, content_type, body = (
                HTTPStatus.INTERNAL_SERVER_ERROR,
                JSON,
                b'{"error":"internal"}',
            )
        self.send_response(code)
        if code == HTTPStatus.UNAUTHORIZED:
            for scheme in ("Bearer", "Basic"):  # a browser offers its password dialog for Basic
                self.send_header("WWW-Authenticate", f'{scheme} realm="pykka-raft"')
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


PAGE = (Path(__file__).with_name("status_page.html")).read_text(encoding="utf-8")
"""The status page (static HTML and script; the data comes from /status)."""
