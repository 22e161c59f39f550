"""The fault thread of a chaos run: kill -9, SIGSTOP, network partitions and data-directory
wipes, the leader more often than not, never more than a minority of processes down at once."""

from __future__ import annotations

import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors.service.local_peer import START_TIMEOUT, LocalPeer, PeerExitedError
from tests.chaos import network as shapes
from tests.chaos.config import ChaosConfig
from tests.chaos.constants import TICK
from tests.chaos.network import Link, Network
from tests.chaos.timeline import LeaderChange, Window
from tests.chaos.wipe import Wipe
from transport.client import KVClient

PARTITION_SHAPES = ("isolate", "halves", "bridge", "ring", "one-way", "flap")


@dataclass
class Partition:
    """The cut in force: `links` dropped until `until`; a flapping one toggles at `toggle`."""

    window: Window
    links: frozenset[Link]
    until: float
    flap: float | None = None  # seconds between toggles, for a flapping partition
    toggle: float = 0.0
    on: bool = True


class FaultInjector(threading.Thread):
    """Injects faults at random (seeded) and watches leadership.

    Invariants: `down` holds every peer that is killed, restarting, paused or being wiped, with
    the time it is due back; len(down) <= config.max_down whenever a fault is injected. At most
    one partition is in force, and a partition is not `down` (its peers still run). While a
    wiped peer is catching up (`wipe`), no other fault starts: it holds no data yet but votes,
    so one more fault could let it help elect a leader that lacks committed entries. Fault
    kinds come from shuffled decks (kill, pause and, where enabled, partitions and a wipe), so
    a run with a deck's worth of faults has every kind.
    """

    def __init__(
        self,
        peers: dict[str, LocalPeer],
        config: ChaosConfig,
        stop: threading.Event,
        say: Callable[[str], None],
        started: float,
        network: Network | None = None,
    ) -> None:
        super().__init__(name="chaos-faults", daemon=True)
        self.peers = peers
        self.ids = list(peers)
        self.config = config
        self.stop_event = stop
        self.say = say
        self.started = started
        self.network = network
        self.rng = random.Random(f"{config.seed}/faults")
        self.down: dict[str, float] = {}  # peer -> when to bring it back
        self.restarting: dict[str, float] = {}  # peer -> deadline to be serving again
        self.partition: Partition | None = None
        self.wipe: Wipe | None = None
        self.faults: Counter[str] = Counter()
        self.failures: list[str] = []
        self.windows: list[Window] = []
        self._open: dict[str, Window] = {}  # peer -> the window of the fault keeping it down
        self.leader: str | None = None
        self.leader_log: list[LeaderChange] = []
        self.leader_changes = 0
        self.terms: list[int] = []
        self.statuses: dict[str, dict[str, Any]] = {}
        self._kinds: list[str] = []
        self._next_fault = time.monotonic() + self.rng.uniform(*config.fault_gap)
        self.error: BaseException | None = None  # what ended the thread, if not the stop event

    @property
    def election_timeout(self) -> float:
        return self.config.election_timeout_ms / 1000

    def run(self) -> None:
        try:
            with KVClient(self.ids, timeout=1.0, attempt_timeout=0.25) as monitor:
                while not self.stop_event.is_set():
                    self._observe(monitor)
                    self._tend()
                    self._tend_partition()
                    room = self.wipe is None and len(self.down) < self.config.max_down
                    if room and time.monotonic() >= self._next_fault:
                        self._inject()
                    self.stop_event.wait(TICK)
        except BaseException as error:  # reported by the runner after join
            self.error = error
            self.say(f"fault thread failed:\n{traceback.format_exc()}")

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"fault thread failed: {self.error!r}") from self.error

    def _t(self) -> str:
        return f"+{time.monotonic() - self.started:6.1f}s"

    def _observe(self, monitor: KVClient) -> None:
        statuses = monitor.status()
        self.statuses = {s["id"]: s for s in statuses}
        leaders = [(s["term"], s["id"]) for s in statuses if s.get("role") == "leader"]
        self.terms.extend(s["term"] for s in statuses if s.get("term", 0) > 0)
        if not leaders:
            return
        term, leader = max(leaders)
        if leader != self.leader:
            if self.leader is not None:
                self.leader_changes += 1
            self.leader_log.append(LeaderChange(time.monotonic(), leader, term))
            self.say(f"{self._t()} leader: {leader} (term {term})")
            self.leader = leader

    # -- bringing peers back ------------------------------------------------------------------

    def _tend(self) -> None:
        """Bring back peers whose downtime is over; notice restarts done and peers that died."""
        now = time.monotonic()
        for peer_id, due in list(self.down.items()):
            peer = self.peers[peer_id]
            if self.wipe is not None and self.wipe.peer == peer_id:
                self._tend_wipe(self.wipe, now)
            elif peer_id in self.restarting:
                if self._restarted(peer_id, now):
                    del self.restarting[peer_id]
                    self._back(peer_id, now)
            elif now >= due:
                if peer.paused:
                    peer.resume()
                    self._back(peer_id, now)
                    self.say(f"{self._t()} SIGCONT {peer_id}")
                else:
                    self._start(peer_id, now)
        for peer_id, peer in self.peers.items():
            if peer_id not in self.down and not peer.running:
                code = peer.poll()
                self._failure(f"{peer_id} exited by itself (code {code}):{peer.log_tail()}")
                peer.start()
                self.down[peer_id] = now
                self.restarting[peer_id] = now + START_TIMEOUT

    def _start(self, peer_id: str, now: float) -> None:
        peer = self.peers[peer_id]
        peer.start()
        self.restarting[peer_id] = now + START_TIMEOUT
        self.say(f"{self._t()} restart {peer_id} (pid {peer.pid})")

    def _restarted(self, peer_id: str, now: float) -> bool:
        """Is the restarted peer serving? Records a failure (and retries) if it cannot."""
        peer = self.peers[peer_id]
        try:
            if peer.ready():
                return True
        except PeerExitedError as error:
            self._failure(f"{peer_id} did not come back after kill -9: {error}")
            peer.kill()
            peer.start()  # try again: the run goes on, but it will fail
            self.restarting[peer_id] = now + START_TIMEOUT
            return False
        if now > self.restarting[peer_id]:
            self._failure(f"{peer_id} not serving {START_TIMEOUT}s after a restart")
            self.restarting[peer_id] = now + START_TIMEOUT
        return False

    def _back(self, peer_id: str, now: float) -> None:
        """`peer_id` is up again: its fault's window ends and the next fault is scheduled."""
        del self.down[peer_id]
        window = self._open.pop(peer_id, None)
        if window is not None:
            window.end = now
        self._next_fault = now + self.rng.uniform(*self.config.fault_gap)

    def _tend_wipe(self, wipe: Wipe, now: float) -> None:
        """Move a wipe along: wait for the rule, wipe, restart, maybe pause mid-install, then
        wait for the peer to catch up (see tests/chaos/wipe.py)."""
        peer = self.peers[wipe.peer]
        if wipe.stage == "down" and now >= self.down[wipe.peer]:
            others = [self.statuses.get(p, {}) for p in self.ids if p != wipe.peer]
            if wipe.safe_to_wipe(others):
                wipe.wipe(peer)
                self.faults["wipe-follower"] += 1
                self.say(f"{self._t()} wiped {wipe.peer}'s data directory: {wipe.describe()}")
            elif now < wipe.give_up:
                return
            else:
                self.faults["wipe-abandoned"] += 1
                self.say(f"{self._t()} wipe of {wipe.peer} abandoned: {wipe.why_not(others)}")
            self._start(wipe.peer, now)
            wipe.stage = "restarting"
        elif wipe.stage == "restarting" and self._restarted(wipe.peer, now):
            del self.restarting[wipe.peer]
            wipe.stage = "catching-up"
            wipe.catch_up_to = max(s.get("commit_index", 0) for s in self.statuses.values())
            if wipe.wiped and self.rng.random() < 0.5:
                # Most likely mid-InstallSnapshot now: it has nothing, and the leader's log
                # starts after its snapshot.
                pause = self.rng.uniform(*self.config.pause_factor) * self.election_timeout
                peer.pause()
                wipe.paused_until = now + pause
                self.faults["pause-installing"] += 1
                self.say(f"{self._t()} SIGSTOP {wipe.peer} while it installs, {pause:.2f}s")
        elif wipe.stage == "catching-up":
            if peer.paused:
                if now >= wipe.paused_until:
                    peer.resume()
                    self.say(f"{self._t()} SIGCONT {wipe.peer}")
                return
            applied = self.statuses.get(wipe.peer, {}).get("applied_index", -1)
            if applied >= wipe.catch_up_to:
                self.say(f"{self._t()} {wipe.peer} caught up to {wipe.catch_up_to}")
                self.wipe = None
                self._back(wipe.peer, now)

    # -- partitions ---------------------------------------------------------------------------

    def _tend_partition(self) -> None:
        partition, now = self.partition, time.monotonic()
        if partition is None or self.network is None:
            return
        if now >= partition.until:
            self.network.heal()
            partition.window.end = now
            self.partition = None
            self._next_fault = now + self.rng.uniform(*self.config.fault_gap)
            self.say(f"{self._t()} healed the network")
        elif partition.flap is not None and now >= partition.toggle:
            partition.on = not partition.on
            self.network.apply(partition.links if partition.on else frozenset())
            partition.toggle = now + partition.flap

    def _partition(self, now: float) -> None:
        assert self.network is not None
        size, shape = len(self.ids), self.rng.choice(PARTITION_SHAPES)
        target = self.ids.index(self._pick_target())
        flap = None
        if shape in ("isolate", "flap"):
            links = shapes.isolate(size, target)
        elif shape == "halves":
            links = shapes.halves(size, self.rng)
        elif shape == "bridge":
            links = shapes.bridge(size, self.rng)
        elif shape == "ring":
            links = shapes.majorities_ring(size, self.rng)
        else:
            links = shapes.one_way(size, target, self.rng)
        if shape == "flap":
            flap = self.rng.uniform(0.5, 2.0) * self.election_timeout
        hold = self.rng.uniform(*self.config.partition_hold) * self.election_timeout
        described = self._describe(links)
        window = Window(f"partition-{shape}", described, now)
        self.windows.append(window)
        self.network.apply(links)
        self.partition = Partition(window, links, now + hold, flap, now + (flap or 0.0))
        self.faults[f"partition-{shape}"] += 1
        every = f", flapping every {flap:.2f}s" if flap else ""
        self.say(f"{self._t()} partition {shape}: {described} for {hold:.1f}s{every}")

    def _describe(self, links: frozenset[Link]) -> str:
        """Who cannot send to whom, by port: '7001-x->7002,7003; ...'."""
        port = [peer.rsplit(":", 1)[1] for peer in self.ids]
        cut = {}
        for a, b in sorted(links):
            cut.setdefault(port[a], []).append(port[b])
        return "; ".join(f"{a}-x->{','.join(bs)}" for a, bs in cut.items())

    # -- injecting ----------------------------------------------------------------------------

    def _pick_target(self) -> str:
        """A running peer: the leader with probability leader_bias, else any."""
        up = [p for p in self.ids if p not in self.down]
        on_leader = self.leader in up and self.rng.random() < self.config.leader_bias
        return self.leader if on_leader and self.leader is not None else self.rng.choice(up)

    def _deck(self) -> list[str]:
        kinds = ["kill", "pause"]
        if self.network is not None:
            kinds += ["partition", "partition"]
        if self.config.wipes:
            kinds.append("wipe")
        self.rng.shuffle(kinds)
        return kinds

    def _inject(self) -> None:
        now = time.monotonic()
        if not self._kinds:
            self._kinds = self._deck()
        kind = self._kinds.pop()
        if kind == "partition":
            if self.partition is None:
                self._partition(now)
                self._next_fault = now + self.rng.uniform(*self.config.fault_gap)
                return
            kind = "kill"
        if kind == "wipe":
            followers = [
                p
                for p in self.ids
                if p not in self.down and self.statuses.get(p, {}).get("role") == "follower"
            ]
            if not self.down and self.partition is None and followers:
                self._start_wipe(self.rng.choice(followers), now)
                return
            kind = "kill"
        target = self._pick_target()
        peer = self.peers[target]
        role = "leader" if target == self.leader else "follower"
        if kind == "kill":
            downtime = self.rng.uniform(*self.config.kill_downtime)
            peer.kill()
            self.say(f"{self._t()} kill -9 {target} ({role}), down for {downtime:.1f}s")
        else:
            downtime = self.rng.uniform(*self.config.pause_factor) * self.election_timeout
            peer.pause()
            self.say(f"{self._t()} SIGSTOP {target} ({role}) for {downtime:.2f}s")
        self.faults[f"{kind}-{role}"] += 1
        self._down(target, f"{kind}-{role}", now, now + downtime)

    def _start_wipe(self, target: str, now: float) -> None:
        peer = self.peers[target]
        peer.kill()
        self.wipe = Wipe.after_kill(peer, now + 20 * self.election_timeout + 5.0)
        downtime = self.rng.uniform(*self.config.kill_downtime)
        self.say(f"{self._t()} kill -9 {target} (follower) to wipe it: {self.wipe.describe()}")
        self._down(target, "wipe-follower", now, now + downtime)

    def _down(self, target: str, kind: str, now: float, due: float) -> None:
        window = Window(kind, target, now)
        self.windows.append(window)
        self._open[target] = window
        self.down[target] = due

    def _failure(self, message: str) -> None:
        self.say(f"{self._t()} PEER FAILURE: {message}")
        self.failures.append(message)

    def heal(self) -> None:
        """Heal the network, resume every paused peer and restart every dead one; wait until
        all serve. (A wipe in progress simply ends: the peer catches up during convergence.)"""
        now = time.monotonic()
        if self.network is not None:
            self.network.heal()
        if self.partition is not None:
            self.partition.window.end = now
            self.partition = None
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
        for window in self._open.values():
            window.end = time.monotonic()
        self._open.clear()
        self.down.clear()
        self.restarting.clear()
        self.wipe = None
