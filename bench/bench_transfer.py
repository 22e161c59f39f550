"""Benchmark leadership transfer on this machine: a real 3-peer cluster (launcher.py run --self,
fsync on) under writes from KVClients in several processes, and AdminClient.transfer_leader.

    python bench/bench_transfer.py [--transfers 20] [--election-timeout-ms 1000]

For each transfer (to the most up-to-date voter, so leadership moves round the cluster) it
measures the handover (the admin call, until the old leader stepped down for the target) and
the time until the new leader served a write (a put sent right after the handover); and, from
the load's side, the longest time any writer waited for one put while transfers ran. Prints
p50 / p90 / max of each.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_service import print_latencies, start_peer, wait_leader  # noqa: E402

from transport.client import AdminClient, KVClient  # noqa: E402
from transport.peers import free_ports  # noqa: E402

PROCESSES, THREADS = 4, 4  # the writers: 16 KVClients in 4 processes


def _writers(args: tuple[list[str], int, float]) -> float:
    """One load process: THREADS clients putting until `seconds` pass; the longest put (s)."""
    peers, offset, seconds = args
    longest = [0.0] * THREADS

    def run(index: int) -> None:
        with KVClient(peers, timeout=30.0) as client:
            end, n = time.monotonic() + seconds, 0
            while time.monotonic() < end:
                started = time.monotonic()
                client.put(f"w{offset}-{index}-{n % 100}", "x" * 100)
                longest[index] = max(longest[index], time.monotonic() - started)
                n += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return max(longest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transfers", type=int, default=20)
    parser.add_argument("--election-timeout-ms", type=int, default=1000)
    args = parser.parse_args()
    peers = [f"127.0.0.1:{port}" for port in free_ports(3)]
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        locals_ = [start_peer(p, peers, Path(tmp), True, args.election_timeout_ms) for p in peers]
        try:
            for peer in locals_:
                peer.wait_ready()
            wait_leader(peers)
            seconds = 2.0 + args.transfers * (0.5 + args.election_timeout_ms / 1000 / 2)
            jobs = [(peers, p, seconds) for p in range(PROCESSES)]
            with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
                load = pool.map_async(_writers, jobs)
                handovers, served = [], []
                with (
                    AdminClient(peers, timeout=30.0) as admin,
                    KVClient(peers, timeout=30.0) as probe,
                ):
                    time.sleep(1.0)  # the writers are up to speed
                    for n in range(args.transfers):
                        started = time.monotonic()
                        admin.transfer_leader()
                        handed = time.monotonic()
                        probe.put(f"probe{n}", "x")
                        handovers.append(handed - started)
                        served.append(time.monotonic() - started)
                        time.sleep(0.3)  # let the new leader settle before the next
                longest_put = max(load.get())
        finally:
            for peer in locals_:
                peer.stop()
    print(f"{args.transfers} transfers, 3 peers, election timeout {args.election_timeout_ms} ms,")
    print(f"under puts from {PROCESSES * THREADS} KVClients in {PROCESSES} processes (fsync on)")
    for name, samples in (("handover", handovers), ("new leader serving a write", served)):
        print_latencies(name, samples)
    print(f"  longest put seen by a writer {1000 * longest_put:6.1f} ms")


if __name__ == "__main__":
    main()
