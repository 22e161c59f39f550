"""A seeded fault scenario: clients keep proposing while faults come and go; then the faults
stop and the cluster must elect a leader and commit a write within a bounded virtual time.

Every choice (which fault, when, whom, how long) comes from the seed, so a failing seed replays
exactly: `python -m tests.sim replay --seed N`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pykka

from actors.errors import CommandTooLargeError, RaftError
from actors.membership import ChangeRequest, Op
from actors.node import Role
from storage.entry import EntryType, LogEntry
from transport.rpc import MAX_TERM, AppendEntriesRequest, RequestVoteRequest, RequestVoteResponse

from .simulator import MAX_COMMAND_BYTES, Simulation

FAULTS = (
    "crash",
    "restart",
    "partition",
    "one_way",
    "bridge",
    "heal",
    "drops",
    "duplicates",
    "reorder",
    "slow_disk",
    "hostile",
    "oversized",
    "actor_crash",
    "snapshot",
    "wipe",
    "crash_mid_snapshot",
    "transfer",
    "add_peer",
    "remove_peer",
    "replace_peer",
    "learner",
    "calm",
)
STRANGER = "10.0.0.66:7000"  # not a member: every message of it must be refused
EVIL = b"evil:"  # the payload prefix of every entry the stranger tries to inject
LIVENESS_DEADLINE = 30.0  # virtual seconds after the faults stop


class LivenessError(AssertionError):
    pass


@dataclass
class Outcome:
    seed: int
    trace_hash: str
    steps: int
    virtual_seconds: float
    faults: dict[str, int] = field(default_factory=dict)
    proposed: int = 0
    acknowledged: int = 0
    leaders: int = 0
    snapshots_saved: int = 0
    snapshots_installed: int = 0
    reads: int = 0  # reads answered, each checked against the linearizable order
    changes: int = 0  # membership changes committed
    trace: list[str] | None = None


def run_scenario(
    seed: int,
    size: int = 3,
    fault_seconds: float = 6.0,
    record_trace: bool = False,
    faults: tuple[str, ...] = FAULTS,
) -> Outcome:
    """`faults`: the kinds to choose from (a subset of FAULTS, repeats weigh more)."""
    sim = Simulation(seed, size=size, record_trace=record_trace)
    changes: list[pykka.Future[Any]] = []
    rng = sim.rng
    outcome = Outcome(seed, "", 0, 0.0, dict.fromkeys(FAULTS, 0))
    kinds = faults
    acked: list[tuple[int, bytes]] = []
    pending: list[tuple[pykka.Future[Any], bytes]] = []
    oversized: list[pykka.Future[Any]] = []
    counter = 0
    stranger = sim.network.endpoint(STRANGER)
    stranger.start(lambda message: None)  # it hears the refusals it gets, if any

    def propose() -> None:
        nonlocal counter
        alive = sim.alive()
        if not alive:
            return
        leaders = [p for p in alive if sim.peers[p].node.role is Role.LEADER]
        target = rng.choice(leaders or alive)
        command = f"s{seed}-c{counter}".encode()
        counter += 1
        pending.append((sim.propose(target, command), command))

    def collect() -> None:
        still = []
        for future, command in pending:
            try:
                index = future.get(timeout=0)
            except pykka.Timeout:
                still.append((future, command))
                continue
            except RaftError:
                continue  # refused, or outcome unknown: nothing to hold the cluster to
            acked.append((index, command))
            complete_at.append((sim.steps, index))
        pending[:] = still
        check_reads()

    # Reads (actors/read_only.py): the state is the applied log prefix, so a read answering
    # "applied through j" is linearizable iff j is at least every index known complete when it
    # was invoked: every acknowledged write's, and what every read answered before then.
    # Steps order events: completed at a step before another was invoked = happened before.
    reads: list[tuple[pykka.Future[Any], int, str, bool]] = []  # (future, step, peer, lease)
    complete_at: list[tuple[int, int]] = []  # (step completed, index) of writes and reads
    read_rng = random.Random(seed ^ 0x5EAD)  # reads do not shift the faults' random choices
    answered = 0

    def read() -> None:
        alive = sim.alive()
        if sim.time < fault_seconds and alive:
            # Mostly a peer that believes it leads, deposed or not; sometimes any peer.
            leaders = [p for p in alive if sim.peers[p].node.role is Role.LEADER]
            target = read_rng.choice(leaders if leaders and read_rng.random() < 0.8 else alive)
            lease = read_rng.random() < 0.5
            reads.append((sim.read(target, b"r", lease), sim.steps, target, lease))
            sim.schedule(read_rng.uniform(0.005, 0.05), read, "read")

    def check_reads() -> None:
        nonlocal answered
        still = []
        for future, invoked, peer, lease in reads:
            try:
                _, index = future.get(timeout=0)
            except pykka.Timeout:
                still.append((future, invoked, peer, lease))
                continue
            except RaftError:
                continue  # refused: a read changes nothing
            floor = max((i for step, i in complete_at if step < invoked), default=0)
            if index < floor:
                kind = "lease" if lease else "read-index"
                raise AssertionError(
                    f"seed {seed}: stale {kind} read on {peer} (invoked at step {invoked}): "
                    f"applied through {index}, but {floor} had completed before"
                )
            complete_at.append((sim.steps, index))
            answered += 1
        reads[:] = still

    def proposals() -> None:
        if sim.time < fault_seconds:
            propose()
            sim.schedule(rng.uniform(0.002, 0.03), proposals, "client")

    def faults() -> None:
        if sim.time < fault_seconds:
            restart_failed(sim)  # the supervisor: a peer in ERROR restarts (crash-only)
            kind = rng.choice(kinds)
            outcome.faults[kind] += 1
            if kind == "oversized":
                alive = sim.alive()
                if alive:
                    big = b"x" * (MAX_COMMAND_BYTES + 1)
                    oversized.append(sim.propose(rng.choice(alive), big))
            elif kind in MEMBERSHIP_FAULTS:
                future = change_membership(sim, kind)
                if future is not None:
                    changes.append(future)
            else:
                inject(sim, kind)
            sim.schedule(rng.uniform(0.2, 1.2), faults, f"fault {kind}")

    sim.schedule(0.0, proposals, "client")
    sim.schedule(0.0, read, "read")
    sim.schedule(rng.uniform(0.5, 1.5), faults, "fault")
    while sim.time < fault_seconds:
        sim.step()
        collect()

    heal_all(sim)
    probe = f"s{seed}-final".encode()
    final: list[pykka.Future[Any]] = []

    def final_write_committed() -> bool:
        collect()
        if final and _succeeded(final[-1]):
            return True
        leaders = [p for p in sim.alive() if sim.peers[p].node.role is Role.LEADER]
        if leaders and (not final or _failed(final[-1])):
            final.append(sim.propose(leaders[0], probe))  # retried only after a definite no
        return False

    if not sim.run_until(final_write_committed, LIVENESS_DEADLINE):
        raise LivenessError(
            f"seed {seed}: no write committed within {LIVENESS_DEADLINE}s after the faults "
            f"stopped (roles: {_roles(sim)})"
        )
    # An oversized command is refused at once and definitely, wherever it was proposed.
    for future in oversized:
        try:
            future.get(timeout=0)
            raise AssertionError(f"seed {seed}: an oversized command was accepted")
        except CommandTooLargeError:
            pass
    # Nothing the stranger sent was ever appended anywhere.
    for index, (_, data) in sim.checker.committed.items():
        if data.startswith(EVIL):
            raise AssertionError(f"seed {seed}: the stranger's entry committed at {index}")
    # Every acknowledged command is committed where it was acknowledged (no acked write lost).
    for index, command in acked:
        committed = sim.checker.committed.get(index)
        if committed is None or committed[1] != command:
            raise AssertionError(f"seed {seed}: acknowledged {command!r}@{index} lost: {committed}")
    outcome.trace_hash = sim.trace_hash
    outcome.steps = sim.steps
    outcome.virtual_seconds = sim.time
    outcome.proposed = counter
    outcome.reads = answered
    outcome.acknowledged = len(acked)
    outcome.leaders = len(sim.checker.leader_of_term)
    outcome.snapshots_saved = sim.delivered["SnapshotSaved"]
    outcome.snapshots_installed = sim.delivered["InstallLog"]
    outcome.trace = sim.trace
    outcome.changes = sum(_succeeded(f) for f in changes)
    check_membership_agreed(sim, seed)
    return outcome


def _roles(sim: Simulation) -> list[tuple[str, str, int]]:
    return [(p, sim.peers[p].node.role.value, sim.peers[p].node.term) for p in sim.alive()]


def _succeeded(future: pykka.Future[Any]) -> bool:
    try:
        future.get(timeout=0)
        return True
    except (pykka.Timeout, RaftError):
        return False


def _failed(future: pykka.Future[Any]) -> bool:
    try:
        future.get(timeout=0)
        return False
    except pykka.Timeout:
        return False
    except RaftError:
        return True


def inject(sim: Simulation, kind: str) -> None:
    rng = sim.rng
    ids = sim.ids
    network = sim.network
    if kind == "crash":
        alive = sim.alive()
        if alive:
            sim.crash(rng.choice(alive))
    elif kind == "restart":
        down = [p for p in sim.ever_started() if not sim.peers[p].alive]
        if down:
            sim.start(rng.choice(down))
    elif kind == "partition":
        shuffled = rng.sample(ids, len(ids))
        cut = rng.randrange(1, len(ids))
        network.partition(shuffled[:cut], shuffled[cut:])
    elif kind == "one_way":
        src, dst = rng.sample(ids, 2)
        network.cut(src, dst)
    elif kind == "bridge":
        # Two halves that reach each other only through one peer.
        bridge, *rest = rng.sample(ids, len(ids))
        half = len(rest) // 2
        for a in rest[:half]:
            for b in rest[half:]:
                network.cut(a, b)
                network.cut(b, a)
        del bridge
    elif kind == "heal":
        network.heal()
    elif kind == "drops":
        network.drop_probability = rng.choice((0.0, 0.05, 0.2, 0.5))
    elif kind == "duplicates":
        network.duplicate_probability = rng.choice((0.0, 0.05, 0.2))
    elif kind == "reorder":
        network.set_delay(0.0005, rng.choice((0.001, 0.01, 0.05)))
    elif kind == "slow_disk":
        sim.peers[rng.choice(ids)].disk_latency = rng.choice((0.0, 0.005, 0.05, 0.3))
    elif kind == "hostile":
        send_hostile(sim, rng.choice(ids))
    elif kind == "actor_crash":
        alive = sim.alive()
        if alive:
            sim.crash_actor(rng.choice(alive), rng)
    elif kind == "snapshot":
        alive = sim.alive()
        if alive:
            sim.snapshot(rng.choice(alive))
    elif kind == "wipe":
        wipe_one(sim)
    elif kind == "crash_mid_snapshot":
        # A peer in the middle of receiving (or installing) a snapshot, or of saving one.
        busy = [p for p in sim.alive() if sim.snapshot_busy(p)]
        if busy:
            sim.crash(rng.choice(busy))
    elif kind == "transfer":
        leaders = [p for p in sim.alive() if sim.peers[p].node.role is Role.LEADER]
        if leaders:
            leader = rng.choice(leaders)
            sim.transfer(leader, rng.choice([None, *(p for p in ids if p != leader)]))
    # "calm": nothing this time


MEMBERSHIP_FAULTS = ("add_peer", "remove_peer", "replace_peer", "learner")
MAX_VOTERS = 5
MIN_VOTERS = 3  # below it a crash or two would make the final liveness check moot


def change_membership(sim: Simulation, kind: str) -> pykka.Future[Any] | None:
    """Ask a leader for a membership change: add a voter (a spare, a learner or a peer
    removed before; started if it is down), remove one (the leader itself, sometimes) or a
    learner, add a learner or promote one. Whatever comes of it (done, busy, catch-up failed,
    leadership lost), the invariants must hold."""
    rng = sim.rng
    leaders = [p for p in sim.alive() if sim.peers[p].node.role is Role.LEADER]
    if not leaders:
        return None
    leader = rng.choice(leaders)
    conf = sim.peers[leader].node.conf
    outside = [p for p in sim.ids if p not in conf.members()]
    request = None
    if kind == "add_peer" and len(conf.peers) < MAX_VOTERS:
        choices = sorted(conf.learners) + outside
        if choices:
            request = ChangeRequest.of(Op.ADD_PEER, [rng.choice(choices)])
    elif kind == "remove_peer":
        choices = sorted(conf.learners) + (
            sorted(conf.peers) if len(conf.peers) > MIN_VOTERS else []
        )
        if choices:
            request = ChangeRequest.of(Op.REMOVE_PEER, [rng.choice(choices)])
    elif kind == "replace_peer" and outside:
        # One voter out, another in, at once: C_old and C_new majorities differ.
        voters = sorted(conf.peers)
        voters[rng.randrange(len(voters))] = rng.choice(outside)
        request = ChangeRequest.of(Op.CHANGE_PEERS, voters)
    elif kind == "learner":
        if conf.learners and (not outside or rng.random() < 0.5):
            if len(conf.peers) < MAX_VOTERS:
                request = ChangeRequest.of(Op.PROMOTE_LEARNER, [rng.choice(sorted(conf.learners))])
        elif outside:
            request = ChangeRequest.of(Op.ADD_LEARNERS, [rng.choice(outside)])
    if request is None:
        return None
    for peer in request.peers:
        if not sim.peers[peer].alive:
            sim.start(peer)
    return sim.change(leader, request)


def check_membership_agreed(sim: Simulation, seed: int) -> None:
    """Once healed and writing again, every voter of the leader's configuration that is up
    and has caught up with the cluster's commit index is on the leader's configuration."""
    leaders = [p for p in sim.alive() if sim.peers[p].node.role is Role.LEADER]
    if not leaders:
        return
    conf = sim.peers[leaders[0]].node.conf
    if conf.is_joint:
        return  # a roll-forward still under way: nothing settled to compare
    # The highest commit index any peer knows: a leader just elected may know less than its
    # followers (its own commit index is the one it had as a follower), and a peer behind
    # it that happens to be at that stale index has not seen the configurations after it.
    commit = max(sim.peers[p].node.log_view.committed_index for p in sim.alive())
    for peer in sorted(conf.all_peers()):
        if peer not in sim.peers:
            continue  # the hostile-fault mutation test makes the stranger a member
        node = sim.peers[peer].node if sim.peers[peer].alive else None
        if node is None or node.log_view.committed_index < commit:
            continue  # not caught up yet; only settled peers are compared
        if node.conf.all_peers() != conf.all_peers():
            raise AssertionError(
                f"seed {seed}: {peer} is on configuration {node.conf}, the leader on {conf}"
            )


def send_hostile(sim: Simulation, target: str) -> None:
    """A stranger claims leadership in a high term with an entry of its own, asks for votes
    and grants one, each in a term the members must neither adopt nor answer."""
    stranger = sim.network._endpoints[STRANGER]
    terms = [p.node.term for p in sim.peers.values() if p.alive]
    for high in (min(max(terms, default=0) + 1, MAX_TERM), MAX_TERM):
        entry = LogEntry(1, high, EntryType.DATA, EVIL + str(high).encode())
        stranger.send(target, AppendEntriesRequest(high, STRANGER, 0, 0, (entry,), 1, 1))
        stranger.send(target, RequestVoteRequest(high, STRANGER, 10**9, high, False))
        stranger.send(target, RequestVoteResponse(high, True, False, STRANGER, high))


def wipe_one(sim: Simulation) -> None:
    """A peer loses its disk and comes back empty. Raft cannot make that safe in general (a
    peer that forgot its vote may vote twice in one term), so, as operators are told, only a
    peer that cannot do so: one that never voted in the current leader's term or later."""
    leaders = [p for p in sim.alive() if sim.peers[p].node.role is Role.LEADER]
    if not leaders:
        return
    term = max(sim.peers[p].node.term for p in leaders)
    candidates = [p for p in sim.ids if p not in leaders and sim.peers[p].meta.term < term]
    # Nor one whose loss leaves a quorum that lacks a committed entry: that quorum (the empty
    # peer among them) could elect a leader without it (seed 38 of the reads change did).
    conf = sim.peers[leaders[0]].node.conf
    voter_sets = [conf.peers, conf.old_peers] if conf.is_joint else [conf.peers]
    lacking = {p for p in conf.all_peers() if p not in sim.peers or not _holds_committed(sim, p)}
    candidates = [
        p
        for p in candidates
        if all(len((lacking | {p}) & voters) <= len(voters) // 2 for voters in voter_sets)
    ]
    if not candidates:
        return
    victim = sim.rng.choice(candidates)
    sim.crash(victim)
    sim.wipe(victim)
    sim.start(victim)


def _holds_committed(sim: Simulation, peer_id: str) -> bool:
    """Whether `peer_id` is up and holds the last committed entry (so, by Log Matching, every
    committed entry before it too)."""
    committed = sim.checker.committed
    actors = sim.peers[peer_id].actors
    if not committed:
        return True
    if actors is None:
        return False
    index = max(committed)
    view = actors.log_view
    return view.snapshot_index >= index or view.known_term(index) == committed[index][0]


def restart_failed(sim: Simulation) -> None:
    """What the service's supervisor does: a peer in ERROR is restarted from its durable state."""
    for peer in sim.peers.values():
        if peer.alive and peer.node.role is Role.ERROR:
            sim.crash(peer.id)
            sim.start(peer.id)


def heal_all(sim: Simulation) -> None:
    sim.network.heal()
    sim.network.drop_probability = 0.0
    sim.network.duplicate_probability = 0.0
    sim.network.set_delay(0.001)
    restart_failed(sim)
    for peer in sim.peers.values():
        peer.disk_latency = 0.0
        if not peer.alive and peer.incarnation:  # a spare never added stays down
            sim.start(peer.id)
