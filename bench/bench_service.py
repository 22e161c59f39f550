"""Benchmark the replicated KV service on this machine: a local 3-peer cluster, 100-byte values.

    python bench/bench_service.py [--seconds 5] [--no-fsync] [--clients 64]

Measures, and prints as a table:
  (a) one client doing synchronous puts through KVClient: puts/s, p50/p99 latency;
  (b) many concurrent clients (64 by default, one request in flight each): puts/s, p50/p99;
  (c) commands applied through the embedding facade inside the leader's process, many in
      flight (how PySyncObj is usually measured): commands/s;
then each peer's resident memory. Peers are real processes (launcher.py run --self); for (c)
the leader is hosted in this process and the followers are processes.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from actors.configuration import Configuration  # noqa: E402
from actors.options import NodeOptions, RaftOptions  # noqa: E402
from actors.raft_node import RaftNode  # noqa: E402
from actors.service.kv_server import KVServer  # noqa: E402
from actors.service.kv_store import KVStateMachine  # noqa: E402
from actors.service.local_peer import LocalPeer  # noqa: E402
from actors.service.peer import PeerConfig, peer_data_dir  # noqa: E402
from actors.wait import wait_until  # noqa: E402
from storage.log_storage import SegmentLogStorage  # noqa: E402
from storage.meta_storage import FileMetaStorage  # noqa: E402
from transport import codec  # noqa: E402
from transport.client import KVClient  # noqa: E402
from transport.kv_protocol import PUT, KVCommand, LoggedCommand, encode_command, encode_logged  # noqa: E402
from transport.peers import free_ports  # noqa: E402
from transport.rpc import ClientRequest, ClientResponse, ClientStatus  # noqa: E402
from transport.zmq_transport import ZmqTransport  # noqa: E402

VALUE = "v" * 100


def start_peer(peer: str, peers: list[str], data: Path, fsync: bool, timeout_ms: int) -> LocalPeer:
    config = PeerConfig(peer, tuple(peers), data, timeout_ms, fsync)
    local = LocalPeer(config, log_path=data / "logs" / f"{config.peer_dir.name}.log")
    local.start()
    return local


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def print_latencies(name: str, samples: list[float]) -> None:
    """One line: p50 / p90 / max of `samples` (seconds), in ms."""
    p50, p90 = 1000 * percentile(samples, 0.5), 1000 * percentile(samples, 0.9)
    print(f"  {name:28s} p50 {p50:6.1f} ms  p90 {p90:6.1f} ms  max {1000 * max(samples):6.1f} ms")


def wait_leader(peers: list[str], deadline_s: float = 30.0) -> str:
    end = time.monotonic() + deadline_s
    with KVClient(peers, timeout=10.0) as client:
        client.put("warmup", "x")  # returns once a leader has committed it
        while time.monotonic() < end:
            leaders = [s["id"] for s in client.status() if s.get("role") == "leader"]
            if len(leaders) == 1:
                return leaders[0]
    raise RuntimeError("no leader")


def bench_sync_client(peers: list[str], seconds: float) -> dict[str, float]:
    latencies = []
    with KVClient(peers, timeout=10.0) as client:
        for n in range(50):  # warm up: connections, leader found
            client.put(f"w{n}", VALUE)
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            start = time.perf_counter()
            client.put(f"sync-{n}", VALUE)
            latencies.append(time.perf_counter() - start)
            n += 1
    return {
        "ops/s": len(latencies) / seconds,
        "p50 ms": 1000 * percentile(latencies, 0.5),
        "p99 ms": 1000 * percentile(latencies, 0.99),
    }


def bench_concurrent(leader: str, clients: int, seconds: float) -> dict[str, float]:
    """`clients` DEALER sockets, one request in flight each, all driven from one thread."""
    context = zmq.Context()
    poller = zmq.Poller()
    sockets: list[tuple[zmq.Socket[bytes], str]] = []
    for _ in range(clients):
        client_id = f"bench-{uuid.uuid4().hex}"
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, client_id.encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://{leader}")
        poller.register(sock, zmq.POLLIN)
        sockets.append((sock, client_id))
    seqs = dict.fromkeys((cid for _, cid in sockets), 0)
    sent_at: dict[str, float] = {}
    ids = itertools.count(1)
    latencies: list[float] = []
    errors = 0

    def send(sock: zmq.Socket[bytes], client_id: str) -> None:
        seqs[client_id] += 1
        command = encode_command(KVCommand(PUT, f"{client_id}-{seqs[client_id]}", VALUE))
        sock.send(codec.encode(ClientRequest(client_id, next(ids), seqs[client_id], command)))
        sent_at[client_id] = time.perf_counter()

    by_socket = {sock: cid for sock, cid in sockets}
    for sock, cid in sockets:
        send(sock, cid)
    start = time.monotonic()
    end = start + seconds
    while time.monotonic() < end:
        for sock, _ in poller.poll(1000):
            reply = codec.decode(sock.recv())
            assert isinstance(reply, ClientResponse)
            cid = by_socket[sock]
            if reply.status == ClientStatus.OK:
                latencies.append(time.perf_counter() - sent_at[cid])
            else:
                errors += 1
            send(sock, cid)
    elapsed = time.monotonic() - start
    for sock, _ in sockets:
        sock.close()
    context.term()
    return {
        "ops/s": len(latencies) / elapsed,
        "p50 ms": 1000 * percentile(latencies, 0.5),
        "p99 ms": 1000 * percentile(latencies, 0.99),
        "errors": errors,
    }


def bench_embedded(
    data: Path, fsync: bool, seconds: float, window: int = 4096
) -> tuple[dict[str, float], list[LocalPeer]]:
    """Host the leader in this process (short election timeout so it wins) and apply commands
    through RaftNode.apply_batch, keeping `window` commands in flight."""
    peers = [f"127.0.0.1:{p}" for p in free_ports(3)]
    me = peers[0]
    followers = [start_peer(p, peers, data / "embedded", fsync, 5000) for p in peers[1:]]
    peer_dir = peer_data_dir(data / "embedded", me)
    peer_dir.mkdir(parents=True)
    transport = ZmqTransport(me, f"tcp://{me}", peers)
    node = RaftNode.start(
        NodeOptions(me, Configuration.of(peers), RaftOptions(election_timeout=0.3)),
        KVStateMachine(),
        SegmentLogStorage(peer_dir / "log", sync=fsync),
        FileMetaStorage(peer_dir / "meta"),
        transport,
    )
    KVServer(node, transport)
    wait_until(lambda: node.is_leader, "the embedded peer to lead", 30.0)
    command = encode_logged(LoggedCommand("embedded", 0, KVCommand(PUT, "k", VALUE)))
    batch = 256
    inflight: list[Any] = []
    done = 0
    pids = [follower.pid for follower in followers]
    cpu = _cpu_seconds([psutil.Process()]), _cpu_seconds(map(psutil.Process, pids))
    start = time.monotonic()
    end = start + seconds
    while time.monotonic() < end:
        while len(inflight) * batch < window:
            inflight.append(node.apply_batch([command] * batch))
        for future in inflight.pop(0):
            future.get(timeout=30)
        done += batch
    for futures in inflight:
        for future in futures:
            future.get(timeout=30)
        done += batch
    elapsed = time.monotonic() - start
    leader_cpu = _cpu_seconds([psutil.Process()]) - cpu[0]
    followers_cpu = _cpu_seconds(map(psutil.Process, pids)) - cpu[1]
    rss = psutil.Process().memory_info().rss / 2**20
    node.stop()
    return {
        "ops/s": done / elapsed,
        "leader CPU us/op": leader_cpu / done * 1e6,  # the leader's process, driver included
        "followers CPU us/op": followers_cpu / done * 1e6,  # both followers together
        "leader RSS MiB": rss,
    }, followers


def _cpu_seconds(processes: Iterable[psutil.Process]) -> float:
    """User + system CPU seconds of `processes`, every thread."""
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--no-fsync", action="store_true")
    args = parser.parse_args()
    fsync = not args.no_fsync
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        data = Path(tmp)
        peers = [f"127.0.0.1:{p}" for p in free_ports(3)]
        procs = [start_peer(p, peers, data / "cluster", fsync, 1000) for p in peers]
        try:
            leader = wait_leader(peers)
            rows = [
                ("(a) 1 sync client", bench_sync_client(peers, args.seconds)),
                (
                    f"(b) {args.clients} concurrent clients",
                    bench_concurrent(leader, args.clients, args.seconds),
                ),
            ]
            rss = {
                p: psutil.Process(proc.pid).memory_info().rss / 2**20
                for p, proc in zip(peers, procs, strict=True)
            }
        finally:
            for proc in procs:
                proc.stop()
        embedded, followers = bench_embedded(data, fsync, args.seconds)
        for proc in followers:
            proc.stop()
        rows.append(("(c) embedded facade, many in flight", embedded))
    print(f"\n3 peers, 100-byte values, fsync {'on' if fsync else 'OFF'}, {args.seconds:.0f}s each")
    for name, result in rows:
        cells = "  ".join(
            f"{k}={v:,.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
        )
        print(f"{name:40s} {cells}")
    print("peer RSS after (a)+(b): " + ", ".join(f"{p}={m:.1f} MiB" for p, m in rss.items()))


if __name__ == "__main__":
    main()
