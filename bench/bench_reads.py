"""Reads and writes through the public KVClient, the way users load the service: a local
3-peer cluster (fsync on), 8 processes x 8 threads with a KVClient each (64 in flight), and
one synchronous client. For put and for get at each consistency it prints the rate, the p50
latency of one client, and the CPU seconds per operation of the peers and of the clients.
Then the embedded rate: commands applied through RaftNode.apply_batch in the leader's own
process (followers are processes; fsync on), ~1,000 in flight.

    pip install -e '.[bench]'   # PySyncObj, for the comparison
    python bench/bench_reads.py [--ops 20000] [--single 2000] [--seconds 5]

In the same run, for comparison: when `etcd` is on PATH (Debian: `apt-get install
etcd-server`), the same client loads against a local 3-member etcd (bench/etcd_local.py); and
when PySyncObj is installed, its embedded rate in its best mode (async, a window of 1,000;
bench/pysyncobj_local.py). The ratios are printed last.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import pysyncobj_local  # noqa: E402
from bench_service import bench_embedded  # noqa: E402
from bench_snapshots import VALUE, Cluster  # noqa: E402
from etcd_local import EtcdClient, EtcdCluster, available  # noqa: E402

from transport.client import KVClient  # noqa: E402

KEYS = 1000
OPS = ("put", "linearizable", "lease", "serializable")


class _Ours:
    """A KVClient behind the interface the load uses (etcd_local.EtcdClient's)."""

    def __init__(self, peers: list[str], _index: int) -> None:
        self.client = KVClient(peers, timeout=30.0)

    def put(self, key: str, value: str) -> None:
        self.client.put(key, value)

    def get(self, key: str, consistency: str) -> None:
        self.client.get(key, consistency)

    def close(self) -> None:
        self.client.close()


class _Etcd:
    def __init__(self, members: list[str], index: int) -> None:
        self.client = EtcdClient(members[index % len(members)])

    def put(self, key: str, value: str) -> None:
        self.client.put(key, value)

    def get(self, key: str, consistency: str) -> None:
        self.client.get(key, serializable=consistency == "serializable")

    def close(self) -> None:
        self.client.close()


SYSTEMS = {"ours": _Ours, "etcd": _Etcd}


def _worker(args: tuple[str, list[str], str, int, int, int]) -> tuple[int, float]:
    """One load process: `threads` clients, each doing `per_thread` operations `op`.
    Returns (operations, CPU seconds of this process)."""
    system, peers, op, threads, per_thread, offset = args
    done = [0] * threads

    def run(index: int) -> None:
        client = SYSTEMS[system](peers, offset + index)
        try:
            for n in range(per_thread):
                key = f"k{(offset + index * per_thread + n) % KEYS}"
                if op == "put":
                    client.put(key, VALUE)
                else:
                    client.get(key, op)
                done[index] += 1
        finally:
            client.close()

    cpu = time.process_time()
    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(done), time.process_time() - cpu


def server_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def loaded(
    system: str, peers: list[str], pids: list[int], op: str, ops: int, procs: int = 8
) -> tuple[float, str]:
    """64 in flight (procs x 8 threads): (ops/s, a description with CPU per op)."""
    threads = 64 // procs
    per_thread = ops // (procs * threads)
    jobs = [(system, peers, op, threads, per_thread, p * 7919) for p in range(procs)]
    before = server_cpu(pids)
    started = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        results = pool.map(_worker, jobs)
    elapsed = time.monotonic() - started
    count = sum(r[0] for r in results)
    servers = (server_cpu(pids) - before) / count * 1e6
    clients = sum(r[1] for r in results) / count * 1e6
    rate = count / elapsed
    return rate, f"{rate:6.0f}/s (CPU/op: servers {servers:4.0f} us, clients {clients:4.0f} us)"


def single(system: str, peers: list[str], op: str, ops: int) -> float:
    """One synchronous client: the p50 latency, in ms."""
    samples = []
    client = SYSTEMS[system](peers, 0)
    try:
        for n in range(ops):
            started = time.perf_counter()
            if op == "put":
                client.put(f"k{n % KEYS}", VALUE)
            else:
                client.get(f"k{n % KEYS}", op)
            samples.append(time.perf_counter() - started)
    finally:
        client.close()
    return statistics.median(samples) * 1000


def measure(
    system: str, peers: list[str], pids: list[int], args: argparse.Namespace
) -> dict[str, tuple[float, str, float]]:
    results = {}
    for op in OPS:
        if system == "etcd" and op == "lease":
            continue  # etcd has no lease read of its own in its API
        rate, text = loaded(system, peers, pids, op, args.ops)
        p50 = single(system, peers, op, args.single)
        results[op] = (rate, text, p50)
        label = "put" if op == "put" else f"get {op}"
        print(f"{system:5} {label:17} 64 in flight {text}; 1 client p50 {p50:.2f} ms", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=20_000, help="operations per loaded run")
    parser.add_argument("--single", type=int, default=2_000, help="operations, one client")
    parser.add_argument("--seconds", type=float, default=5.0, help="of each embedded run")
    args = parser.parse_args()
    print(f"3 peers/members, fsync on; 64 in flight = 8 processes x 8 clients; {args.ops} ops")
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="bench-reads-")))
    try:
        cluster.start()
        cluster.leader()
        pids = [peer.pid for peer in cluster.peers.values() if peer.pid]
        ours = measure("ours", cluster.ids, pids, args)
    finally:
        cluster.stop()
    embedded, leader_us, followers_us = embedded_run(args.seconds)
    print(
        f"ours  embedded apply (~1,000 in flight, fsync on)      {embedded:8.0f}/s"
        f"{_sides(leader_us, followers_us)}",
        flush=True,
    )
    theirs = pysyncobj_local.embedded_run(args.seconds, window=1000)
    if theirs is None:
        print("PySyncObj is not installed (pip install -e '.[bench]'): no embedded comparison")
    else:
        print(
            f"PySyncObj embedded apply (async, window 1,000, periods 5 ms, no fsync) "
            f"{theirs[0]:8.0f}/s{_sides(theirs[1], theirs[2])}"
        )
        print(f"ratio embedded apply {embedded / theirs[0]:.2f}x PySyncObj's", flush=True)
    if not available():
        print("etcd is not installed (apt-get install etcd-server): no comparison")
        return
    etcd_cluster = EtcdCluster()
    try:
        etcd_cluster.wait_ready()
        etcd = measure("etcd", etcd_cluster.clients, etcd_cluster.pids(), args)
    finally:
        etcd_cluster.stop()
    compare(ours, etcd)


def embedded_run(seconds: float) -> tuple[float, float, float]:
    """(commands/s, leader CPU us per command, both followers' CPU us per command)."""
    with tempfile.TemporaryDirectory(prefix="bench-embedded-") as tmp:
        result, followers = bench_embedded(Path(tmp), True, seconds, window=1024)
        for follower in followers:
            follower.stop()
    return result["ops/s"], result["leader CPU us/op"], result["followers CPU us/op"]


def _sides(leader_us: float, followers_us: float) -> str:
    return f" (CPU/op: leader {leader_us:4.0f} us, followers {followers_us:4.0f} us)"


def compare(
    ours: dict[str, tuple[float, str, float]], etcd: dict[str, tuple[float, str, float]]
) -> None:
    for op, (rate, _, p50) in ours.items():
        theirs = etcd.get(op if op != "lease" else "linearizable")
        if theirs is not None:
            label = "put" if op == "put" else f"get {op}"
            print(
                f"ratio {label:17} throughput {rate / theirs[0]:.2f}x etcd's; "
                f"1-client p50 {p50 / theirs[2]:.2f}x etcd's"
                + (" (vs etcd's linearizable)" if op == "lease" else "")
            )


if __name__ == "__main__":
    main()
