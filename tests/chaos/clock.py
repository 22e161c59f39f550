"""The clock nemesis: peers whose Raft clocks run slightly fast or slow.

Each peer's Raft clock (monotonic: election timeouts, heartbeats, the leader's lease) runs at
a seeded rate in [1 - d, 1 + d] of real time, through the launcher's hidden `--clock-rate`
(actors/clock.py's RealClock), for the whole run and across restarts.

Why not libfaketime (Debian's faketime), as the issue first proposed: measured here, it
cannot run a peer. The `faketime` command forks (kill -9 and SIGSTOP would reach the wrong
pid); preloaded with a faked CLOCK_MONOTONIC, CPython's timed lock waits never time out; and
preloaded with only the wall clock faked (FAKETIME_DONT_FAKE_MONOTONIC=1, a +1 h offset and
nothing else), a 3-peer cluster's peers stop hearing each other's answers over ZeroMQ (4 ok
operations in 5 s instead of about 3,700; its replicators log "no response ... in time"). So
the drift is injected where a peer reads its clock. Nothing in a peer reads the wall clock
except its log lines' timestamps.

Within the lease's margin (10 %: actors/read_only.py) reads must stay linearizable. Beyond
it, a leader whose clock runs slow enough against its followers' can still believe in its
lease after they stopped refusing votes and a new leader was elected: a lease read may then
miss a write the new leader committed (a stale read). ReadIndex reads do not depend on clocks;
elections only get slower or more frequent.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from tests.chaos.config import ChaosConfig


def clock_rates(config: ChaosConfig, peers: Sequence[str]) -> dict[str, float]:
    """Each peer's Raft clock rate, seeded by its place in `peers`; {} when the nemesis is
    off (every clock then runs at 1.0)."""
    if not config.clock_drift:
        return {}
    rates = {}
    for index, peer in enumerate(peers):
        rng = random.Random(f"{config.seed}/clock/{index}")
        rates[peer] = round(1.0 + rng.uniform(-config.clock_drift, config.clock_drift), 4)
    return rates
