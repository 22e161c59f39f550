"""A chaos run's configuration, and the report that turns what it saw into a verdict."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.chaos.constants import EXIT_FAILED, EXIT_OK, FINAL_CLIENT
from tests.chaos.linearizability import (
    CheckResult,
    Operation,
    Outcome,
    Verdict,
    check,
    fence_by_session,
)
from tests.chaos.timeline import Failure, LeaderChange, Window


@dataclass(frozen=True)
class ChaosConfig:
    """One chaos run. `peers` None means `size` peers on ports picked at start."""

    peers: tuple[str, ...] | None = None
    size: int = 3
    duration: float = 60.0
    clients: int = 4
    keys: int = 5
    seed: int = 0
    data_dir: str | None = None
    election_timeout_ms: int = 300
    # A KVClient's per-operation budget. Short on purpose: failovers then end some operations
    # in ClientTimeout, and unknown outcomes are where duplicate or lost writes would hide.
    client_timeout: float = 1.0
    fault_gap: tuple[float, float] = (0.3, 2.0)  # seconds between a recovery and the next fault
    kill_downtime: tuple[float, float] = (0.2, 3.0)  # seconds a killed peer stays dead
    pause_factor: tuple[float, float] = (1.5, 6.0)  # SIGSTOP length, in election timeouts
    leader_bias: float = 0.6  # probability a fault targets the current leader
    converge_timeout: float = 60.0
    check_timeout: float = 300.0
    log_level: str = "WARNING"
    # Small, so that a run of a few thousand writes snapshots and compacts many times: a killed
    # peer then often comes back behind the leader's log and catches up by InstallSnapshot.
    snapshot_threshold: int = 200
    snapshot_log_margin: int = 50
    # Network partitions (tests/chaos/network.py): on where the machine allows (root, ip, nft),
    # else skipped with the reason in the summary. Held for this many election timeouts.
    partitions: bool = True
    partition_hold: tuple[float, float] = (2.0, 10.0)
    # The wipe nemesis (tests/chaos/wipe.py): a killed follower loses its data directory.
    wipes: bool = True
    # The membership nemesis (tests/chaos/membership.py): peers added, removed, replaced;
    # learners added and promoted. Needs peers on addresses the run picks (--peers N): skipped
    # with the reason otherwise.
    membership: bool = True

    @property
    def changes_membership(self) -> bool:
        return self.membership and self.peers is None

    # The clock nemesis (tests/chaos/clock.py): each peer's Raft clock runs at a seeded rate in
    # [1 - d, 1 + d] of real time. The lease assumes drift within 10 % (actors/read_only.py);
    # 0 turns this off.
    clock_drift: float = 0.05
    # Share of gets that ask for a lease read (the rest are ReadIndex reads); odd-numbered
    # clients read from any peer (follower reads), even ones from the leader.
    lease_reads: float = 0.4

    def __post_init__(self) -> None:
        if self.peer_count < 3:
            raise ValueError("chaos needs at least 3 peers (a minority must be able to fail)")
        if self.duration <= 0:
            raise ValueError("--duration must be positive")
        if self.clients < 1 or self.keys < 1:
            raise ValueError("--clients and --keys must be at least 1")
        if self.election_timeout_ms <= 0:
            raise ValueError("--election-timeout-ms must be positive")
        if self.client_timeout <= 0 or self.check_timeout <= 0 or self.converge_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.snapshot_threshold < 0 or self.snapshot_log_margin < 0:
            raise ValueError("--snapshot-threshold and --snapshot-log-margin must be >= 0")
        if not 0 <= self.clock_drift < 0.5:
            raise ValueError("--clock-drift must be in [0, 0.5)")
        if not 0 <= self.lease_reads <= 1:
            raise ValueError("--lease-reads must be in [0, 1]")

    @property
    def peer_count(self) -> int:
        return len(self.peers) if self.peers is not None else self.size

    @property
    def max_down(self) -> int:
        """Peers that may be down at once: a minority, so a quorum always survives."""
        return (self.peer_count - 1) // 2


@dataclass
class Convergence:
    """How the cluster ended up. `problems` empty means converged and consistent."""

    statuses: list[dict[str, Any]] = field(default_factory=list)
    commit_index: int | None = None
    log_digest: str | None = None
    final_values: dict[str, str | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class ChaosReport:
    """Everything a run observed; `exit_code` and `render` turn it into a verdict."""

    config: ChaosConfig
    peers: list[str] = field(default_factory=list)
    data_dir: str = ""
    ran_for: float = 0.0
    history: list[Operation] = field(default_factory=list)
    # Definite failures (CommandError), with their times for the timeline: not in the history.
    failures: list[Failure] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)  # every fault's window
    leader_log: list[LeaderChange] = field(default_factory=list)
    started: float = 0.0  # monotonic time the traffic began
    client_errors: Counter[str] = field(default_factory=Counter)  # unexpected, by type
    faults: Counter[str] = field(default_factory=Counter)
    leader_changes: int = 0
    terms_seen: tuple[int, int] | None = None
    peer_failures: list[str] = field(default_factory=list)  # crashes, failed restarts
    convergence: Convergence = field(default_factory=Convergence)
    check: CheckResult | None = None
    interrupted: bool = False
    skipped: list[str] = field(default_factory=list)  # nemeses this machine cannot run, why
    clock_rates: dict[str, float] = field(default_factory=dict)  # peer -> its clock's rate
    picture: str | None = None  # the timeline PNG
    command: str = ""  # the command line that reproduces this run

    @property
    def ops_ok(self) -> int:
        return sum(o.outcome is Outcome.OK and o.client != FINAL_CLIENT for o in self.history)

    @property
    def failed_ops(self) -> int:
        return len(self.failures)

    @property
    def ops_unknown(self) -> int:
        return sum(o.outcome is Outcome.UNKNOWN for o in self.history)

    @property
    def exit_code(self) -> int:
        if self.check is not None and self.check.verdict is Verdict.VIOLATION:
            return EXIT_FAILED
        if self.peer_failures or not self.convergence.ok or self.check is None:
            return EXIT_FAILED
        return EXIT_OK

    def render(self) -> str:
        """The human summary printed at the end of a run."""
        c = self.config
        rate = self.ops_ok / self.ran_for if self.ran_for else 0.0
        lines = [
            "",
            "== chaos summary ==",
            f"cluster: {len(self.peers)} peers, election timeout {c.election_timeout_ms} ms; "
            f"{c.clients} clients on {c.keys} keys for {self.ran_for:.1f}s; seed {c.seed}"
            + (" (interrupted)" if self.interrupted else ""),
            f"operations: {self.ops_ok} ok, {self.ops_unknown} unknown (timed out), "
            f"{self.failed_ops} failed; {rate:.0f} ok ops/s",
        ]
        if self.client_errors:
            lines.append(f"unexpected client errors: {dict(self.client_errors)}")
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        lines.append(f"faults: {faults}")
        lines.extend(f"skipped: {reason}" for reason in self.skipped)
        if self.clock_rates:
            rates = ", ".join(f"{p} x{r:.3f}" for p, r in self.clock_rates.items())
            lines.append(f"clock rates: {rates}")
        terms = f" (terms {self.terms_seen[0]}..{self.terms_seen[1]})" if self.terms_seen else ""
        lines.append(f"leader changes seen: {self.leader_changes}{terms}")
        lines.extend(f"PEER FAILURE: {failure}" for failure in self.peer_failures)
        conv = self.convergence
        if conv.ok:
            lines.append(
                f"convergence: OK - every peer at commit = applied = last index "
                f"{conv.commit_index}; membership agreed ({len(self.peers)} voters); "
                f"logs identical on disk (sha256 {conv.log_digest}); "
                f"each peer's snapshot + log = final reads of {len(conv.final_values)} keys"
            )
            snapshots = ", ".join(
                f"{s['id']} {s.get('snapshot_index', 0)} (log from {s.get('first_log_index', 1)})"
                for s in conv.statuses
            )
            lines.append(f"snapshots (snapshot threshold {c.snapshot_threshold}): {snapshots}")
        else:
            lines.append("convergence: FAILED")
            lines.extend(f"  {problem}" for problem in conv.problems)
        lines.append(self._render_check())
        lines.append(f"data: {self.data_dir}")
        if self.picture:
            lines.append(f"timeline: {self.picture}")
        if self.command:
            lines.append(f"reproduce: {self.command}")
        lines.append("RESULT: " + ("PASS" if self.exit_code == EXIT_OK else "FAIL"))
        return "\n".join(lines)

    def _render_check(self) -> str:
        result = self.check
        if result is None:
            return "linearizability: not checked"
        what = f"{result.operations} ops on {result.keys} keys in {result.elapsed:.2f}s"
        if result.verdict is Verdict.OK:
            return f"linearizability: OK ({what})"
        if result.verdict is Verdict.UNKNOWN:
            return (
                "!" * 72 + f"\nWARNING: linearizability NOT DECIDED ({what}): "
                f"{result.description}. This is not a verdict; rerun with a larger "
                "check budget or a shorter run.\n" + "!" * 72
            )
        return f"linearizability: VIOLATION ({what})\n{result.description}"


def check_history(history: Sequence[Operation], timeout: float) -> CheckResult:
    """The run's verdict on a history: fence timed-out writes by their session, then check."""
    return check(fence_by_session(history), timeout=timeout)
