"""Benchmark snapshots on this machine: real 3-peer clusters (launcher.py run --self, fsync on),
loaded the way users load them, by many KVClients in several processes.

    python bench/bench_snapshots.py                      # everything, issue 10's sizes
    python bench/bench_snapshots.py --quick              # a smaller run of every phase
    python bench/bench_snapshots.py --only steady,pause  # some phases

Phases (each prints its figures):
  steady      PUTS puts over KEYS keys with the default snapshot policy; then, per peer: bytes on
              disk (log, snapshots), RSS, segments; then kill -9 of every peer and the time from
              restarting them to the first write served.
  throughput  the same load with snapshots every 10,000 entries and with snapshots off, twice
              each, interleaved (machines drift): puts/s and the ratio.
  catchup     BIG_KEYS distinct keys; a follower is killed, its data directory deleted, and it
              is restarted: the time until it has applied what the leader committed, and the
              snapshot bytes it received per second; then again with a throttle.
  pause       a KVStateMachine holding BIG_KEYS keys, applying commands on one thread while a
              snapshot of it is saved to a real SnapshotStorage (the state machine's quick part on
              the apply thread, the writing on another, as FSMCaller and SnapshotExecutor do):
              the longest gap between two applied batches, with and without the snapshot.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from actors.service.kv_store import KVStateMachine  # noqa: E402
from actors.service.local_peer import LocalPeer  # noqa: E402
from actors.service.offline import disk_bytes  # noqa: E402
from actors.service.peer import PeerConfig  # noqa: E402
from actors.state_machine import Command  # noqa: E402
from actors.wait import wait_until  # noqa: E402
from storage.snapshot_storage import SnapshotMeta, SnapshotStorage, SnapshotWriter  # noqa: E402
from transport.client import KVClient  # noqa: E402
from transport.kv_protocol import PUT, KVCommand, LoggedCommand, encode_logged  # noqa: E402
from transport.peers import free_ports  # noqa: E402

VALUE = "v" * 32
MiB = 1024 * 1024


# -- a cluster and its load -------------------------------------------------------------------


class Cluster:
    def __init__(self, root: Path, **config: Any) -> None:
        self.ids = [f"127.0.0.1:{port}" for port in free_ports(3)]
        self.data = root / f"cluster-{self.ids[0].rsplit(':', 1)[1]}"
        self.configure(**config)

    def configure(self, **config: Any) -> None:
        """(Re)build the peers with PeerConfig fields `config`, over the same data."""
        self.peers = {
            p: LocalPeer(
                PeerConfig(p, tuple(self.ids), self.data, 1000, **config),
                log_level="INFO",  # the leader's Replicator logs each snapshot transfer
                log_path=self.data / "logs" / f"{p.replace(':', '_')}.log",
            )
            for p in self.ids
        }

    def start(self) -> None:
        for peer in self.peers.values():
            peer.start()
        for peer in self.peers.values():
            peer.wait_ready()

    def statuses(self) -> dict[str, dict[str, Any]]:
        with KVClient(self.ids, timeout=5.0) as client:
            return {s["id"]: s for s in client.status()}

    def leader(self) -> str:
        def one() -> str | None:
            leaders = [p for p, s in self.statuses().items() if s.get("role") == "leader"]
            return leaders[0] if len(leaders) == 1 else None

        found: str = wait_until(one, "a leader", 30.0)
        return found

    def stop(self) -> None:
        for peer in self.peers.values():
            peer.stop()
        shutil.rmtree(self.data, ignore_errors=True)


def _put_worker(
    args: tuple[list[str], int, int, int, int, int, Path | None],
) -> tuple[int, float, float]:
    """One load process: `threads` threads with a KVClient each (CurveZMQ with `key_dir`, if
    given), putting keys n for every n in range(total) with n % stride == offset (the thread's
    share). Returns (puts, seconds, CPU s)."""
    peers, total, keys, first_slot, threads, stride, key_dir = args
    done = [0] * threads

    def run(slot: int, index: int) -> None:
        with KVClient(peers, timeout=30.0, keys=key_dir) as client:
            for n in range(slot, total, stride):
                client.put(f"k{n % keys}", VALUE)
                done[index] += 1

    started, cpu = time.monotonic(), time.process_time()
    workers = [threading.Thread(target=run, args=(first_slot + t, t)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(done), time.monotonic() - started, time.process_time() - cpu


def load(
    peers: list[str], total: int, keys: int, procs: int, threads: int, key_dir: Path | None = None
) -> float:
    """`total` puts over `keys` keys from procs x threads KVClients; returns puts/s."""
    stride = procs * threads
    jobs = [(peers, total, keys, p * threads, threads, stride, key_dir) for p in range(procs)]
    started = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        results = pool.map(_put_worker, jobs)
    elapsed = time.monotonic() - started
    assert sum(r[0] for r in results) == total
    return total / elapsed


# -- phases -----------------------------------------------------------------------------------


def steady(root: Path, puts: int, keys: int, procs: int, threads: int) -> None:
    cluster = Cluster(root)
    try:
        cluster.start()
        rate = load(cluster.ids, puts, keys, procs, threads)
        print(f"steady: {puts} puts over {keys} keys at {rate:.0f} puts/s (default policy)")
        for peer_id, status in cluster.statuses().items():
            peer = cluster.peers[peer_id]
            peer_dir = peer.config.peer_dir
            segments = len(list((peer_dir / "log").glob("*.seg")))
            rss = psutil.Process(peer.pid).memory_info().rss if peer.pid else 0
            print(
                f"  {peer_id} {status['role']:8} disk {disk_bytes(peer_dir) / MiB:6.1f} MiB "
                f"(log {disk_bytes(peer_dir / 'log') / MiB:.1f} MiB in {segments} segments, "
                f"snapshots {disk_bytes(peer_dir / 'snapshot') / MiB:.1f} MiB) "
                f"RSS {rss / MiB:.0f} MiB  log {status['first_log_index']}.."
                f"{status['last_log_index']} snapshot {status['snapshot_index']}"
            )
        for peer in cluster.peers.values():
            peer.kill()
        started = time.monotonic()
        cluster.start()
        with KVClient(cluster.ids, timeout=30.0) as client:
            client.put("after-restart", "x")
        print(
            f"  restart (kill -9 of all three) to first served write: "
            f"{time.monotonic() - started:.2f} s"
        )
    finally:
        cluster.stop()


def throughput(root: Path, puts: int, keys: int, procs: int, threads: int) -> None:
    rates: dict[str, list[float]] = {"snapshots every 10000": [], "snapshots off": []}
    for _ in range(2):
        for name, threshold in (("snapshots every 10000", 10_000), ("snapshots off", 0)):
            cluster = Cluster(root, snapshot_threshold=threshold, snapshot_interval_s=0.0)
            try:
                cluster.start()
                rates[name].append(load(cluster.ids, puts, keys, procs, threads))
            finally:
                cluster.stop()
    on, off = (sum(r) / len(r) for r in rates.values())
    runs = {name: " ".join(f"{r:.0f}" for r in values) for name, values in rates.items()}
    print(f"throughput: {puts} puts, {procs}x{threads} clients; puts/s per run: {runs}")
    print(f"  with snapshots / without: {on:.0f} / {off:.0f} = {100 * on / off:.0f}%")


def catchup(root: Path, big_keys: int, procs: int, threads: int) -> None:
    """One state of `big_keys` keys, then a wiped follower catching up: unthrottled, then (the
    cluster restarted with a throttle) again."""
    cluster = Cluster(root, snapshot_interval_s=0.0)
    try:
        cluster.start()
        load(cluster.ids, big_keys, big_keys, procs, threads)
        for throttle in (0, 10 * MiB):
            if throttle:
                for peer in cluster.peers.values():
                    peer.stop()
                cluster.configure(snapshot_interval_s=0.0, snapshot_throttle_bytes=throttle)
                cluster.start()
            catchup_once(cluster, procs, threads, throttle)
    finally:
        cluster.stop()


def catchup_once(cluster: Cluster, procs: int, threads: int, throttle: int) -> None:
    leader = cluster.leader()
    follower = next(p for p in cluster.ids if p != leader)
    peer = cluster.peers[follower]
    peer.kill()
    shutil.rmtree(peer.config.peer_dir)
    # Past the leader's log margin, so that only the snapshot can bring the follower back.
    load(cluster.ids, 10_000, 10_000, procs, threads)
    snapshots = SnapshotStorage(cluster.peers[leader].config.peer_dir / "snapshot")
    meta = snapshots.latest()
    snapshots.close()
    assert meta is not None, "the leader has no snapshot"
    commit = cluster.statuses()[leader]["commit_index"]
    started = time.monotonic()
    peer.start_and_wait()

    def caught_up() -> bool:
        return cluster.statuses().get(follower, {}).get("applied_index", 0) >= commit

    wait_until(caught_up, "the wiped follower to catch up", 600.0)
    elapsed = time.monotonic() - started
    label = f"throttled to {throttle / MiB:.0f} MiB/s" if throttle else "unthrottled"
    transfers = re.findall(
        rf"replicator {re.escape(follower)}: snapshot \d+ installed: .*",
        cluster.peers[leader].output(),
    )
    print(
        f"catchup ({label}): snapshot {meta.last_index} of {meta.size / MiB:.1f} MiB: "
        f"{elapsed:.2f} s from restart to caught up = {meta.size / MiB / elapsed:.1f} MiB/s; "
        f"the leader's transfer: {transfers[-1] if transfers else '(not logged)'}"
    )


def pause(root: Path, big_keys: int) -> None:
    sm = KVStateMachine()
    sm.data = {f"k{n}": VALUE for n in range(big_keys)}
    store = SnapshotStorage(root / "pause-snapshot")
    base, _, _ = apply_gaps(sm, store, 3.0, None)
    longest, quick, total = apply_gaps(sm, store, 6.0, 0.5)
    store.close()
    print(
        f"pause: {big_keys} keys; longest gap between applied batches {1000 * base:.1f} ms "
        f"without a snapshot, {1000 * longest:.1f} ms while one is saved (its quick part on "
        f"the apply thread {1000 * quick:.1f} ms; written and committed in {total:.2f} s)"
    )


def apply_gaps(
    sm: KVStateMachine, store: SnapshotStorage, seconds: float, snapshot_at: float | None
) -> tuple[float, float, float]:
    """Apply batches of 64 puts for `seconds`, saving a snapshot `snapshot_at` seconds in, as
    FSMCaller and SnapshotExecutor do. Returns the longest gap between two batches, the save's
    quick part (on this thread) and its total, in seconds."""
    longest, quick, total = 0.0, 0.0, [0.0]
    saver: threading.Thread | None = None
    start = last = time.perf_counter()
    index = 0
    while (now := time.perf_counter()) < start + seconds:
        if snapshot_at is not None and saver is None and now >= start + snapshot_at:
            writer = store.create_writer(SnapshotMeta(index + 1, 1, b"\x92\x90\x90"))
            finish = sm.on_snapshot_save(writer)
            quick = time.perf_counter() - now
            saver = threading.Thread(target=save, args=(store, writer, finish, now, total))
            saver.start()
        batch = [
            Command(index + n, 1, encode_logged(LoggedCommand("c", index + n, put(index + n))))
            for n in range(1, 65)
        ]
        sm.on_apply(batch)
        index += len(batch)
        after = time.perf_counter()
        longest, last = max(longest, after - last), after
    if saver is not None:
        saver.join()
    return longest, quick, total[0]


def put(n: int) -> KVCommand:
    return KVCommand(PUT, f"k{n % 1000}", VALUE)


def save(
    store: SnapshotStorage, writer: SnapshotWriter, finish: Any, began: float, out: list[float]
) -> None:
    finish()
    store.commit(writer)
    out[0] = time.perf_counter() - began


# -- main --------------------------------------------------------------------------------------


@contextmanager
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bench-snapshots-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, every phase")
    parser.add_argument("--only", default="steady,throughput,catchup,pause")
    parser.add_argument("--procs", type=int, default=4, help="load processes")
    parser.add_argument("--threads", type=int, default=16, help="KVClients per process")
    args = parser.parse_args()
    puts, keys, big, tput = (
        (60_000, 10_000, 100_000, 30_000) if args.quick else (1_000_000, 10_000, 1_000_000, 100_000)
    )
    print(f"cpus {os.cpu_count()}, python {sys.version.split()[0]}")
    phases = set(args.only.split(","))
    with scratch() as root:
        if "steady" in phases:
            steady(root, puts, keys, args.procs, args.threads)
        if "throughput" in phases:
            throughput(root, tput, keys, args.procs, args.threads)
        if "catchup" in phases:
            catchup(root, big, args.procs, args.threads)
        if "pause" in phases:
            pause(root, big)


if __name__ == "__main__":
    main()
