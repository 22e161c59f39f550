"""The latency budget: where one put and one linearizable get spend their time, stage by stage.

    python bench/bench_latency.py [--ops 2000] [--warmup 200]

A local 3-peer cluster (real processes, fsync on) runs with stage marks on (actors/trace.py:
PYKKA_RAFT_TRACE). One KVClient does `ops` synchronous puts, then `ops` linearizable gets, so
exactly one request is in flight: every mark inside a request's window [client.send,
client.receive] is about that request. For each request the stages are matched in pipeline
order (the first mark of a stage at or after the previous stage's), on the leader and on the
follower that answered first; the table gives, per stage, the p50 and p99 of the time since
the previous stage, and how many requests had that mark. A stage's time includes every hop
before it: "follower.receive" after "leader.send" is the frame's encode, the leader's I/O
thread, the wire and the follower's decode. The leader's own fsync runs beside replication,
so it is reported apart (since leader.append). Peers, not the client, make the marks, except
client.send/receive.
"""

from __future__ import annotations

import argparse
import bisect
import glob
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_snapshots import VALUE, Cluster  # noqa: E402

from actors import trace  # noqa: E402
from transport.client import KVClient  # noqa: E402

KEYS = 1000

PUT = trace.PUT_STAGES
GET = trace.GET_STAGES

Marks = dict[str, list[int]]  # stage -> sorted times (ns), of one process


def load(prefix: str) -> dict[int, Marks]:
    """pid -> that process's marks."""
    by_pid: dict[int, Marks] = {}
    for path in glob.glob(f"{prefix}.*.trace"):
        pid = int(path.rsplit(".", 2)[1])
        marks: Marks = defaultdict(list)
        for stage, ns in trace.read(path):
            marks[stage].append(ns)
        for times in marks.values():
            times.sort()
        by_pid[pid] = marks
    return by_pid


def first(marks: Marks, stage: str, start: int, end: int) -> int | None:
    times = marks.get(stage, [])
    i = bisect.bisect_left(times, start)
    return times[i] if i < len(times) and times[i] <= end else None


def budget(
    windows: list[tuple[int, int]], stages: tuple[str, ...], leader: Marks, followers: list[Marks]
) -> dict[str, list[float]]:
    """stage -> the µs since the previous stage, one sample per request that had the mark."""
    samples: dict[str, list[float]] = defaultdict(list)
    for start, end in windows:
        # The follower that answered first is the one that made the quorum.
        acks = [(first(f, "follower.ack", start, end), n) for n, f in enumerate(followers)]
        answered = sorted((t, n) for t, n in acks if t is not None)
        follower = followers[answered[0][1]] if answered else {}
        previous = start
        for stage in stages:
            marks = follower if stage.startswith("follower.") else leader
            at = first(marks, stage, previous, end)
            if at is None:
                continue
            samples[stage].append((at - previous) / 1000)
            previous = at
        samples["client.receive"].append((end - previous) / 1000)
        samples["total"].append((end - start) / 1000)
        append = first(leader, "leader.append", start, end)
        fsync = first(leader, "leader.fsync", append or end + 1, end)
        if append is not None and fsync is not None:
            samples["(leader.fsync since append)"].append((fsync - append) / 1000)
    return samples


def report(title: str, stages: tuple[str, ...], samples: dict[str, list[float]]) -> None:
    print(f"\n{title}: µs since the previous stage (p50 / p99), requests with the mark")
    for stage in (*stages, "client.receive", "total", "(leader.fsync since append)"):
        values = samples.get(stage)
        if not values:
            continue
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        print(f"  {stage:30} {statistics.median(values):8.0f} {p99:8.0f}   {len(values)}")


def run(client: KVClient, op: str, ops: int) -> list[tuple[int, int]]:
    windows = []
    for n in range(ops):
        key = f"k{n % KEYS}"
        start = time.monotonic_ns()
        if op == "put":
            client.put(key, VALUE)
        else:
            client.get(key)
        windows.append((start, time.monotonic_ns()))
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=2000, help="requests of each kind")
    parser.add_argument("--warmup", type=int, default=200, help="requests before measuring")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    prefix = str(root / "marks")
    os.environ[trace.ENV] = prefix  # the peer processes inherit it
    cluster = Cluster(root)
    try:
        cluster.start()
        leader_id = cluster.leader()
        with KVClient(cluster.ids, timeout=10.0) as client:
            run(client, "put", args.warmup)
            puts = run(client, "put", args.ops)
            gets = run(client, "get", args.ops)
        pids = {peer_id: peer.pid for peer_id, peer in cluster.peers.items()}
    finally:
        cluster.stop()  # SIGTERM: each peer writes its marks as it exits
    marks = load(prefix)
    missing = [p for p, pid in pids.items() if pid not in marks]
    if missing:
        raise SystemExit(f"no marks from {missing}: did they exit cleanly?")
    leader = marks[pids[leader_id]]  # type: ignore[index]
    followers = [marks[pid] for p, pid in pids.items() if p != leader_id]  # type: ignore[index]
    print(f"3 peers, fsync on, one KVClient, {args.ops} requests each; leader {leader_id}")
    report("put", PUT, budget(puts, PUT, leader, followers))
    report("linearizable get", GET, budget(gets, GET, leader, followers))


if __name__ == "__main__":
    main()
