"""Chaos testing: real peer processes, concurrent clients, injected faults, then a verdict.

    python launcher.py chaos [--peers 3 | --peers H:P,H:P,...] [--duration 60] [--clients 4]
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
6. checks the history for linearizability (transport/linearizability.py), after bounding each
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

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from actors.kv_store import KVStateMachine
from actors.state_machine import Command
from storage.entry import EntryType, LogEntry
from storage.log_storage import SegmentLogStorage
from transport.client import ClientTimeout, CommandError, KVClient
from transport.linearizability import (
    CAS,
    DELETE,
    GET,
    PUT,
    CheckResult,
    Operation,
    Outcome,
    Verdict,
    check,
    fence_by_session,
)
from transport.peers import free_ports, parse_peer, parse_peers

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
START_TIMEOUT = 30.0  # seconds a (re)started peer has to say "serving"
STOP_GRACE = 10.0  # seconds a peer gets to stop after SIGTERM before SIGKILL
TICK = 0.05  # pacing of the fault thread's loop and of polls of another process's state
FINAL_CLIENT = "final"  # the `client` of the reads made after the run, in the history
_LAUNCHER = Path(__file__).resolve().parents[1] / "launcher.py"
_OP_WEIGHTS = {GET: 35, PUT: 25, CAS: 25, DELETE: 15}


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
    failed_ops: int = 0  # definite failures (CommandError): not in the history
    client_errors: Counter[str] = field(default_factory=Counter)  # unexpected, by type
    faults: Counter[str] = field(default_factory=Counter)
    leader_changes: int = 0
    terms_seen: tuple[int, int] | None = None
    peer_failures: list[str] = field(default_factory=list)  # crashes, failed restarts
    convergence: Convergence = field(default_factory=Convergence)
    check: CheckResult | None = None
    interrupted: bool = False

    @property
    def ops_ok(self) -> int:
        return sum(o.outcome is Outcome.OK and o.client != FINAL_CLIENT for o in self.history)

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
        terms = f" (terms {self.terms_seen[0]}..{self.terms_seen[1]})" if self.terms_seen else ""
        lines.append(f"leader changes seen: {self.leader_changes}{terms}")
        lines.extend(f"PEER FAILURE: {failure}" for failure in self.peer_failures)
        conv = self.convergence
        if conv.ok:
            lines.append(
                f"convergence: OK - every peer at commit = applied = last index "
                f"{conv.commit_index}; logs identical on disk (sha256 {conv.log_digest}); "
                f"replayed state = final reads of {len(conv.final_values)} keys"
            )
        else:
            lines.append("convergence: FAILED")
            lines.extend(f"  {problem}" for problem in conv.problems)
        lines.append(self._render_check())
        lines.append(f"data: {self.data_dir}")
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


# -- peer processes ---------------------------------------------------------------------------


class PeerProcess:
    """One `launcher.py run --self` process, restartable on the same data directory.

    Its stdout and stderr are appended to `log_path` across restarts (a header line marks each
    start). It runs in its own session, so a Ctrl-C at the terminal reaches only the runner,
    which then stops the peers in order; and it is told the runner's pid, so it exits by itself
    if the runner dies without stopping it.
    """

    def __init__(
        self, peer_id: str, peers: Sequence[str], config: ChaosConfig, data_dir: Path
    ) -> None:
        self.id = peer_id
        self.peers = list(peers)
        self.config = config
        self.data_dir = data_dir
        host, port = parse_peer(peer_id)
        self.log_path = data_dir / "chaos-logs" / f"{host}_{port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.starts = 0
        self._log_offset = 0  # where the current start's output begins in the log file

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        """Launch the process (do not wait for it to serve: see `serving`)."""
        assert not self.running, f"{self.id} is already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            header = f"=== chaos: start #{self.starts + 1} of {self.id} at {time.time():.3f}\n"
            log.write(header.encode())
            log.flush()
            command = [sys.executable, str(_LAUNCHER), "run", "--self", self.id]
            command += ["--peers", ",".join(self.peers), "--data-dir", str(self.data_dir)]
            command += ["--election-timeout-ms", str(self.config.election_timeout_ms)]
            command += ["--log-level", self.config.log_level, "--supervisor-pid", str(os.getpid())]
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.paused = False
        self.starts += 1

    def serving(self) -> bool:
        """Has the current start printed its "serving" line? Raises if the process ended."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                output = log.read()
        except FileNotFoundError:
            output = b""
        if b" serving (pid " in output:
            return True
        if not self.running:
            raise RuntimeError(f"{self.id} exited during start-up: {self.log_tail()}")
        return False

    def wait_serving(self, timeout: float = START_TIMEOUT) -> None:
        wait_for(self.serving, f"{self.id} to serve", timeout)

    def kill(self) -> None:
        """kill -9: no chance to flush anything or say goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.paused = False

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.process is not None and self.paused and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False

    def stop(self) -> int | None:
        """SIGTERM (after SIGCONT), then SIGKILL if it does not stop within the grace period.
        Returns the exit code, None if it was not running."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.resume()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n    ".join(["", *text.splitlines()[-lines:]])


