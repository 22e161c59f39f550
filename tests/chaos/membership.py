"""The membership nemesis: the cluster's members change while the other faults go on.

A change is one of
- `add-peer`: a brand-new peer (`--join`, a new port) is added as a voter;
- `add-learner`: a brand-new peer is added as a learner, then promoted;
- `replace`: a follower is killed for good and a brand-new peer replaces it (added first,
  then the dead one removed: the README's recipe);
- `remove-follower`, `remove-leader`: a voter is removed (then stopped for good).

The run keeps between N and N + 1 voters (N: the peers it started with): an add or a replace
only from N, a removal only from N + 1, so the other faults' bound (a minority down) holds in
every configuration. The admin calls block for seconds (catch-up, joint consensus), so they run
on a thread of their own (`Change`), one change at a time, while the fault thread goes on
killing, pausing and partitioning. A step that fails (CatchUpError, a timeout: the leader was
killed meanwhile) ends the change there; what the cluster then is, is read from the leader's
status, not assumed: `FaultInjector._tend_membership` takes the members the leader reports
once no change runs, retires the peers it no longer lists (stopped for good, their data kept
for the audit's eyes only) and brings back a replaced victim the cluster still counts.

With partitions, each peer lives in a network slot (a namespace, tests/chaos/network.py); the
run has one slot more than it starts peers, for the N + 1st. A new peer takes a free slot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transport.client import AdminClient, ClientTimeout, CommandError

GROW = ("add-peer", "add-learner", "replace")  # from N voters
SHRINK = ("remove-follower", "remove-leader")  # from N + 1

# How long one admin step may take: a new peer's catch-up can need a snapshot install while
# other faults slow the cluster down.
STEP_TIMEOUT = 20.0


@dataclass(frozen=True)
class Step:
    op: str  # an AdminClient method: add_peer, add_learner, promote, remove_peer
    peer: str


class Change(threading.Thread):
    """The admin steps of one change, in order, off the fault thread; the first that fails ends
    it. `outcome` says how it went, and `ended` when, once the thread has ended."""

    def __init__(
        self,
        kind: str,
        steps: Sequence[Step],
        contacts: Sequence[str],
        new_peer: str | None = None,
        victim: str | None = None,
    ) -> None:
        super().__init__(name=f"chaos-membership-{kind}", daemon=True)
        self.kind = kind
        self.steps = list(steps)
        self.contacts = list(contacts)
        self.new_peer = new_peer  # the peer this change started, if any
        self.victim = victim  # the peer this change killed or removes, if any
        self.done: list[Step] = []
        self.outcome = "running"
        self.ended: float | None = None

    def run(self) -> None:
        try:
            with AdminClient(self.contacts, timeout=STEP_TIMEOUT, attempt_timeout=0.25) as admin:
                for step in self.steps:
                    getattr(admin, step.op)(step.peer)
                    self.done.append(step)
            self.outcome = "ok"
        except CommandError as error:
            self.outcome = f"refused: {error}"
        except ClientTimeout as error:
            self.outcome = f"unknown: {error}"
        except Exception as error:  # reported in the run's output; the audit decides
            self.outcome = f"error: {error!r}"
        finally:
            self.ended = time.monotonic()

    def describe(self) -> str:
        return ", ".join(f"{s.op.replace('_', '-')} {s.peer}" for s in self.steps)


def plan(kind: str, peer_in: str | None, peer_out: str | None) -> list[Step]:
    """The admin steps of a change of `kind` (see the module docstring; `promote-learner`
    promotes a learner an earlier change left): `peer_in` joins, `peer_out` leaves."""
    steps = {
        "add-peer": [Step("add_peer", peer_in or "")],
        "add-learner": [Step("add_learner", peer_in or ""), Step("promote", peer_in or "")],
        "promote-learner": [Step("promote", peer_in or "")],
        "replace": [Step("add_peer", peer_in or ""), Step("remove_peer", peer_out or "")],
    }.get(kind, [Step("remove_peer", peer_out or "")])
    assert all(step.peer for step in steps), (kind, peer_in, peer_out)
    return steps


def leader_members(statuses: Sequence[dict[str, Any]]) -> tuple[set[str], bool] | None:
    """(every member: voters and learners, whether that is settled: no change under way, not
    joint) as the leader reports it; None when no leader answered, or when the leader that
    did is of a term below one another peer is in (a deposed leader that has not heard yet:
    its configuration may lack a peer added since)."""
    leaders = [s for s in statuses if s.get("role") == "leader"]
    if not leaders:
        return None
    leader = max(leaders, key=lambda s: int(s.get("term", 0)))
    if any(int(s.get("term", 0)) > int(leader.get("term", 0)) for s in statuses):
        return None
    members: set[str] = set()
    for key in ("conf", "old_conf", "learners"):
        listed = leader.get(key)
        if isinstance(listed, list):
            members.update(p for p in listed if isinstance(p, str))
    settled = not leader.get("old_conf") and not leader.get("membership_change")
    return members, settled
