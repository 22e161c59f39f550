"""Chaos testing: real peer processes, concurrent clients, injected faults, then a verdict.

    python -m tests.chaos [--peers 3 | --peers H:P,H:P,...] [--duration 60] [--clients 4]
                          [--keys 5] [--seed S] [--data-dir DIR] [--election-timeout-ms 300]
                          [--client-timeout 1.0] [--check-timeout 300] [--log-level WARNING]

What one run does:

1. starts the peers (`launcher.py run --self ...`, one OS process each, ports picked now unless
   given), each logging to DATA_DIR/chaos-logs/<host>_<port>.log;
2. for `--duration` seconds, `--clients` threads each drive their own KVClient with random
   put / get / cas / delete on `--keys` keys, writing unique values ("c<client>-<n>"), and
   record every operation: invoke and completion times (time.monotonic), the answer, or
   UNKNOWN for a ClientTimeout (a CommandError is a definite failure and is only counted);
3. meanwhile a fault thread, from its own seeded Random, kill -9s peers (and restarts them on
   the same data directory) and SIGSTOPs them for longer than an election timeout (then
   SIGCONT), targeting the leader more often than not, never with more than a minority down;
4. heals (SIGCONT everything, restarts the dead), waits for the peers to converge (one agreed
   leader, commit = applied = last log index, equal on every peer), reads every key through
   a client (recorded in the history too), converges again;
5. stops the peers and audits their logs on disk: identical on every peer up to the converged
   commit index, and replaying them through the KV state machine gives exactly the final reads;
6. checks the history for linearizability (tests/chaos/linearizability.py), after bounding each
   timed-out write by its client's next acknowledged write (exactly-once sessions, see
   `fence_by_session`).

The seed fixes every random choice (operations, keys, fault kinds, targets, durations), not the
timing: with real processes and threads no two runs interleave alike. The summary prints it so
that a similar schedule can be rerun; the history and logs of a failing run are the evidence.

Exit status: 0 linearizable and converged; 1 a violation, a divergence, or a peer that crashed
or could not restart; 2 bad arguments. A checker that runs out of time is reported loudly but
is not a verdict (exit 0). The history is kept as DATA_DIR/history.jsonl; a temporary data
directory is deleted after a passing run and kept after a failing one.
"""

from tests.chaos.cli import config_from_args, main
from tests.chaos.config import ChaosConfig, ChaosReport, Convergence, check_history
from tests.chaos.constants import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    FINAL_CLIENT,
)
from tests.chaos.runner import load_history, run_chaos

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "FINAL_CLIENT",
    "ChaosConfig",
    "ChaosReport",
    "Convergence",
    "check_history",
    "config_from_args",
    "load_history",
    "main",
    "run_chaos",
]