def wait_for(predicate: Callable[[], Any], what: str, timeout: float) -> Any:
    """Poll `predicate` until it returns something truthy; TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        pause.wait(TICK)  # pacing between polls of other processes' state


# -- the clients ------------------------------------------------------------------------------


class _Worker(threading.Thread):
    """One client: a single KVClient (one exactly-once session) for the whole run, issuing one
    operation at a time. Invariant: `history` holds every operation it invoked except definite
    failures, with `client` = this worker's index, in invocation order."""

    def __init__(
        self, index: int, peers: Sequence[str], config: ChaosConfig, stop: threading.Event
    ) -> None:
        super().__init__(name=f"chaos-client-{index}", daemon=True)
        self.index = index
        self.peers = list(peers)
        self.config = config
        self.stop_event = stop
        self.rng = random.Random(f"{config.seed}/client/{index}")
        self.keys = [f"key{n}" for n in range(config.keys)]
        self.history: list[Operation] = []
        self.failed = 0
        self.errors: Counter[str] = Counter()
        self.error: BaseException | None = None  # what ended the thread, if not the stop event

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as error:  # reported by the runner after join
            self.error = error

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"{self.name} failed: {self.error!r}") from self.error

    def _loop(self) -> None:
        seen: dict[str, str | None] = {}  # the last value this client saw per key: cas bait
        ops, weights = list(_OP_WEIGHTS), list(_OP_WEIGHTS.values())
        with KVClient(
            self.peers, timeout=self.config.client_timeout, attempt_timeout=0.5
        ) as client:
            n = 0
            while not self.stop_event.is_set():
                n += 1
                key = self.rng.choice(self.keys)
                op = self.rng.choices(ops, weights)[0]
                value = f"c{self.index}-{n}"  # unique in the whole run
                args: tuple[str | None, ...]
                if op == PUT:
                    args = (value,)
                elif op == CAS:
                    expected = seen.get(key) if self.rng.random() < 0.7 else None
                    args = (expected, value)
                else:
                    args = ()
                self._one(client, op, key, args, seen)

    def _one(
        self,
        client: KVClient,
        op: str,
        key: str,
        args: tuple[str | None, ...],
        seen: dict[str, str | None],
    ) -> None:
        invoke = time.monotonic()
        try:
            if op == PUT:
                assert args[0] is not None
                client.put(key, args[0])
                result: Any = None
                seen[key] = args[0]
            elif op == GET:
                result = seen[key] = client.get(key)
            elif op == DELETE:
                result = client.delete(key)
                seen[key] = None
            else:
                assert args[1] is not None
                result = client.cas(key, args[0], args[1])
                if result:
                    seen[key] = args[1]
        except CommandError:
            self.failed += 1  # definite: it had no effect, so it is not part of the history
            return
        except Exception as error:  # ClientTimeout, or anything unforeseen: outcome unknown
            if not isinstance(error, ClientTimeout):
                self.errors[type(error).__name__] += 1
            self.history.append(
                Operation(self.index, op, key, args, invoke, None, None, Outcome.UNKNOWN)
            )
            return
        self.history.append(Operation(self.index, op, key, args, invoke, time.monotonic(), result))


# -- the faults -------------------------------------------------------------------------------


