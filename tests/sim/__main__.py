"""Run the simulation by hand.

    python -m tests.sim replay --seed 42 [--size 5] [--trace]   # one seed; print its events
    python -m tests.sim sweep --seeds 5000 [--start 0] [--size 3]

A failing seed from CI replays exactly with `replay`; `--trace` prints every event (timers,
message deliveries, faults), the first thing to read when a seed fails.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .scenario import run_scenario


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim")
    commands = parser.add_subparsers(dest="command", required=True)
    replay = commands.add_parser("replay", help="run one seed")
    replay.add_argument("--seed", type=int, required=True)
    replay.add_argument("--size", type=int, default=3)
    replay.add_argument("--trace", action="store_true", help="print every event")
    sweep = commands.add_parser("sweep", help="run many seeds; report the failures")
    sweep.add_argument("--seeds", type=int, default=1000)
    sweep.add_argument("--start", type=int, default=0)
    sweep.add_argument("--size", type=int, default=3)
    args = parser.parse_args()
    if args.command == "replay":
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        outcome = run_scenario(args.seed, size=args.size, record_trace=args.trace)
        for line in outcome.trace or []:
            print(line)
        print(outcome_summary(outcome))
        return 0
    logging.disable(logging.WARNING)
    failures = 0
    started = time.monotonic()
    for seed in range(args.start, args.start + args.seeds):
        try:
            run_scenario(seed, size=args.size)
        except AssertionError as error:
            failures += 1
            print(f"seed {seed}: {error}", flush=True)
    elapsed = time.monotonic() - started
    print(f"{args.seeds} seeds of {args.size} peers: {failures} failed ({elapsed:.0f}s)")
    return 1 if failures else 0


def outcome_summary(outcome: object) -> str:
    fields = vars(outcome) if hasattr(outcome, "__dict__") else {}
    shown = {k: v for k, v in fields.items() if k != "trace"}
    return " ".join(f"{k}={v}" for k, v in shown.items())


if __name__ == "__main__":
    sys.exit(main())
