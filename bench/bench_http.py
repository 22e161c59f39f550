"""What the operators' HTTP server costs the write path: a local 3-peer cluster (fsync on)
loaded by 4 processes x 16 KVClients, with --http on every peer and each peer's /metrics
scraped every second, against the same load without --http; twice each, interleaved.

    python bench/bench_http.py [--puts 30000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_snapshots import load  # noqa: E402

from actors.service.local_peer import LocalPeer  # noqa: E402
from actors.service.peer import PeerConfig  # noqa: E402
from transport.peers import free_ports  # noqa: E402


def run(puts: int, with_http: bool) -> float:
    root = Path(tempfile.mkdtemp(prefix="bench-http-"))
    ports = free_ports(6)
    ids = [f"127.0.0.1:{p}" for p in ports[:3]]
    http = [f"127.0.0.1:{p}" for p in ports[3:]]
    peers = [
        LocalPeer(
            PeerConfig(peer, tuple(ids), root, 1000, http=address if with_http else None),
            log_path=root / f"{n}.log",
        )
        for n, (peer, address) in enumerate(zip(ids, http, strict=True))
    ]
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(1.0):
            for address in http:
                with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
                    reply.read()

    scraper = threading.Thread(target=scrape)
    try:
        for peer in peers:
            peer.start()
        for peer in peers:
            peer.wait_ready()
        if with_http:
            scraper.start()
        return load(ids, puts, 10_000, 4, 16)
    finally:
        stop.set()
        if scraper.is_alive():
            scraper.join()
        for peer in peers:
            peer.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--puts", type=int, default=30_000)
    args = parser.parse_args()
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(2):
        for with_http in (True, False):
            rates[with_http].append(run(args.puts, with_http))
    on, off = (sum(rates[flag]) / len(rates[flag]) for flag in (True, False))
    print(
        f"puts/s with --http and /metrics scraped every second: "
        f"{' '.join(f'{r:.0f}' for r in rates[True])}; without: "
        f"{' '.join(f'{r:.0f}' for r in rates[False])}; ratio {100 * on / off:.1f}%"
    )


if __name__ == "__main__":
    main()