class _FaultInjector(threading.Thread):
    """Kills and pauses peers at random (seeded), a minority at most, and watches leadership.

    Invariant: `down` holds every peer that is killed, restarting or paused, with the time it
    is due back; len(down) <= config.max_down whenever a fault is injected. Fault kinds come in
    shuffled pairs (kill, pause), so any run with two faults or more has both kinds.
    """

    def __init__(
        self,
        peers: dict[str, PeerProcess],
        config: ChaosConfig,
        stop: threading.Event,
        say: Callable[[str], None],
        started: float,
    ) -> None:
        super().__init__(name="chaos-faults", daemon=True)
        self.peers = peers
        self.config = config
        self.stop_event = stop
        self.say = say
        self.started = started
        self.rng = random.Random(f"{config.seed}/faults")
        self.down: dict[str, float] = {}  # peer -> when to bring it back
        self.restarting: dict[str, float] = {}  # peer -> deadline to be serving again
        self.faults: Counter[str] = Counter()
        self.failures: list[str] = []
        self.leader: str | None = None
        self.leader_changes = 0
        self.terms: list[int] = []
        self._kinds: list[str] = []
        self._next_fault = time.monotonic() + self.rng.uniform(*config.fault_gap)
        self.error: BaseException | None = None  # what ended the thread, if not the stop event

    def run(self) -> None:
        try:
            with KVClient(list(self.peers), timeout=1.0, attempt_timeout=0.25) as monitor:
                while not self.stop_event.is_set():
                    self._observe(monitor)
                    self._tend()
                    room = len(self.down) < self.config.max_down
                    if room and time.monotonic() >= self._next_fault:
                        self._inject()
                    self.stop_event.wait(TICK)
        except BaseException as error:  # reported by the runner after join
            self.error = error

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"fault thread failed: {self.error!r}") from self.error

    def _t(self) -> str:
        return f"+{time.monotonic() - self.started:6.1f}s"

    def _observe(self, monitor: KVClient) -> None:
        statuses = monitor.status()
        leaders = [(s["term"], s["id"]) for s in statuses if s.get("role") == "leader"]
        self.terms.extend(s["term"] for s in statuses if s.get("term", 0) > 0)
        if not leaders:
            return
        term, leader = max(leaders)
        if leader != self.leader:
            if self.leader is not None:
                self.leader_changes += 1
            self.say(f"{self._t()} leader: {leader} (term {term})")
            self.leader = leader

    def _tend(self) -> None:
        """Bring back peers whose downtime is over; notice restarts done and peers that died."""
        now = time.monotonic()
        for peer_id, due in list(self.down.items()):
            peer = self.peers[peer_id]
            if peer_id in self.restarting:
                try:
                    serving = peer.serving()
                except RuntimeError as error:
                    self._failure(f"{peer_id} did not come back after kill -9: {error}")
                    serving = False
                    peer.kill()
                    peer.start()  # try again: the run goes on, but it will fail
                    self.restarting[peer_id] = now + START_TIMEOUT
                if serving:
                    del self.restarting[peer_id], self.down[peer_id]
                    self._next_fault = now + self.rng.uniform(*self.config.fault_gap)
                elif now > self.restarting[peer_id]:
                    self._failure(f"{peer_id} not serving {START_TIMEOUT}s after a restart")
                    self.restarting[peer_id] = now + START_TIMEOUT
            elif now >= due:
                if peer.paused:
                    peer.resume()
                    del self.down[peer_id]
                    self._next_fault = now + self.rng.uniform(*self.config.fault_gap)
                    self.say(f"{self._t()} SIGCONT {peer_id}")
                else:
                    peer.start()
                    self.restarting[peer_id] = now + START_TIMEOUT
                    self.say(f"{self._t()} restart {peer_id} (pid {peer.pid})")
        for peer_id, peer in self.peers.items():
            if peer_id not in self.down and not peer.running:
                code = peer.process.returncode if peer.process is not None else None
                self._failure(f"{peer_id} exited by itself (code {code}):{peer.log_tail()}")
                peer.start()
                self.down[peer_id] = now
                self.restarting[peer_id] = now + START_TIMEOUT

    def _inject(self) -> None:
        up = [p for p in self.peers if p not in self.down]
        if not self._kinds:
            self._kinds = ["kill", "pause"]
            self.rng.shuffle(self._kinds)
        kind = self._kinds.pop()
        on_leader = self.leader in up and self.rng.random() < self.config.leader_bias
        target = self.leader if on_leader and self.leader is not None else self.rng.choice(up)
        peer = self.peers[target]
        role = "leader" if target == self.leader else "follower"
        now = time.monotonic()
        if kind == "kill":
            downtime = self.rng.uniform(*self.config.kill_downtime)
            peer.kill()
            self.say(f"{self._t()} kill -9 {target} ({role}), down for {downtime:.1f}s")
        else:
            downtime = self.rng.uniform(*self.config.pause_factor) * (
                self.config.election_timeout_ms / 1000
            )
            peer.pause()
            self.say(f"{self._t()} SIGSTOP {target} ({role}) for {downtime:.2f}s")
        self.faults[f"{kind}-{role}"] += 1
        self.down[target] = now + downtime

    def _failure(self, message: str) -> None:
        self.say(f"{self._t()} PEER FAILURE: {message}")
        self.failures.append(message)

    def heal(self) -> None:
        """Resume every paused peer and restart every dead one; wait until all serve."""
        for peer_id in list(self.down):
            peer = self.peers[peer_id]
            if peer.paused:
                peer.resume()
            elif not peer.running:
                peer.start()
        for peer_id in list(self.down):
            try:
                self.peers[peer_id].wait_serving()
            except (RuntimeError, TimeoutError) as error:
                self._failure(f"{peer_id} did not come back at the end: {error}")
        self.down.clear()
        self.restarting.clear()


