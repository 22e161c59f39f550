"""One chaos run from start to verdict, the audit of the peers' logs, and the command line."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from actors.service.local_peer import LocalPeer
from actors.service.offline import PeerDisk, read_peer_disk
from actors.service.peer import PeerConfig, peer_data_dir
from actors.wait import wait_until
from storage.errors import StorageError
from tests.chaos.clock import clock_rates
from tests.chaos.config import ChaosConfig, ChaosReport, Convergence, check_history
from tests.chaos.constants import EXIT_OK, FINAL_CLIENT
from tests.chaos.faults import FaultInjector
from tests.chaos.linearizability import (
    GET,
    Operation,
    Outcome,
    Verdict,
)
from tests.chaos.network import Network
from tests.chaos.network import unavailable as network_unavailable
from tests.chaos.timeline import draw
from tests.chaos.workload import Worker
from transport.client import KVClient
from transport.peers import free_ports


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
    report = ChaosReport(config, data_dir=str(data_dir), command=reproduce_command(config))
    network = _network(config, report, say)
    try:
        return _run(config, network, data_dir, temporary, stop, report, say)
    finally:
        if network is not None:
            network.destroy()  # also on failure, Ctrl-C (KeyboardInterrupt) and SIGTERM


def _network(
    config: ChaosConfig, report: ChaosReport, say: Callable[[str], None]
) -> Network | None:
    """The run's own network namespaces, or None (partitions off or impossible here)."""
    if not config.partitions:
        return None
    reason = network_unavailable()
    if reason is None and config.peers is not None:
        reason = "network partitions need peers on addresses the run picks (--peers N)"
    if reason is not None:
        report.skipped.append(f"partitions: {reason}")
        say(f"chaos: partitions skipped: {reason}")
        return None
    # One slot more than the run starts peers: the membership nemesis's N + 1st voter.
    slots = config.peer_count + (1 if config.changes_membership else 0)
    network = Network(slots, f"kr{os.getpid() % 100000}", random.Random())
    try:
        network.create()  # removes what it made if it fails
    except OSError as error:
        report.skipped.append(f"partitions: cannot build the network: {error}")
        say(f"chaos: partitions skipped: {error}")
        return None
    return network


def _run(
    config: ChaosConfig,
    network: Network | None,
    data_dir: Path,
    temporary: bool,
    stop: threading.Event,
    report: ChaosReport,
    say: Callable[[str], None],
) -> ChaosReport:
    if config.peers is not None:
        ids = list(config.peers)
    else:
        hosts = network.addresses[: config.size] if network else ["127.0.0.1"] * config.size
        ids = [f"{host}:{port}" for host, port in zip(hosts, free_ports(config.size), strict=True)]
    # The checker's model starts with every key absent: peers must start from empty storage.
    for peer_id in ids:
        peer_dir = peer_data_dir(data_dir, peer_id)
        if peer_dir.exists() and any(peer_dir.iterdir()):
            raise ValueError(f"{peer_dir} already holds data: chaos needs fresh peers")
    report.peers = ids
    if config.membership and not config.changes_membership:
        report.skipped.append("membership: it needs peers on addresses the run picks (--peers N)")
    report.clock_rates = clock_rates(config, ids)
    if report.clock_rates:
        report.faults["clock-skew"] = sum(r != 1.0 for r in report.clock_rates.values())
    peers = {
        peer_id: _local_peer(
            peer_id,
            ids,
            config,
            data_dir,
            network.wrapper(i) if network else [],
            report.clock_rates.get(peer_id, 1.0),
        )
        for i, peer_id in enumerate(ids)
    }
    say(
        f"chaos: {len(ids)} peers {','.join(ids)}; {config.clients} clients, {config.keys} keys, "
        f"{config.duration:g}s, seed {config.seed}; data in {data_dir}"
    )
    try:
        for peer in peers.values():
            peer.start()
        for peer in peers.values():
            peer.wait_ready()
            say(f"peer {peer.id} serving (pid {peer.pid})")
        members = _drive(config, ids, peers, data_dir, network, stop, report, say)
        say(f"healed: network healed, paused peers resumed, dead ones restarted; members {members}")
        report.peers = members
        report.convergence = _converge_and_audit(config, members, peers, report, say)
    finally:
        for peer in peers.values():
            peer.stop()
    _save_history(data_dir / "history.jsonl", report.history)
    report.picture = str(
        draw(
            data_dir / "timeline.png",
            report.history,
            report.failures,
            report.windows,
            report.leader_log,
            report.started,
            report.started + report.ran_for,
            f"chaos: {len(ids)} peers, seed {config.seed}: {report.command}",
        )
    )
    say(f"checking {len(report.history)} operations for linearizability...")
    report.check = check_history(report.history, config.check_timeout)
    if temporary and report.exit_code == EXIT_OK and report.check.verdict is Verdict.OK:
        for peer_id in ids:
            shutil.rmtree(peer_data_dir(data_dir, peer_id), ignore_errors=True)
        report.data_dir = f"{data_dir} (peer data deleted: the run passed)"
    return report


