"""What CurveZMQ (`--keys`) costs: a local 3-peer cluster (fsync on) with and without keys,
alternately (A B A B: these machines drift), loaded through the public KVClient:

- throughput: 4 processes x 16 KVClients putting (64 in flight), puts/s;
- latency: one synchronous KVClient, p50 and p99 of put and of get.

    python bench/bench_security.py [--puts 30000] [--ops 2000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_snapshots import VALUE, load  # noqa: E402

from actors.service.local_peer import LocalPeer  # noqa: E402
from actors.service.peer import PeerConfig  # noqa: E402
from transport.client import KVClient  # noqa: E402
from transport.peers import free_ports  # noqa: E402
from transport.security import generate_keys  # noqa: E402


def percentiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100)
    return f"p50 {cuts[49] * 1000:.2f} ms p99 {cuts[98] * 1000:.2f} ms"


def run(puts: int, ops: int, secured: bool) -> dict[str, str | float]:
    root = Path(tempfile.mkdtemp(prefix="bench-security-"))
    ids = [f"127.0.0.1:{port}" for port in free_ports(3)]
    keys = root / "keys" if secured else None
    if keys is not None:
        generate_keys(keys, ids)
    peers = [
        LocalPeer(PeerConfig(peer, tuple(ids), root, 1000, keys=keys), log_path=root / f"{n}.log")
        for n, peer in enumerate(ids)
    ]
    try:
        for peer in peers:
            peer.start()
        for peer in peers:
            peer.wait_ready()
        result: dict[str, str | float] = {"puts/s": load(ids, puts, 10_000, 4, 16, keys)}
        with KVClient(ids, timeout=30.0, keys=keys) as client:
            for name, op in (("put", lambda n: client.put(f"s{n}", VALUE)), ("get", None)):
                samples = []
                for n in range(ops):
                    started = time.perf_counter()
                    if op is None:
                        client.get(f"s{n}")
                    else:
                        op(n)
                    samples.append(time.perf_counter() - started)
                result[name] = percentiles(samples)
        return result
    finally:
        for peer in peers:
            peer.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--puts", type=int, default=30_000, help="puts per throughput run")
    parser.add_argument("--ops", type=int, default=2_000, help="puts and gets per latency run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, alternated")
    args = parser.parse_args()
    rates: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(1, args.rounds + 1):
        for secured in (True, False):
            result = run(args.puts, args.ops, secured)
            rates[secured].append(float(result["puts/s"]))
            label = "--keys" if secured else "plain "
            print(
                f"round {round_} {label}: {result['puts/s']:.0f} puts/s (64 in flight); "
                f"one client: put {result['put']}, get {result['get']}",
                flush=True,
            )
    keyed, plain = (statistics.mean(rates[flag]) for flag in (True, False))
    print(f"throughput with --keys / without: {100 * keyed / plain:.1f}%")


if __name__ == "__main__":
    main()
