"""The peer processes of a chaos run: start, kill, pause, restart, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transport.chaos.config import ChaosConfig
from transport.chaos.constants import LAUNCHER, START_TIMEOUT, STOP_GRACE, TICK
from transport.peers import parse_peer


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
            command = [sys.executable, str(LAUNCHER), "run", "--self", self.id]
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
