"""Reads and writes through the public KVClient, the way users load the service: a local
3-peer cluster (fsync on), 8 processes x 8 threads with a KVClient each (64 in flight), and
one synchronous client. For put and for get at each consistency it prints the rate, the p50
latency of one client, and the CPU seconds per operation of the peers and of the clients.

    python bench/bench_reads.py [--ops 20000] [--single 2000]

(The etcd and PySyncObj comparisons the issue asks for are not in it yet.)
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

from bench_snapshots import VALUE, Cluster  # noqa: E402

from transport.client import KVClient  # noqa: E402

KEYS = 1000
OPS = ("put", "linearizable", "lease", "serializable")


def _worker(args: tuple[list[str], str, int, int, int]) -> tuple[int, float]:
    """One load process: `threads` KVClients, each doing `per_thread` operations `op`.
    Returns (operations, CPU seconds of this process)."""
    peers, op, threads, per_thread, offset = args
    done = [0] * threads

    def run(index: int) -> None:
        with KVClient(peers, timeout=30.0) as client:
            for n in range(per_thread):
                key = f"k{(offset + index * per_thread + n) % KEYS}"
                if op == "put":
                    client.put(key, VALUE)
                else:
                    client.get(key, op)
                done[index] += 1

    cpu = time.process_time()
    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(done), time.process_time() - cpu


def peer_cpu(cluster: Cluster) -> float:
    total = 0.0
    for peer in cluster.peers.values():
        times = psutil.Process(peer.pid).cpu_times()
        total += times.user + times.system
    return total


def loaded(cluster: Cluster, op: str, ops: int, procs: int = 8, threads: int = 8) -> str:
    per_thread = ops // (procs * threads)
    jobs = [(cluster.ids, op, threads, per_thread, p * 7919) for p in range(procs)]
    before = peer_cpu(cluster)
    started = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        results = pool.map(_worker, jobs)
    elapsed = time.monotonic() - started
    count = sum(r[0] for r in results)
    peers = (peer_cpu(cluster) - before) / count * 1e6
    clients = sum(r[1] for r in results) / count * 1e6
    return f"{count / elapsed:7.0f}/s  CPU/op: peers {peers:5.0f} us, clients {clients:5.0f} us"


def single(cluster: Cluster, op: str, ops: int) -> str:
    samples = []
    with KVClient(cluster.ids, timeout=30.0) as client:
        for n in range(ops):
            started = time.perf_counter()
            if op == "put":
                client.put(f"k{n % KEYS}", VALUE)
            else:
                client.get(f"k{n % KEYS}", op)
            samples.append(time.perf_counter() - started)
    return f"p50 {statistics.median(samples) * 1000:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=20_000, help="operations per loaded run")
    parser.add_argument("--single", type=int, default=2_000, help="operations, one client")
    args = parser.parse_args()
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="bench-reads-")))
    try:
        cluster.start()
        cluster.leader()
        print(f"3 peers, fsync on; 64 in flight = 8 processes x 8 KVClients; {args.ops} ops")
        for op in OPS:
            label = "put" if op == "put" else f"get {op}"
            print(
                f"{label:18} 64 in flight {loaded(cluster, op, args.ops)};  "
                f"1 client {single(cluster, op, args.single)}",
                flush=True,
            )
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