def reproduce_command(config: ChaosConfig) -> str:
    """The command line that reruns `config` (same seed: same faults, kinds and timings)."""
    peers = ",".join(config.peers) if config.peers else str(config.size)
    words = ["python -m tests.chaos", f"--peers {peers}", f"--duration {config.duration:g}"]
    words += [f"--clients {config.clients}", f"--keys {config.keys}", f"--seed {config.seed}"]
    words += [f"--election-timeout-ms {config.election_timeout_ms}"]
    words += [f"--client-timeout {config.client_timeout:g}"]
    words += [f"--snapshot-threshold {config.snapshot_threshold}"]
    words += [f"--snapshot-log-margin {config.snapshot_log_margin}"]
    words += [f"--clock-drift {config.clock_drift:g}", f"--lease-reads {config.lease_reads:g}"]
    words += [] if config.partitions else ["--no-partitions"]
    words += [] if config.wipes else ["--no-wipes"]
    words += [] if config.membership else ["--no-membership"]
    return " ".join(words)


def _local_peer(
    peer_id: str,
    ids: list[str],
    config: ChaosConfig,
    data_dir: Path,
    wrapper: list[str],
    clock_rate: float,
    join: bool = False,
) -> LocalPeer:
    """Peer `peer_id`, logging to DATA_DIR/chaos-logs/<host>_<port>.log, in a session of its own
    (a Ctrl-C at the terminal reaches only the runner, which stops the peers in order), run
    through `wrapper` (its network namespace) with its clock's rate; with `join` a brand-new
    peer to be added (`ids` are then its contacts)."""
    peer_config = PeerConfig(
        peer_id,
        tuple(ids),
        data_dir,
        config.election_timeout_ms,
        snapshot_threshold=config.snapshot_threshold,
        snapshot_log_margin=config.snapshot_log_margin,
        clock_rate=clock_rate,
        join=join,
    )
    return LocalPeer(
        peer_config,
        log_level=config.log_level,
        log_path=data_dir / "chaos-logs" / f"{peer_config.peer_dir.name}.log",
        new_session=True,
        wrapper=wrapper,
    )


def _drive(
    config: ChaosConfig,
    ids: list[str],
    peers: dict[str, LocalPeer],
    data_dir: Path,
    network: Network | None,
    stop: threading.Event,
    report: ChaosReport,
    say: Callable[[str], None],
) -> list[str]:
    """Clients and faults for `config.duration` seconds (or until `stop`); leaves every peer
    up and serving and the network healed. Fills the report's history, fault and leadership
    counts and the timeline's windows. Returns the members at the end (the membership nemesis
    adds peers to `peers` and takes the ones it removed out)."""
    traffic_stop, fault_stop = threading.Event(), threading.Event()
    started = report.started = time.monotonic()
    workers = [Worker(n, ids, config, traffic_stop) for n in range(config.clients)]
    drift = random.Random(f"{config.seed}/clock/new")

    def spawn(peer_id: str, slot: int, contacts: Sequence[str]) -> LocalPeer:
        wrapper = network.wrapper(slot) if network else []
        d = config.clock_drift
        rate = round(1.0 + drift.uniform(-d, d), 4) if d else 1.0
        return _local_peer(peer_id, list(contacts), config, data_dir, wrapper, rate, join=True)

    changes = spawn if config.changes_membership else None
    injector = FaultInjector(peers, config, fault_stop, say, started, network, changes)
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
        report.failures.extend(worker.failures)
        report.client_errors.update(worker.errors)
    report.faults.update(injector.faults)
    report.windows = injector.windows
    report.leader_log = injector.leader_log
    report.leader_changes = injector.leader_changes
    report.peer_failures.extend(injector.failures)
    if injector.terms:
        report.terms_seen = (min(injector.terms), max(injector.terms))
    return list(injector.ids)


