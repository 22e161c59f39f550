"""The fault thread of a chaos run: kill -9 and SIGSTOP, the leader more often than not,
never more than a minority down at once."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable

from actors.service.local_peer import START_TIMEOUT, LocalPeer, PeerExitedError
from tests.chaos.config import ChaosConfig
from tests.chaos.constants import TICK
from transport.client import KVClient


class FaultInjector(threading.Thread):
    """Kills and pauses peers at random (seeded), a minority at most, and watches leadership.

    Invariant: `down` holds every peer that is killed, restarting or paused, with the time it
    is due back; len(down) <= config.max_down whenever a fault is injected. Fault kinds come in
    shuffled pairs (kill, pause), so any run with two faults or more has both kinds.
    """

    def __init__(
        self,
        peers: dict[str, LocalPeer],
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
                    serving = peer.ready()
                except PeerExitedError as error:
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
                code = peer.poll()
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
                self.peers[peer_id].wait_ready()
            except (PeerExitedError, TimeoutError) as error:
                self._failure(f"{peer_id} did not come back at the end: {error}")
        self.down.clear()
        self.restarting.clear()
