"""The operators' HTTP face, without a cluster: metrics from a status, health, routes."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from actors.metrics import RaftMetrics
from actors.service.http_status import StatusHTTPServer, is_healthy
from actors.status import NodeStatus


def status(**changes: Any) -> NodeStatus:
    fields: dict[str, Any] = {
        "id": "a:1",
        "role": "leader",
        "term": 7,
        "leader": "a:1",
        "voted_for": "a:1",
        "commit_index": 120,
        "applied_index": 119,
        "last_log_index": 125,
        "pid": 1,
        "conf": ["a:1", "b:2", "c:3"],
        "first_log_index": 40,
        "snapshot_index": 100,
        "snapshot_term": 6,
        "followers": {
            "b:2": {"match_index": 125, "lag": 0, "last_contact_s": 0.05},
            "c:3": {
                "match_index": 90,
                "lag": 35,
                "last_contact_s": 2.5,
                "state": "snapshot",
                "inflight": 2,
            },
        },
        "rejected": {"append_entries_from_non_member": 3},
    }
    fields.update(changes)
    return NodeStatus(**fields)


class StubNode:
    def __init__(self, answer: NodeStatus | Exception) -> None:
        self.answer = answer
        self.metrics = RaftMetrics()

    def status(self, timeout: float = 5.0) -> NodeStatus:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.fixture
def make_server(tmp_path: Path) -> Any:
    servers: list[StatusHTTPServer] = []

    def make(answer: NodeStatus | Exception, token: str | None = None) -> StatusHTTPServer:
        (tmp_path / "log").mkdir(exist_ok=True)
        (tmp_path / "log" / "seg").write_bytes(b"x" * 1000)
        node: Any = StubNode(answer)
        server = StatusHTTPServer(node, ("127.0.0.1", 0), tmp_path, token)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def samples(server: StatusHTTPServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(server.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_are_the_status_in_prometheus_names(make_server: Any) -> None:
    got = samples(make_server(status()))
    assert got[("pykka_raft_up", ())] == 1.0
    assert got[("pykka_raft_term", ())] == 7
    assert got[("pykka_raft_role", (("role", "leader"),))] == 1.0
    assert got[("pykka_raft_role", (("role", "follower"),))] == 0.0
    for name, value in [
        ("commit_index", 120), ("applied_index", 119), ("last_log_index", 125),
        ("first_log_index", 40), ("snapshot_index", 100), ("members", 3), ("healthy", 1),
    ]:  # fmt: skip
        assert got[(f"pykka_raft_{name}", ())] == value, name
    assert got[("pykka_raft_follower_lag_entries", (("peer", "c:3"),))] == 35
    assert got[("pykka_raft_follower_last_contact_seconds", (("peer", "c:3"),))] == 2.5
    assert got[("pykka_raft_follower_inflight_requests", (("peer", "c:3"),))] == 2
    in_state = [k[1][1][1] for k, v in got.items() if k[0] == "pykka_raft_follower_state" and v]
    assert in_state == ["snapshot"]
    reason = (("reason", "append_entries_from_non_member"),)
    assert got[("pykka_raft_rejected_messages_total", reason)] == 3
    assert got[("pykka_raft_process_resident_memory_bytes", ())] > 1_000_000
    assert got[("pykka_raft_process_cpu_seconds_total", ())] > 0
    assert got[("pykka_raft_process_threads", ())] >= 1
    assert got[("pykka_raft_data_dir_bytes", ())] == 1000


def test_a_node_that_does_not_answer_is_down_in_the_metrics(make_server: Any) -> None:
    server = make_server(TimeoutError("busy"))
    server.node.metrics.proposals.cell("appended").inc(2)
    got = samples(server)
    assert got[("pykka_raft_up", ())] == 0.0
    assert ("pykka_raft_term", ()) not in got
    assert got[("pykka_raft_process_threads", ())] >= 1  # the process figures still come
    assert got[("pykka_raft_proposals_total", (("outcome", "appended"),))] == 2  # and these


def test_the_actors_counters_and_histograms_are_prometheus_families(make_server: Any) -> None:
    server = make_server(status())
    metrics: RaftMetrics = server.node.metrics
    fsync = metrics.fsync_seconds.cell()
    for seconds in (0.003, 0.004, 0.2):
        fsync.observe(seconds)
    metrics.proposals.cells("appended", "not_leader")["appended"].inc(5)
    metrics.snapshots.cell("save", "ok").inc()
    metrics.snapshot_seconds.cell("save").observe(2.0)
    metrics.append_entries_bytes.cell().observe(5000)
    requests = metrics.counter("client_requests", "by op and status", ["op", "status"])
    requests.cell("put", "ok").inc(3)

    text = generate_latest(server.registry).decode()
    kinds = {f.name: f.type for f in text_string_to_metric_families(text)}
    got = samples(server)
    for name in ("fsync_seconds", "apply_seconds", "snapshot_seconds"):
        assert kinds[f"pykka_raft_{name}"] == "histogram", name
    for name in ("proposals", "elections", "snapshots", "client_requests"):
        assert kinds[f"pykka_raft_{name}"] == "counter", name
    fsync_le = {
        le: got[("pykka_raft_fsync_seconds_bucket", (("le", le),))]
        for le in ("0.0025", "0.005", "0.25", "+Inf")
    }
    assert fsync_le == {"0.0025": 0, "0.005": 2, "0.25": 3, "+Inf": 3}
    assert got[("pykka_raft_fsync_seconds_count", ())] == 3
    assert got[("pykka_raft_fsync_seconds_sum", ())] == pytest.approx(0.207)
    assert got[("pykka_raft_proposals_total", (("outcome", "appended"),))] == 5
    assert got[("pykka_raft_proposals_total", (("outcome", "not_leader"),))] == 0
    save = (("operation", "save"), ("outcome", "ok"))
    assert got[("pykka_raft_snapshots_total", save)] == 1
    assert got[("pykka_raft_snapshot_seconds_sum", (("operation", "save"),))] == 2.0
    assert got[("pykka_raft_snapshot_seconds_bucket", (("le", "5.0"), ("operation", "save")))] == 1
    assert got[("pykka_raft_append_entries_batch_bytes_bucket", (("le", "16384.0"),))] == 1
    assert got[("pykka_raft_client_requests_total", (("op", "put"), ("status", "ok")))] == 3
    assert "pykka_raft_leader_changes_total" in text  # no writer yet: no sample, but described


@pytest.mark.parametrize(
    ("changes", "healthy"),
    [
        pytest.param({}, True, id="leader"),
        pytest.param({"role": "follower", "leader": "b:2"}, True, id="follower with a leader"),
        pytest.param({"role": "follower", "leader": None}, False, id="no leader known"),
        pytest.param({"role": "candidate", "leader": None}, False, id="candidate"),
        pytest.param({"role": "error", "leader": None, "error": "disk"}, False, id="in ERROR"),
    ],
)
def test_health_is_serving_with_a_known_leader(
    make_server: Any, changes: dict[str, Any], healthy: bool
) -> None:
    node_status = status(**changes)
    assert is_healthy(node_status) is healthy
    code, content_type, body = make_server(node_status).route("/health")
    assert (code, content_type) == ((200 if healthy else 503), "application/json")
    assert json.loads(body)["healthy"] is healthy


def test_routes(make_server: Any) -> None:
    server = make_server(status())
    code, _, body = server.route("/status?x=1")
    assert code == 200 and json.loads(body) == status().to_json()
    code, content_type, page = server.route("/")
    assert code == 200 and content_type.startswith("text/html")
    assert b'fetch("/status"' in page and b"<title>pykka-raft peer</title>" in page
    assert server.route("/nope")[0] == 404
    assert make_server(TimeoutError("busy")).route("/status")[0] == 503


TOKEN = "s3cret-token-of-the-cluster"


@pytest.mark.parametrize(
    ("authorization", "allowed"),
    [
        (None, False),
        ("", False),
        (f"Bearer {TOKEN}", True),
        (f"bearer  {TOKEN} ", True),
        (f"Bearer {TOKEN}x", False),
        ("Bearer ", False),
        ("Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode(), True),
        ("Basic " + base64.b64encode(f":{TOKEN}".encode()).decode(), True),
        ("Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode(), False),  # a user, no password
        ("Basic not-base64!", False),
        (f"Token {TOKEN}", False),
    ],
)
def test_with_a_token_only_health_is_open(
    make_server: Any, authorization: str | None, allowed: bool
) -> None:
    server = make_server(status(), TOKEN)
    for path in ("/status", "/metrics", "/", "/nope"):
        code, _, body = server.route(path, authorization)
        if allowed:
            assert code != 401, path
        else:
            assert (code, json.loads(body)) == (401, {"error": "authentication required"}), path
    assert server.route("/health", authorization)[0] == 200


def test_a_refused_request_is_told_how_to_authenticate(make_server: Any) -> None:
    host, port = make_server(status(), TOKEN).address
    request = urllib.request.Request(f"http://{host}:{port}/status")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    refused.value.close()  # its socket
    assert refused.value.code == 401
    challenges = refused.value.headers.get_all("WWW-Authenticate")
    assert challenges == ['Bearer realm="pykka-raft"', 'Basic realm="pykka-raft"']
    request.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200 and json.loads(answer.read())["id"] == "a:1"
