"""Chaos testing: real peer processes, concurrent clients, injected faults, then a verdict.

    python -m tests.chaos [--peers 3 | --peers H:P,H:P,...] [--duration 60] [--clients 4]
                          [--keys 5] [--seed S] [--data-dir DIR] [--election-timeout-ms 300]
                          [--client-timeout 1.0] [--check-timeout 300] [--log-level WARNING]
                          [--no-partitions] [--no-wipes] [--no-membership]
                          [--clock-drift 0.05]
                          [--lease-reads 0.4]

What one run does:

1. builds its own network where the machine allows (root, `ip`, `nft`): every peer in a
   network namespace on a bridge, reachable from this process (tests/chaos/network.py);
   else partitions are skipped with the reason;
2. starts the peers (`launcher.py run --self ...`, one OS process each, ports picked now unless
   given, each Raft clock at its seeded rate: tests/chaos/clock.py), each logging to
   DATA_DIR/chaos-logs/<host>_<port>.log;
3. for `--duration` seconds, `--clients` threads each drive their own KVClient with random
   put / get (ReadIndex or lease; odd clients read from any peer) / cas / delete on `--keys`
   keys, writing unique values ("c<client>-<n>"), and record every operation: invoke and
   completion times (time.monotonic), the answer, or UNKNOWN for a ClientTimeout (a
   CommandError is a definite failure: only its times are kept, for the timeline);
4. meanwhile a fault thread (tests/chaos/faults.py), from its own seeded Random, kill -9s peers
   (restarting them on the same data directory), SIGSTOPs them for longer than an election
   timeout, partitions the network (isolate, halves, bridge, ring, one-way, flapping) and
   wipes a killed follower's data (tests/chaos/wipe.py) and changes the membership (adds,
   removes and replaces peers, learners: tests/chaos/membership.py), targeting the leader more
   often than not, never with more than a minority of processes down;
5. heals (network, SIGCONT, restarts), waits for the peers to converge (one agreed leader,
   commit = applied = last log index, equal on every peer, the same membership), reads every
   key through a client (recorded in the history too), converges again;
6. stops the peers and audits their logs on disk: identical on every peer up to the converged
   commit index, and replaying them through the KV state machine gives exactly the final reads;
7. draws DATA_DIR/timeline.png (tests/chaos/timeline.py) and checks the history for
   linearizability (tests/chaos/linearizability.py), after bounding each timed-out write by its
   client's next acknowledged write (exactly-once sessions, see `fence_by_session`).

The seed fixes every random choice (operations, keys, fault kinds, targets, durations, clock
rates), not the timing: with real processes and threads no two runs interleave alike. The
summary prints the command that reruns the seed; the history and logs of a failing run are the
evidence.

Exit status: 0 linearizable and converged; 1 a violation, a divergence, or a peer that crashed
or could not restart; 2 bad arguments. A checker that runs out of time is reported loudly but
is not a verdict (exit 0). The history and the timeline are kept as DATA_DIR/history.jsonl and
DATA_DIR/timeline.png; with a temporary data directory the peers' data is deleted after a
passing run and kept after a failing one. The namespaces are removed on every exit.
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
