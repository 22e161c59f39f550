"""The chaos runner (tests/chaos/) against real peer processes: a short combined run (kill,
pause, partitions where the machine allows, wipes, drifting clocks, membership changes) must
inject its faults, complete operations, converge and be linearizable, and draw its timeline; a
doctored history must fail the run through the same reporting path; Ctrl-C ends a run early
and stops every peer and removes every namespace."""

from __future__ import annotations

import io
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from actors.wait import wait_until
from tests.chaos import (
    FINAL_CLIENT,
    ChaosConfig,
    ChaosReport,
    Convergence,
    check_history,
    config_from_args,
    load_history,
    run_chaos,
)
from tests.chaos.cli import build_parser
from tests.chaos.linearizability import GET, PUT, Operation, Outcome, Verdict
from tests.chaos.network import unavailable as network_unavailable
from transport.peers import free_ports

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CHAOS = [sys.executable, "-m", "tests.chaos"]
RUN_SECONDS = 30.0  # CI budget: the whole module takes about 40 s
PARTITIONS_UNAVAILABLE = network_unavailable()


def _namespaces_of(pid: int) -> list[str]:
    """The network namespaces a chaos run in process `pid` made and did not remove."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line for line in listed.splitlines() if line.startswith(f"kr{pid % 100000}-")]


def _pids(output: str) -> set[int]:
    return {int(pid) for pid in re.findall(r"\(pid (\d+)\)", output)}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def chaos_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[ChaosReport, str]:
    """One bounded chaos run shared by the tests below (the expensive part of the module)."""
    out = io.StringIO()
    config = ChaosConfig(
        duration=RUN_SECONDS,
        clients=3,
        keys=3,
        seed=20240611,
        data_dir=str(tmp_path_factory.mktemp("chaos")),
    )
    report = run_chaos(config, out=out)  # stops every peer it started, even when it raises
    return report, out.getvalue()


def test_chaos_run_is_linearizable_converges_and_injects_faults(
    chaos_run: tuple[ChaosReport, str],
) -> None:
    report, output = chaos_run
    summary = report.render()
    assert report.exit_code == 0, f"{output}\n{summary}"
    assert report.check is not None and report.check.verdict is Verdict.OK
    assert report.convergence.ok and report.convergence.commit_index
    faults = report.faults
    assert faults["kill-leader"] + faults["kill-follower"] >= 1, summary
    assert faults["pause-leader"] + faults["pause-follower"] >= 1, summary
    if PARTITIONS_UNAVAILABLE is None:
        assert sum(n for kind, n in faults.items() if kind.startswith("partition-")) >= 1, summary
        assert all(peer.startswith("10.") for peer in report.peers)  # inside the namespaces
    else:
        assert f"skipped: partitions: {PARTITIONS_UNAVAILABLE}" in summary
    assert faults["clock-skew"] == 3 and len(set(report.clock_rates.values())) == 3, summary
    assert all(0.95 <= rate <= 1.05 for rate in report.clock_rates.values())
    assert report.ops_ok >= 200, summary
    assert set(report.convergence.final_values) == {"key0", "key1", "key2"}
    # The membership nemesis changed the configuration, and every member agreed at the end.
    changes = {k: n for k, n in faults.items() if k.startswith("member-")}
    assert sum(changes.values()) >= 1, summary
    assert len(report.peers) in (3, 4)
    assert f"membership agreed ({len(report.peers)} voters)" in summary
    assert {w.family for w in report.windows} >= {"member"}
    assert "RESULT: PASS" in summary
    assert _namespaces_of(os.getpid()) == []
    # The timeline: every fault's window closed, in order, inside the run.
    assert report.windows and report.leader_log
    end = report.started + report.ran_for
    assert all(report.started <= w.start < (w.end or 0) <= end for w in report.windows)
    # Every kind of fault that kept a peer down or cut the network has its window.
    shaded = {k for k in faults if k.split("-")[0] in ("kill", "pause", "partition")}
    assert shaded - {"pause-installing"} <= {w.kind for w in report.windows}
    picture = Path(report.picture or "")
    assert picture.parent == Path(report.config.data_dir or "").resolve()
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 20_000
    # Every process the run started (first starts and restarts) has been stopped and reaped.
    pids = _pids(output)
    assert len(pids) >= 3
    assert [pid for pid in pids if not _gone(pid)] == []
    # The saved history is the checked one and re-checks the same.
    saved = load_history(Path(report.config.data_dir or "") / "history.jsonl")
    assert len(saved) == len(report.history)
    assert check_history(saved, timeout=60).verdict is Verdict.OK


def test_the_summary_prints_the_command_that_reproduces_the_run(
    chaos_run: tuple[ChaosReport, str],
) -> None:
    report, _ = chaos_run
    (line,) = [x for x in report.render().splitlines() if x.startswith("reproduce: ")]
    words = shlex.split(line.removeprefix("reproduce: "))
    assert words[:3] == ["python", "-m", "tests.chaos"]
    again = config_from_args(build_parser().parse_args(words[3:]))
    assert again == replace(report.config, data_dir=None, log_level=again.log_level)


def _doctor_stale_read(history: list[Operation]) -> list[Operation]:
    """Make one read return a value that two acknowledged writes, one after the other, both
    finished replacing before the read began. Values are unique per write, so no order explains
    it: a guaranteed violation inside an otherwise real history."""
    puts = sorted(
        (o for o in history if o.op == PUT and o.outcome is Outcome.OK),
        key=lambda o: o.invoke,
    )
    for index, read in enumerate(history):
        if read.op != GET or read.outcome is not Outcome.OK or read.client == FINAL_CLIENT:
            continue
        same_key = [p for p in puts if p.key == read.key]
        later = [p for p in same_key if p.complete is not None and p.complete < read.invoke]
        for second in reversed(later):
            first = next(
                (p for p in same_key if p.complete is not None and p.complete < second.invoke),
                None,
            )
            if first is not None:
                doctored = list(history)
                doctored[index] = replace(read, result=first.args[0])
                return doctored
    raise AssertionError("no read follows two sequential puts of its key: run too short?")


def test_a_violation_fails_the_run(chaos_run: tuple[ChaosReport, str]) -> None:
    report, _ = chaos_run
    doctored = replace(report, history=_doctor_stale_read(report.history))
    doctored.check = check_history(doctored.history, timeout=60)
    summary = doctored.render()
    assert doctored.check.verdict is Verdict.VIOLATION, summary
    assert doctored.exit_code == 1
    assert "linearizability: VIOLATION" in summary and "RESULT: FAIL" in summary
    assert doctored.check.culprit is not None
    assert doctored.check.culprit.describe(0).split("] ")[1] in summary


def test_divergence_fails_the_run_and_an_undecided_check_does_not(
    chaos_run: tuple[ChaosReport, str],
) -> None:
    report, _ = chaos_run
    diverged = replace(report, convergence=Convergence(problems=["logs differ at index 7"]))
    assert diverged.exit_code == 1
    assert "convergence: FAILED" in diverged.render()
    assert report.check is not None
    undecided = replace(report, check=replace(report.check, verdict=Verdict.UNKNOWN))
    assert undecided.exit_code == 0
    assert "NOT DECIDED" in undecided.render() and "WARNING" in undecided.render()


def test_bad_arguments_exit_2() -> None:
    (port,) = free_ports(1)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        taken = f"127.0.0.1:{port}"
        for args, message in [
            (["--clients", "0"], "at least 1"),
            (["--peers", "2"], "at least 3 peers"),
            (["--peers", "127.0.0.1:1,127.0.0.1:1"], "listed twice"),
            (["--peers", f"{taken},127.0.0.1:2,127.0.0.1:3"], f"{taken} is not available"),
            (["--duration", "0"], "positive"),
        ]:
            result = subprocess.run(
                [*CHAOS, *args], capture_output=True, text=True, timeout=60, cwd=ROOT
            )
            assert result.returncode == 2, (args, result.stderr)
            assert message in result.stderr


def test_a_data_directory_with_peer_data_is_refused(tmp_path: Path) -> None:
    ports = free_ports(3)
    peers = ",".join(f"127.0.0.1:{port}" for port in ports)
    (tmp_path / f"127.0.0.1_{ports[0]}" / "log").mkdir(parents=True)
    result = subprocess.run(
        [*CHAOS, "--peers", peers, "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2 and "already holds data" in result.stderr, result.stderr


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    """`python -m tests.chaos` as a subprocess with its output in a queue; on teardown, it and
    every peer it reported are killed if still alive."""
    process = subprocess.Popen(
        [*CHAOS, "--duration", "600", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        with process.stdout:
            for line in process.stdout:
                seen.append(line)
                lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        yield process, lines
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        reader.join(timeout=10)
        for pid in _pids("".join(seen)):
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_ctrl_c_ends_the_run_early_checks_it_and_stops_every_peer(
    runner: tuple[subprocess.Popen[str], queue.Queue[str]],
) -> None:
    process, lines = runner
    output: list[str] = []

    def collected(until: str) -> bool:
        while not lines.empty():
            output.append(lines.get())
        return any(until in line for line in output)

    wait_until(lambda: collected("leader:"), "the run to start", timeout=60)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=90)
    wait_until(lambda: collected("RESULT:"), "the summary", timeout=10)
    text = "".join(output)
    assert process.returncode == 0, text
    assert "(interrupted)" in text and "RESULT: PASS" in text
    pids = _pids(text)
    assert len(pids) >= 3 and all(_gone(pid) for pid in pids), text
    assert _namespaces_of(process.pid) == []
