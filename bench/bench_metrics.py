"""What the hot-path metrics cost the write path: bench_http.py's load (a local 3-peer cluster,
fsync on, 4 processes x 16 KVClients, without --http) on this tree and on a baseline tree
without them, alternately (A B A B: machines drift), printing puts/s and the ratio.

    python bench/bench_metrics.py --baseline REV [--this REV] [--puts 30000] [--rounds 2]

The baseline is `git archive REV` (e.g. the commit before the metrics) in a scratch directory;
A is this working tree, or `--this REV` exported the same way (to compare two commits and
nothing else). Each run is a process of its own that puts its tree first on sys.path, so the
peers run that tree's launcher.py and the two trees never mix in one interpreter. This module
imports only the standard library at its top: the load's worker processes (multiprocessing
spawn) import it again, with the sys.path of the run.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def export(rev: str, into: Path) -> Path:
    """The tree of commit `rev` in `into` (a git archive, so nothing of the checkout changes)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", f"{rev}^{{commit}}"], check=True, capture_output=True
    ).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    if not (into / "bench" / "bench_http.py").exists():
        sys.exit(f"{rev} has no bench/bench_http.py: choose a later baseline")
    return into


def trial(tree: Path, puts: int) -> float:
    """One run over `tree`, in a process of its own; its puts/s."""
    command = [sys.executable, str(Path(__file__).resolve()), "--trial", str(tree)]
    done = subprocess.run(
        [*command, "--puts", str(puts)], check=True, stdout=subprocess.PIPE, text=True
    )
    return float(done.stdout.split()[-1])


def run_trial(tree: Path, puts: int) -> None:
    """In the run's process: bench_http's cluster and load, without --http, from `tree`."""
    sys.path[:0] = [str(tree), str(tree / "bench")]
    bench_http = importlib.import_module("bench_http")
    local_peer = importlib.import_module("actors.service.local_peer")
    for path in (bench_http.__file__, local_peer.__file__, local_peer.LAUNCHER):
        assert Path(path or "").resolve().is_relative_to(tree.resolve()), path  # its peers too
    print(bench_http.run(puts, False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", help="the commit to compare against (B)")
    parser.add_argument("--this", help="a commit for A instead of the working tree")
    parser.add_argument("--puts", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, alternated")
    parser.add_argument("--trial", type=Path, help=argparse.SUPPRESS)  # one run, internal
    args = parser.parse_args()
    if args.trial is not None:
        run_trial(args.trial, args.puts)
        return
    if not args.baseline:
        parser.error("--baseline REV is required")
    scratch = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    try:
        trees = {
            f"A {args.this or 'this tree'}": (
                export(args.this, scratch / "a") if args.this else ROOT
            ),
            f"B {args.baseline}": export(args.baseline, scratch / "b"),
        }
        rates: dict[str, list[float]] = {name: [] for name in trees}
        for round_ in range(1, args.rounds + 1):
            for name, tree in trees.items():
                rates[name].append(trial(tree, args.puts))
                print(f"round {round_}: {name}: {rates[name][-1]:.0f} puts/s", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    (a, a_rates), (b, b_rates) = rates.items()
    mean_a, mean_b = (sum(r) / len(r) for r in (a_rates, b_rates))
    print(
        f"{args.puts} puts per run, {args.rounds} runs each; puts/s {a}: "
        f"{' '.join(f'{r:.0f}' for r in a_rates)}; {b}: {' '.join(f'{r:.0f}' for r in b_rates)}; "
        f"A/B {100 * mean_a / mean_b:.1f}%"
    )


if __name__ == "__main__":
    main()
