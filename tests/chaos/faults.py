"""The fault thread of a chaos run: kill -9, SIGSTOP, network partitions, data-directory
wipes and membership changes (tests/chaos/membership.py), the leader more often than not,
never more than a minority of processes down at once."""

from __future__ import annotations

import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from actors.service.local_peer import START_TIMEOUT, LocalPeer, PeerExitedError
from actors.wait import wait_until
from tests.chaos import network as shapes
from tests.chaos.config import ChaosConfig
from tests.chaos.constants import TICK
from tests.chaos.membership import GROW, SHRINK, Change, leader_members, plan
from tests.chaos.network import Link, Network
from tests.chaos.timeline import LeaderChange, Window
from tests.chaos.wipe import Wipe
from transport.client import KVClient
from transport.peers import free_ports

# Starts a brand-new joining peer: (its id, its network slot, the peers to contact).
Spawn = Callable[[str, int, Sequence[str]], LocalPeer]

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

    Membership (`spawn` given): `ids` are the members (voters and learners), as the leader last
    reported them once no change ran; `peers` holds every process of the run not retired (the
    members, and a new peer while it is being added). A peer a change took out of the
    configuration is stopped and dropped from both. `slots` says which network namespace each
    peer of `peers` lives in.
    """

    def __init__(
        self,
        peers: dict[str, LocalPeer],
        config: ChaosConfig,
        stop: threading.Event,
        say: Callable[[str], None],
        started: float,
        network: Network | None = None,
        spawn: Spawn | None = None,
    ) -> None:
        super().__init__(name="chaos-faults", daemon=True)
        self.peers = peers
        self.ids = list(peers)
        self.founders = len(self.ids)  # N: the run keeps N or N + 1 voters
        self.slots = {peer: slot for slot, peer in enumerate(self.ids)}
        self.spawn = spawn
        self.change: Change | None = None
        self._change_window: Window | None = None
        self.retired: list[str] = []
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
                    self._tend_membership()
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
        # The shapes cut links between members; the network cuts between their slots.
        slot = [self.slots[peer] for peer in self.ids]
        links = frozenset((slot[a], slot[b]) for a, b in links)
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
        if self.spawn is not None:
            kinds += ["membership", "membership"]
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
        if kind == "membership":
            if self.change is None and self._start_change(now):
                self._next_fault = now + self.rng.uniform(*self.config.fault_gap)
                return
            kind = "kill"
        if kind == "wipe":
            followers = self._followers_up()
            if not self.down and self.partition is None and self.change is None and followers:
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

    def _followers_up(self) -> list[str]:
        return [
            p
            for p in self.ids
            if p not in self.down and self.statuses.get(p, {}).get("role") == "follower"
        ]

    # -- membership (tests/chaos/membership.py) ---------------------------------------------

    def _start_change(self, now: float) -> bool:
        """Start a membership change that fits the configuration now; False if none does
        (the leader unknown, a joint configuration, no follower up to remove)."""
        seen = leader_members(list(self.statuses.values()))
        if seen is None or not seen[1] or seen[0] != set(self.ids) or self.leader is None:
            return False
        voters = set(self.statuses.get(self.leader, {}).get("conf", ()))
        learners = sorted(set(self.ids) - voters)
        followers = [p for p in self._followers_up() if p in voters]
        new_peer = victim = None
        if learners:
            kind = "promote-learner"
        elif len(voters) <= self.founders:
            kind = self.rng.choice(GROW)
        else:
            kind = self.rng.choice(SHRINK)
        if kind in ("replace", "remove-follower"):
            if not followers:
                return False
            victim = self.rng.choice(followers)
        elif kind == "remove-leader":
            victim = self.leader
        if kind in GROW:
            new_peer = self._spawn_new_peer()
        if kind == "replace":
            assert victim is not None
            self.peers[victim].kill()  # for good: the new peer takes its place
            self._down(victim, "kill-replaced", now, float("inf"))
        steps = plan(kind, learners[0] if learners else new_peer, victim)
        contacts = [*self.ids, *([new_peer] if new_peer else [])]
        self.change = Change(kind, steps, contacts, new_peer, victim)
        self._change_window = Window(f"member-{kind}", self.change.describe(), now)
        self.windows.append(self._change_window)
        self.say(f"{self._t()} membership: {kind}: {self.change.describe()}")
        self.change.start()
        return True

    def _spawn_new_peer(self) -> str:
        """Start a brand-new peer (--join) in a free slot, on a new port."""
        assert self.spawn is not None
        used = set(self.slots.values())
        slot = next(s for s in range(self.founders + 1) if s not in used)
        host = self.network.addresses[slot] if self.network is not None else "127.0.0.1"
        [port] = free_ports(1)
        peer_id = f"{host}:{port}"
        peer = self.spawn(peer_id, slot, list(self.ids))
        peer.start()
        self.peers[peer_id] = peer  # not in `ids` until a member: no fault targets it
        self.slots[peer_id] = slot
        return peer_id

    def _tend_membership(self) -> None:
        """Whenever no change runs and the leader reports a settled configuration (not joint)
        other than `ids`, take it: the members are `ids`, the peers it dropped are retired, a
        replaced victim the cluster still counts comes back. Not only once a change ends: a
        step that timed out may still take effect afterwards (its outcome was unknown)."""
        change = self.change
        if change is not None and change.is_alive():
            return
        now = time.monotonic()
        if change is not None and self._change_window is not None:
            self._change_window.end = change.ended or now
            self._change_window = None
            self.faults[f"member-{change.kind}"] += 1
            if change.outcome != "ok":
                self.faults[f"member-{change.kind}-failed"] += 1
            self.say(f"{self._t()} membership: {change.kind}: {change.outcome}")
        seen = leader_members(list(self.statuses.values()))
        if seen is None or not seen[1]:
            return  # no leader, or a change still under way: wait for it to settle
        if change is None and seen[0] == set(self.ids):
            return
        if not seen[0] <= set(self.peers):
            return  # a member we do not run: a status from before this run knew it
        if seen[0] != set(self.ids):
            self.say(f"{self._t()} membership: the leader reports {sorted(seen[0])}")
        self._take_members(seen[0], now)
        if change is not None:
            self.change = None
            self._next_fault = now + self.rng.uniform(*self.config.fault_gap)

    def _take_members(self, members: set[str], now: float) -> None:
        self.ids = [p for p in self.peers if p in members]
        for peer_id in [p for p in self.peers if p not in members]:
            self._retire(peer_id, now)
        for peer_id, due in list(self.down.items()):
            if due == float("inf") and peer_id in members:
                self.down[peer_id] = now  # a replaced victim still counted: bring it back

    def _retire(self, peer_id: str, now: float) -> None:
        """Out of the configuration: stop it for good (its data stays on disk)."""
        peer = self.peers.pop(peer_id)
        self.slots.pop(peer_id, None)
        self.down.pop(peer_id, None)
        self.restarting.pop(peer_id, None)
        window = self._open.pop(peer_id, None)
        if window is not None:
            window.end = now
        peer.stop()
        self.retired.append(peer_id)
        self.say(f"{self._t()} membership: {peer_id} is out; stopped")

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
        """Let a membership change under way end, heal the network, resume every paused peer
        and restart every dead one; wait until all serve, and take the membership the leader
        then reports. (A wipe in progress simply ends: the peer catches up during
        convergence.)"""
        if self.change is not None:
            self.change.join()  # each of its steps is bounded (STEP_TIMEOUT)
        now = time.monotonic()
        if self.network is not None:
            self.network.heal()
        if self.partition is not None:
            self.partition.window.end = now
            self.partition = None
        back = [p for p, due in self.down.items() if due != float("inf")]
        self._bring_back(back)
        if self.spawn is not None:
            self._settle_membership()
        self._bring_back([p for p in self.down if p in self.peers and p not in back])
        for window in self._open.values():
            window.end = time.monotonic()
        self._open.clear()
        self.down.clear()
        self.restarting.clear()
        self.wipe = None

    def _bring_back(self, peer_ids: list[str]) -> None:
        for peer_id in peer_ids:
            peer = self.peers[peer_id]
            if peer.paused:
                peer.resume()
            elif not peer.running:
                peer.start()
        for peer_id in peer_ids:
            try:
                self.peers[peer_id].wait_ready()
            except (PeerExitedError, TimeoutError) as error:
                self._failure(f"{peer_id} did not come back at the end: {error}")

    def _settle_membership(self) -> None:
        """At the end: wait for the leader to report a settled configuration and take it
        (retiring the peers it dropped); a failure if it never does."""
        with KVClient(list(self.peers), timeout=1.0, attempt_timeout=0.25) as monitor:

            def settled() -> bool:
                # The peers are other processes: polled, every TICK.
                self.statuses = {s["id"]: s for s in monitor.status()}
                self._tend_membership()
                seen = leader_members(list(self.statuses.values()))
                agreed = seen is not None and seen[1] and seen[0] == set(self.ids)
                return self.change is None and agreed

            try:
                wait_until(
                    settled, "a settled membership", self.config.converge_timeout, interval=TICK
                )
            except TimeoutError:
                self._failure(
                    f"the membership never settled (change {self.change!r}, ids {self.ids})"
                )
