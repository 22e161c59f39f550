"""Benchmark membership changes on this machine: a real 3-peer cluster (launcher.py run --self,
fsync on) under writes from KVClients in several processes (which know only the first three
peers), and AdminClient.add_peer / remove_peer.

    python bench/bench_membership.py [--rounds 10] [--election-timeout-ms 1000]

A fourth peer is started with --join; each round adds it (catch-up, joint, stable: until the new
configuration is committed) and removes it again. Then, once, the fourth peer is added and the
leader itself is removed (until C_new is committed and it handed over), and the time until
the new leader served a write. Prints p50 / p90 / max of each, and the longest time any writer
waited for one put.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_service import print_latencies, start_peer, wait_leader  # noqa: E402
from bench_transfer import PROCESSES, THREADS, _writers  # noqa: E402

from actors.service.local_peer import LocalPeer  # noqa: E402
from actors.service.peer import PeerConfig  # noqa: E402
from transport.client import AdminClient, KVClient  # noqa: E402
from transport.peers import free_ports  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--election-timeout-ms", type=int, default=1000)
    args = parser.parse_args()
    ids = [f"127.0.0.1:{port}" for port in free_ports(4)]
    peers, spare = ids[:3], ids[3]
    timeout_ms = args.election_timeout_ms
    added: list[float] = []
    removed: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-membership-") as tmp:
        data = Path(tmp)
        locals_ = [start_peer(p, peers, data, True, timeout_ms) for p in peers]
        joiner = PeerConfig(spare, tuple(peers), data, timeout_ms, join=True)
        locals_.append(LocalPeer(joiner, log_path=data / "logs" / "joiner.log"))
        locals_[-1].start()
        try:
            for peer in locals_:
                peer.wait_ready()
            wait_leader(peers)
            seconds = 3.0 + args.rounds * 2.0 * (0.3 + timeout_ms / 1000)
            jobs = [(peers, p, seconds) for p in range(PROCESSES)]
            with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
                load = pool.map_async(_writers, jobs)
                with AdminClient(ids, timeout=60.0) as admin, KVClient(ids, timeout=30) as probe:
                    time.sleep(1.0)  # the writers are up to speed
                    for _ in range(args.rounds):
                        started = time.monotonic()
                        admin.add_peer(spare)
                        added.append(time.monotonic() - started)
                        started = time.monotonic()
                        admin.remove_peer(spare)
                        removed.append(time.monotonic() - started)
                    admin.add_peer(spare)
                    leader = admin.members()["leader"]
                    started = time.monotonic()
                    admin.remove_peer(leader)
                    left = time.monotonic() - started
                    probe.put("probe", "x")
                    serving = time.monotonic() - started
                longest_put = max(load.get())
        finally:
            for peer in locals_:
                peer.stop()
    print(f"{args.rounds} rounds, 3 peers + 1 joining, election timeout {timeout_ms} ms,")
    print(f"under puts from {PROCESSES * THREADS} KVClients in {PROCESSES} processes (fsync on)")
    for name, samples in (("add-peer (committed)", added), ("remove-peer (committed)", removed)):
        print_latencies(name, samples)
    print(f"  remove the leader: committed {1000 * left:6.1f} ms, new leader serving a write "
          f"{1000 * serving:6.1f} ms")  # fmt: skip
    print(f"  longest put seen by a writer {1000 * longest_put:6.1f} ms")


if __name__ == "__main__":
    main()
