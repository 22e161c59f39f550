"""The chaos runner's command line: `python -m tests.chaos [options]` (see the package doc)."""

from __future__ import annotations

import argparse
import random
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from tests.chaos.config import ChaosConfig
from tests.chaos.constants import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE
from tests.chaos.runner import run_chaos
from transport.peers import parse_peer, parse_peers

LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos",
        description=(
            "Kill, pause, partition, wipe and skew the clocks of a local cluster's peers "
            "under load; check linearizability."
        ),
    )
    parser.add_argument("--peers", default="3", help="a number of peers on free ports, or H:P,...")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load and faults")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--keys", type=int, default=5, help="how many keys they use (default 5)")
    parser.add_argument("--seed", type=int, help="seeds operations and faults (default: random)")
    parser.add_argument("--data-dir", help="where peers keep data and logs (default: a temp dir)")
    parser.add_argument("--election-timeout-ms", type=int, default=300)
    parser.add_argument("--client-timeout", type=float, default=1.0, help="per operation (s)")
    parser.add_argument("--check-timeout", type=float, default=300.0, help="checker budget (s)")
    parser.add_argument(
        "--snapshot-threshold",
        type=int,
        default=200,
        help="the peers' snapshot threshold, in entries (default 200, so snapshots are many)",
    )
    parser.add_argument(
        "--snapshot-log-margin", type=int, default=50, help="entries kept before a snapshot"
    )
    parser.add_argument(
        "--no-partitions",
        dest="partitions",
        action="store_false",
        help="no network partitions (they need root, ip and nft; skipped with a reason if not)",
    )
    parser.add_argument(
        "--no-wipes", dest="wipes", action="store_false", help="never wipe a peer's data"
    )
    parser.add_argument(
        "--no-membership",
        dest="membership",
        action="store_false",
        help="never change the membership (add, remove, replace peers; learners)",
    )
    parser.add_argument(
        "--clock-drift",
        type=float,
        default=0.05,
        help="peers' clocks run at seeded rates within 1 +- this (default 0.05; 0: off)",
    )
    parser.add_argument(
        "--lease-reads", type=float, default=0.4, help="share of gets that are lease reads"
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=LEVELS,
        help="the peers' log level; logs go to DATA_DIR/chaos-logs/",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> ChaosConfig:
    """A ChaosConfig from the command line's arguments; ValueError (a usage error) if they
    make no sense."""
    text = args.peers.strip()
    peers: tuple[str, ...] | None = None
    size = 3
    if text.isdigit():
        size = int(text)
    else:
        peers = tuple(parse_peers(text))
        for peer in peers:
            host, port = parse_peer(peer)
            with socket.socket() as probe:
                try:
                    probe.bind((host, port))
                except OSError as error:
                    raise ValueError(f"--peers: {peer} is not available ({error})") from None
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    return ChaosConfig(
        peers=peers,
        size=size,
        duration=args.duration,
        clients=args.clients,
        keys=args.keys,
        seed=seed,
        data_dir=args.data_dir,
        election_timeout_ms=args.election_timeout_ms,
        client_timeout=args.client_timeout,
        check_timeout=args.check_timeout,
        log_level=args.log_level,
        snapshot_threshold=args.snapshot_threshold,
        snapshot_log_margin=args.snapshot_log_margin,
        partitions=args.partitions,
        wipes=args.wipes,
        membership=args.membership,
        clock_drift=args.clock_drift,
        lease_reads=args.lease_reads,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run from the command line: Ctrl-C (or SIGTERM) once ends the run early but still checks
    it; a second time aborts (the peers are stopped either way)."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"chaos: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        print("\nstopping the run early (again to abort)...", file=sys.stderr, flush=True)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = run_chaos(config, stop)
    except KeyboardInterrupt:
        print("aborted; every peer was stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ValueError as error:
        print(f"chaos: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, TimeoutError, OSError) as error:
        print(f"chaos run failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(report.render(), flush=True)
    return report.exit_code