# -- the run ----------------------------------------------------------------------------------


def run_chaos(
    config: ChaosConfig,
    stop: threading.Event | None = None,
    out: IO[str] | None = None,
) -> ChaosReport:
    """One chaos run (see the module docstring). `stop`, when set, ends the traffic-and-faults
    phase early; the run still heals, converges and checks. Every peer process is stopped
    before this returns or raises. ValueError if a peer's data directory is not empty."""
    out = out or sys.stdout
    stop = stop or threading.Event()

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    temporary = config.data_dir is None
    data_dir = Path(config.data_dir or tempfile.mkdtemp(prefix="pykka-raft-chaos-")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    ids = list(config.peers or [f"127.0.0.1:{p}" for p in free_ports(config.size)])
    # The checker's model starts with every key absent: peers must start from empty storage.
    for peer_id in ids:
        host, port = parse_peer(peer_id)
        peer_dir = data_dir / f"{host}_{port}"
        if peer_dir.exists() and any(peer_dir.iterdir()):
            raise ValueError(f"{peer_dir} already holds data: chaos needs fresh peers")
    report = ChaosReport(config, peers=ids, data_dir=str(data_dir))
    peers = {peer_id: PeerProcess(peer_id, ids, config, data_dir) for peer_id in ids}
    say(
        f"chaos: {len(ids)} peers {','.join(ids)}; {config.clients} clients, {config.keys} keys, "
        f"{config.duration:g}s, seed {config.seed}; data in {data_dir}"
    )
    try:
        for peer in peers.values():
            peer.start()
        for peer in peers.values():
            peer.wait_serving()
            say(f"peer {peer.id} serving (pid {peer.pid})")
        _drive(config, ids, peers, stop, report, say)
        say("healing: resuming paused peers, restarting dead ones")
        report.convergence = _converge_and_audit(config, ids, peers, report, say)
    finally:
        for peer in peers.values():
            peer.stop()
    _save_history(data_dir / "history.jsonl", report.history)
    say(f"checking {len(report.history)} operations for linearizability...")
    report.check = check_history(report.history, config.check_timeout)
    if temporary and report.exit_code == EXIT_OK and report.check.verdict is Verdict.OK:
        shutil.rmtree(data_dir, ignore_errors=True)
        report.data_dir = f"{data_dir} (deleted: the run passed)"
    return report


def _drive(
    config: ChaosConfig,
    ids: list[str],
    peers: dict[str, PeerProcess],
    stop: threading.Event,
    report: ChaosReport,
    say: Callable[[str], None],
) -> None:
    """Clients and faults for `config.duration` seconds (or until `stop`); leaves every peer
    up and serving. Fills the report's history, fault and leadership counts."""
    traffic_stop, fault_stop = threading.Event(), threading.Event()
    started = time.monotonic()
    workers = [_Worker(n, ids, config, traffic_stop) for n in range(config.clients)]
    injector = _FaultInjector(peers, config, fault_stop, say, started)
    for thread in (*workers, injector):
        thread.start()
    try:
        stop.wait(config.duration)
        report.interrupted = stop.is_set()
    finally:
        fault_stop.set()
        injector.join()
        try:
            injector.heal()  # before stopping the clients: their last operations can complete
        finally:
            traffic_stop.set()
            for worker in workers:
                worker.join()  # each is at most one client timeout away from noticing
    report.ran_for = time.monotonic() - started
    injector.raise_if_failed()
    for worker in workers:
        worker.raise_if_failed()
    for worker in workers:
        report.history.extend(worker.history)
        report.failed_ops += worker.failed
        report.client_errors.update(worker.errors)
    report.faults = injector.faults
    report.leader_changes = injector.leader_changes
    report.peer_failures.extend(injector.failures)
    if injector.terms:
        report.terms_seen = (min(injector.terms), max(injector.terms))


def _converge_and_audit(
    config: ChaosConfig,
    ids: list[str],
    peers: dict[str, PeerProcess],
    report: ChaosReport,
    say: Callable[[str], None],
) -> Convergence:
    """Wait for agreement, read every key (appended to the history), stop the peers, then
    compare their logs on disk and replay them. Returns what was found."""
    result = Convergence()
    keys = [f"key{n}" for n in range(config.keys)]
    try:
        _wait_converged(ids, config.converge_timeout)
    except TimeoutError as error:
        result.problems.append(f"{error}; last statuses: {_statuses(ids)}")
        return result
    with KVClient(ids, timeout=10.0, attempt_timeout=0.5) as reader:
        for key in keys:
            invoke = time.monotonic()
            try:
                value = reader.get(key)
            except Exception as error:
                result.problems.append(f"final read of {key} failed: {error!r}")
                continue
            report.history.append(
                Operation(FINAL_CLIENT, GET, key, (), invoke, time.monotonic(), value)
            )
            result.final_values[key] = value
    try:
        result.statuses = _wait_converged(ids, config.converge_timeout)
    except TimeoutError as error:
        result.problems.append(f"after the final reads: {error}; last: {_statuses(ids)}")
        return result
    result.commit_index = result.statuses[0]["commit_index"]
    say(f"converged at index {result.commit_index}; final values: {result.final_values}")
    for peer in peers.values():
        code = peer.stop()
        if code != 0:
            result.problems.append(f"{peer.id} exited with {code} on SIGTERM:{peer.log_tail()}")
    if result.problems:
        return result
    assert result.commit_index is not None
    _audit_logs(peers, result.commit_index, keys, result)
    return result


def _statuses(ids: list[str]) -> list[dict[str, Any]]:
    with KVClient(ids, timeout=1.0, attempt_timeout=0.5) as client:
        return client.status()


def _wait_converged(ids: list[str], timeout: float) -> list[dict[str, Any]]:
    """Statuses once every peer answers, agrees on one leader and term, and has applied its
    whole log, the same on all peers; the same on two polls in a row (nothing in flight)."""
    previous: list[tuple[Any, ...]] = []

    def converged() -> list[dict[str, Any]] | None:
        nonlocal previous
        statuses = _statuses(ids)
        if any("commit_index" not in s or "error" in s for s in statuses):
            previous = []
            return None
        leaders = {s["id"] for s in statuses if s["role"] == "leader"}
        summary = [
            (s["term"], s["leader"], s["commit_index"], s["applied_index"], s["last_log_index"])
            for s in statuses
        ]
        indexes = {index for (_, _, *rest) in summary for index in rest}
        agreed = len(leaders) == 1 and {(t, leader) for t, leader, *_ in summary} == {
            (statuses[0]["term"], next(iter(leaders)))
        }
        stable = agreed and len(indexes) == 1 and summary == previous
        previous = summary
        return statuses if stable else None

    statuses: list[dict[str, Any]] = wait_for(converged, "the peers to converge", timeout)
    return statuses


def _audit_logs(
    peers: dict[str, PeerProcess], commit: int, keys: list[str], result: Convergence
) -> None:
    """Compare the stopped peers' logs entry by entry up to `commit` and replay them through
    the KV state machine: every peer must hold the same log, and its state must be exactly
    what the final reads returned. (The running peers' in-memory state is not visible; their
    applied index equals `commit`, and the state machine is deterministic.)"""
    digests: dict[str, str] = {}
    logs: dict[str, list[tuple[int, int, bytes]]] = {}
    for peer in peers.values():
        host, port = parse_peer(peer.id)
        storage = SegmentLogStorage(peer.data_dir / f"{host}_{port}" / "log", sync=False)
        try:
            if storage.first_log_index() != 1:
                result.problems.append(f"{peer.id}: log starts at {storage.first_log_index()}")
                continue
            if storage.last_log_index() < commit:
                result.problems.append(
                    f"{peer.id}: log on disk ends at {storage.last_log_index()} < commit {commit}"
                )
                continue
            entries = [
                (e.term, int(e.type), e.data) for e in _read_log(storage, commit)
            ]  # index = position + 1
        finally:
            storage.close()
        logs[peer.id] = entries
        digest = hashlib.sha256()
        for term, kind, data in entries:
            digest.update(f"{term}:{kind}:{len(data)}:".encode())
            digest.update(data)
        digests[peer.id] = digest.hexdigest()[:16]
    if len(set(digests.values())) > 1:
        first, *others = logs
        for other in others:
            diff = next(
                (
                    i
                    for i, (a, b) in enumerate(zip(logs[first], logs[other], strict=True))
                    if a != b
                ),
                None,
            )
            if diff is not None:
                result.problems.append(
                    f"logs differ: {first} and {other} first disagree at index {diff + 1}: "
                    f"{logs[first][diff][:2]} vs {logs[other][diff][:2]}"
                )
        return
    if not logs:
        return
    result.log_digest = next(iter(digests.values()))
    machine = KVStateMachine()
    entries = next(iter(logs.values()))
    commands = [
        Command(index, term, data)
        for index, (term, kind, data) in enumerate(entries, start=1)
        if kind == EntryType.DATA
    ]
    for start in range(0, len(commands), 1024):
        machine.on_apply(commands[start : start + 1024])
    unexpected = sorted(set(machine.data) - set(keys))
    if unexpected:
        result.problems.append(f"replayed state has keys no client wrote: {unexpected[:5]}")
    for key in keys:
        if key in result.final_values and machine.data.get(key) != result.final_values[key]:
            result.problems.append(
                f"replayed log gives {key}={machine.data.get(key)!r} but the final read "
                f"returned {result.final_values[key]!r}"
            )


def _read_log(storage: SegmentLogStorage, last: int) -> Iterator[LogEntry]:
    index = 1
    while index <= last:
        batch = storage.get_entries(index, min(last, index + 4095))
        if not batch:
            raise RuntimeError(f"log entry {index} unreadable")
        yield from batch
        index = batch[-1].index + 1


def _save_history(path: Path, history: Sequence[Operation]) -> None:
    """One JSON object per operation: enough to re-check a run with `load_history` + check."""
    with open(path, "w") as f:
        for o in sorted(history, key=lambda o: o.invoke):
            record = {
                "client": o.client,
                "op": o.op,
                "key": o.key,
                "args": list(o.args),
                "invoke": o.invoke,
                "complete": o.complete,
                "result": o.result,
                "outcome": o.outcome.value,
            }
            f.write(json.dumps(record) + "\n")


def load_history(path: str | Path) -> list[Operation]:
    """Read a history saved by a chaos run (DATA_DIR/history.jsonl)."""
    history = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            history.append(
                Operation(
                    r["client"],
                    r["op"],
                    r["key"],
                    tuple(r["args"]),
                    r["invoke"],
                    r["complete"],
                    r["result"],
                    Outcome(r["outcome"]),
                )
            )
    return history


# -- the command line -------------------------------------------------------------------------


def config_from_args(args: argparse.Namespace) -> ChaosConfig:
    """A ChaosConfig from `launcher.py chaos` arguments; ValueError (a usage error) if they
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
    )


def main(config: ChaosConfig) -> int:
    """Run from the command line: Ctrl-C (or SIGTERM) once ends the run early but still checks
    it; a second time aborts (the peers are stopped either way)."""
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
        print(f"launcher.py: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, TimeoutError, OSError) as error:
        print(f"chaos run failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(report.render(), flush=True)
    return report.exit_code
