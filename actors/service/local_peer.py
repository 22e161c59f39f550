"""LocalPeer: one peer of the service as an OS process on this machine.

The one way this project starts, watches and stops a `launcher.py run --self` process: the
launcher's supervisor, the integration tests, the chaos runner and the benchmarks all use it.
A LocalPeer is restartable on the same data directory, and can be killed (-9), paused
(SIGSTOP) and resumed (SIGCONT) for fault injection.

With `log_path`, the process's stdout and stderr are appended to that file across restarts (a
header marks each start) and `wait_ready` watches it for the readiness line; without, the
process shares this process's stdout and stderr (the supervisor: the operator sees them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from actors.service.errors import ServiceError
from actors.service.peer import READY_MARK, PeerConfig
from actors.wait import wait_until

LAUNCHER = Path(__file__).resolve().parents[2] / "launcher.py"
START_TIMEOUT = 30.0  # seconds a (re)started peer has to print its readiness line
STOP_GRACE = 10.0  # seconds a peer gets to stop after SIGTERM before it is killed


class PeerExitedError(ServiceError):
    """The peer process ended while it was expected to start serving."""


def peer_command(
    config: PeerConfig, *, log_level: str = "WARNING", supervisor_pid: int | None = None
) -> list[str]:
    """The command line that runs `config` as a process (`launcher.py run --self ...`)."""
    command = [sys.executable, str(LAUNCHER), "run", "--self", config.peer_id]
    command += ["--peers", ",".join(config.peers), "--data-dir", str(config.data_dir)]
    command += ["--election-timeout-ms", str(config.election_timeout_ms)]
    command += ["--snapshot-threshold", str(config.snapshot_threshold)]
    command += ["--snapshot-interval-s", repr(config.snapshot_interval_s)]
    command += ["--snapshot-log-margin", str(config.snapshot_log_margin)]
    command += ["--snapshot-throttle-bytes", str(config.snapshot_throttle_bytes)]
    if config.http is not None:
        command += ["--http", config.http]
    if config.keys is not None:
        command += ["--keys", str(config.keys)]
    if config.join:
        command.append("--join")
    if config.priority != PeerConfig.priority:
        command += ["--priority", str(config.priority)]
    if config.cluster_token:
        command += ["--cluster-token", config.cluster_token]
    command += ["--log-level", log_level]
    if supervisor_pid is not None:
        # The peer stops by itself once this process is gone: no orphan outlives its starter.
        command += ["--supervisor-pid", str(supervisor_pid)]
    if not config.fsync:
        command.append("--no-fsync")
    if config.clock_rate != 1.0:
        command += ["--clock-rate", repr(config.clock_rate)]
    return command


class LocalPeer:
    """See the module docstring. Not thread-safe: one owner drives it."""

    def __init__(
        self,
        config: PeerConfig,
        *,
        log_level: str = "WARNING",
        log_path: Path | None = None,
        new_session: bool = False,
        wrapper: Sequence[str] = (),
    ) -> None:
        self.config = config
        # A command prefix that must exec the peer in place (same pid, so that kill -9 and
        # SIGSTOP reach it): e.g. `ip netns exec NS` (the chaos runner).
        self.wrapper = list(wrapper)
        self.id = config.peer_id
        self.log_level = log_level
        self.log_path = log_path
        # In its own session, a Ctrl-C at the terminal reaches only its starter, which then
        # stops the peers in order.
        self.new_session = new_session
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.starts = 0
        self._log_offset = 0  # where the current start's output begins in the log file

    def __repr__(self) -> str:
        return f"LocalPeer({self.id}, pid={self.pid}, running={self.running})"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def poll(self) -> int | None:
        """The exit code once the process has ended, else None."""
        return self.process.poll() if self.process is not None else None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Launch the process; `wait_ready` waits for it to serve."""
        assert not self.running, f"{self.id} is already running"
        command = self.wrapper + peer_command(
            self.config, log_level=self.log_level, supervisor_pid=os.getpid()
        )
        if self.log_path is None:
            self.process = subprocess.Popen(command, start_new_session=self.new_session)
        else:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as log:
                self._log_offset = log.tell()
                log.write(
                    f"=== start #{self.starts + 1} of {self.id} at {time.time():.3f}\n".encode()
                )
                log.flush()
                self.process = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=self.new_session,
                )
        self.paused = False
        self.starts += 1

    def ready(self) -> bool:
        """Has the current start printed its readiness line? PeerExitedError if it ended."""
        if READY_MARK in self.output():
            return True
        if not self.running:
            raise PeerExitedError(f"{self.id} exited during start-up:{self.log_tail()}")
        return False

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        assert self.log_path is not None, "wait_ready needs a log_path to watch"
        wait_until(self.ready, f"{self.id} to serve", timeout)

    def start_and_wait(self, timeout: float = START_TIMEOUT) -> None:
        self.start()
        self.wait_ready(timeout)

    def kill(self) -> None:
        """kill -9: no chance to flush anything or say goodbye (ends a paused process too)."""
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

    def terminate(self) -> None:
        """Ask the process to stop (SIGCONT first if paused, then SIGTERM); `wait` for it."""
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        """Wait up to `timeout` for the process to end; its exit code, or None if it runs on."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM, then SIGKILL if it has not stopped within `grace`. Returns the exit code,
        None if it was never started."""
        if self.process is None:
            return None
        self.terminate()
        if self.wait(grace) is None:
            self.kill()
        return self.process.returncode

    # -- output ------------------------------------------------------------------------------

    def output(self) -> str:
        """What the current start has written to the log so far ("" without a log)."""
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        text = self.output() if self.log_path is not None else ""
        return "\n    ".join(["", *text.splitlines()[-lines:]]) if text else " (no log)"