def _converge_and_audit(
    config: ChaosConfig,
    ids: list[str],
    peers: dict[str, LocalPeer],
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
        # Membership agreed: every peer holds the same configuration, and its voters and
        # learners are the run's members.
        confs = {
            (tuple(sorted(s.get("conf", []))), tuple(sorted(s.get("learners", []))))
            for s in statuses
        }
        agreed = (
            len(leaders) == 1
            and len(confs) == 1
            and sorted(p for conf in confs for group in conf for p in group) == sorted(ids)
            and {(t, leader) for t, leader, *_ in summary}
            == {(statuses[0]["term"], next(iter(leaders)))}
        )
        stable = agreed and len(indexes) == 1 and summary == previous
        previous = summary
        return statuses if stable else None

    statuses: list[dict[str, Any]] = wait_until(converged, "the peers to converge", timeout)
    return statuses


def _audit_logs(
    peers: dict[str, LocalPeer], commit: int, keys: list[str], result: Convergence
) -> None:
    """Compare the stopped peers' logs entry by entry up to `commit` (over the range every peer
    still holds: snapshots compact the log) and rebuild each peer's state from its disk (its
    newest snapshot, then its log): every peer must hold the same log, and its state must be
    exactly what the final reads returned. (The running peers' in-memory state is not visible;
    their applied index equals `commit`, and the state machine is deterministic.)"""
    disks: dict[str, PeerDisk] = {}
    for peer in peers.values():
        try:
            disk = read_peer_disk(peer.config.peer_dir, upto=commit)
        except StorageError as error:
            result.problems.append(f"{peer.id}: {error}")
            continue
        held = max(disk.entries[-1].index if disk.entries else 0, disk.snapshot_index)
        if held < commit:
            result.problems.append(f"{peer.id}: disk holds up to {held} < commit {commit}")
            continue
        disks[peer.id] = disk
    if not disks:
        return
    first = max(disk.first_log_index for disk in disks.values())
    logs = {
        peer: [(e.term, int(e.type), e.data) for e in disk.entries if e.index >= first]
        for peer, disk in disks.items()
    }
    digests: dict[str, str] = {}
    for peer, entries in logs.items():
        digest = hashlib.sha256()
        for term, kind, data in entries:
            digest.update(f"{term}:{kind}:{len(data)}:".encode())
            digest.update(data)
        digests[peer] = digest.hexdigest()[:16]
    if len(set(digests.values())) > 1:
        one, *others = logs
        for other in others:
            diff = next(
                (i for i, (a, b) in enumerate(zip(logs[one], logs[other], strict=False)) if a != b),
                None,
            )
            if diff is not None:
                result.problems.append(
                    f"logs differ: {one} and {other} first disagree at index {first + diff}: "
                    f"{logs[one][diff][:2]} vs {logs[other][diff][:2]}"
                )
        return
    result.log_digest = next(iter(digests.values()))
    for peer, disk in disks.items():
        data = disk.state.data
        unexpected = sorted(set(data) - set(keys))
        if unexpected:
            result.problems.append(f"{peer}: state has keys no client wrote: {unexpected[:5]}")
        for key in keys:
            if key in result.final_values and data.get(key) != result.final_values[key]:
                result.problems.append(
                    f"{peer}: snapshot and log give {key}={data.get(key)!r} but the final read "
                    f"returned {result.final_values[key]!r}"
                )


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
