"""A linearizability checker for histories of the replicated KV service.

A *history* is what concurrent clients observed: for every operation, when it was invoked, when
its answer arrived (if it did) and what the answer was. The history is *linearizable* if every
operation can be given a single instant (its linearization point) inside its interval such that
running the operations one at a time, in the order of those instants, against a plain dict gives
exactly the answers the clients saw. That is the contract `KVClient` promises (README,
"Running it").

    from tests.chaos.linearizability import Operation, check
    result = check(history, timeout=60.0)
    result.verdict          # Verdict.OK, Verdict.VIOLATION, or Verdict.UNKNOWN (budget spent)
    print(result.description)   # for a violation: the key and the operations that explain it

Outcomes. An operation with `Outcome.OK` has a known answer and a completion time. One with
`Outcome.UNKNOWN` ended in `ClientTimeout`: it may have taken effect at any instant after its
invocation, or never, and its answer is unconstrained. `complete=None` means "no bound"; a finite
`complete` on an UNKNOWN operation means "if it took effect, it did so by then" (see
`fence_by_session`). An UNKNOWN get constrains nothing and is dropped. Definite failures
(`CommandError`) had no effect and do not belong in a history.

Algorithm: Wing & Gong's search with Lowe's memoisation, the design Porcupine uses
(https://github.com/anishathalye/porcupine). Calls and returns are put in one time-ordered
doubly linked list. The search walks it from the front: at a call it tries to linearize that
operation now (the model accepts its answer in the current state); success *lifts* the call and
its return out of the list and restarts from the front. Reaching a return means that operation
had to be linearized already, so the search backtracks (re-inserts the last lifted operation and
tries the next call after it). A configuration is (set of linearized operations, model state);
one that failed once fails again, so every configuration is explored at most once (the cache).
UNKNOWN operations with a finite bound may also be *dropped* (decided "never happened") when the
search reaches their return; without a bound they never block, so the search succeeds as soon as
every OK operation is linearized.

Partitioning: a KV history is linearizable iff each key's sub-history is (keys are independent
registers), so each key is searched on its own. The search is exponential only in how many
operations on one key are concurrent, pending UNKNOWN writes included: the number of clients
bounds that once `fence_by_session` has bounded the UNKNOWN writes.

Cost, measured on this project's chaos histories (2-core machine): a linearizable history is
checked at roughly 150k-450k operations/s (the search is nearly greedy); a violation in a
100k-operation history is found and narrowed down to its culprit in about a second (proving
one means exhausting the key's configurations, so it costs more than passing).
"""

from __future__ import annotations

import enum
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

PUT, GET, DELETE, CAS = "put", "get", "delete", "cas"
_ARITY = {PUT: 1, GET: 0, DELETE: 0, CAS: 2}
_KIND = {PUT: 0, GET: 1, DELETE: 2, CAS: 3}  # small ints for the search's inner loop
_DEADLINE_EVERY = 1024  # search steps between two looks at the clock (a step is ~1 µs)
_EXCERPT = 24  # operations shown before the culprit in a violation's description

Value = str | None


class Outcome(enum.Enum):
    """What the client learnt about an operation."""

    OK = "ok"  # an answer arrived: the result is known
    UNKNOWN = "unknown"  # ClientTimeout: it may or may not have taken effect


class Verdict(enum.Enum):
    OK = "ok"  # linearizable
    VIOLATION = "violation"  # provably not linearizable
    UNKNOWN = "unknown"  # the time budget ran out first: NOT a verdict


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of a history.

    args: put (value,); get and delete (); cas (expected, new) with expected None meaning
        "only if absent".
    invoke / complete: client-side times from one monotonic clock. complete is required for an
        OK operation; for an UNKNOWN one it bounds when it could have taken effect, None for
        no bound.
    result: put None; get the value or None; delete whether the key existed; cas whether it
        swapped. Ignored for an UNKNOWN operation.
    """

    client: str | int
    op: str
    key: str
    args: tuple[Value, ...]
    invoke: float
    complete: float | None
    result: Any = None
    outcome: Outcome = Outcome.OK

    def __post_init__(self) -> None:
        if self.op not in _ARITY:
            raise ValueError(f"unknown operation {self.op!r}")
        if len(self.args) != _ARITY[self.op]:
            raise ValueError(f"{self.op} takes {_ARITY[self.op]} argument(s), got {self.args!r}")
        if self.op in (PUT, CAS) and self.args[-1] is None:
            raise ValueError(f"{self.op} needs a value to write")
        if self.complete is None:
            if self.outcome is Outcome.OK:
                raise ValueError("an OK operation needs a completion time")
        elif self.complete < self.invoke:
            raise ValueError(f"completes ({self.complete}) before it is invoked ({self.invoke})")
        if self.outcome is Outcome.OK:
            expected: dict[str, type | tuple[type, ...]] = {
                PUT: type(None),
                GET: (str, type(None)),
                DELETE: bool,
                CAS: bool,
            }
            if not isinstance(self.result, expected[self.op]):
                raise ValueError(f"{self.op} cannot return {self.result!r}")

    def describe(self, origin: float = 0.0) -> str:
        """One line for humans, times relative to `origin`."""
        args = ", ".join(repr(a) for a in (self.key, *self.args))
        answer = "?? (unknown outcome)" if self.outcome is Outcome.UNKNOWN else repr(self.result)
        end = "inf" if self.complete is None else f"{self.complete - origin:.4f}"
        return (
            f"[{self.invoke - origin:.4f} .. {end}] client {self.client}: "
            f"{self.op}({args}) -> {answer}"
        )


@dataclass(frozen=True)
class CheckResult:
    """The checker's answer.

    For a VIOLATION, `key` names a key whose sub-history is not linearizable and `culprit` the
    operation whose answer first cannot be explained: the shortest non-linearizable prefix of
    that key's history ends with its completion (None if the budget did not allow finding it).
    `ops` are the key's operations invoked by then (all of them without a culprit), and
    `description` renders the tail of those for a human. For UNKNOWN, `key` is the
    key the budget ran out on.
    """

    verdict: Verdict
    elapsed: float
    operations: int  # operations searched (UNKNOWN gets are not)
    keys: int
    key: str | None = None
    culprit: Operation | None = None
    ops: tuple[Operation, ...] = ()
    description: str = ""
    search_steps: int = 0
    violating_keys: tuple[str, ...] = field(default=())


class _OutOfTime(Exception):
    pass


def check(
    history: Iterable[Operation],
    timeout: float | None = None,
    *,
    explain: bool = True,
    explain_timeout: float = 30.0,
) -> CheckResult:
    """Is `history` linearizable with respect to a map of independent registers?

    timeout: seconds for the whole check (None: no limit); when it runs out the verdict is
        UNKNOWN. explain: on a violation, search (within `explain_timeout` more seconds) for the
        shortest failing prefix of the key's history to name the culprit operation.
    """
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    by_key: dict[str, list[Operation]] = defaultdict(list)
    for operation in history:
        if operation.op == GET and operation.outcome is Outcome.UNKNOWN:
            continue  # a read with no answer constrains nothing
        by_key[operation.key].append(operation)
    total = sum(len(ops) for ops in by_key.values())
    steps = 0
    violating: list[str] = []
    frontiers: dict[str, float] = {}  # per violating key: see _Search.frontier
    timed_out: str | None = None
    # Smallest keys first: a cheap violation is found before an expensive key eats the budget.
    for key in sorted(by_key, key=lambda k: len(by_key[k])):
        search = _Search(by_key[key])
        try:
            linearizable = search.run(deadline)
        except _OutOfTime:
            timed_out = timed_out or key
            linearizable = True
        steps += search.steps
        if not linearizable:
            violating.append(key)
            frontiers[key] = search.frontier
    elapsed = time.monotonic() - started
    if violating:
        key = violating[0]
        culprit, prefix = (None, tuple(by_key[key]))
        if explain:
            culprit, prefix = _shortest_failing_prefix(by_key[key], frontiers[key], explain_timeout)
        return CheckResult(
            Verdict.VIOLATION,
            elapsed,
            total,
            len(by_key),
            key=key,
            culprit=culprit,
            ops=prefix,
            description=_describe_violation(key, culprit, prefix, by_key[key]),
            search_steps=steps,
            violating_keys=tuple(violating),
        )
    if timed_out is not None:
        return CheckResult(
            Verdict.UNKNOWN,
            elapsed,
            total,
            len(by_key),
            key=timed_out,
            description=f"time budget of {timeout}s exhausted (on key {timed_out!r})",
            search_steps=steps,
        )
    return CheckResult(Verdict.OK, elapsed, total, len(by_key), search_steps=steps)


def fence_by_session(history: Iterable[Operation]) -> list[Operation]:
    """Bound each UNKNOWN write by its client's next OK write (of any key).

    Valid for this service's exactly-once sessions (actors/kv_store.py): a client has one request
    in flight, numbers its writes, and the state machine refuses (never applies) a write whose
    sequence number is below the last one applied for that client. So once the client's next
    write W' has been applied, an earlier write W can no longer take effect: if W ever did, it
    did before W' was applied, hence before W' completed. Reads carry no sequence number and
    fence nothing. `client` must identify one session (one KVClient); operations of a client
    must not overlap. The result is a new history; the input is not modified.

    Without this, every timed-out write stays pending until the end of the history, so it is
    concurrent with everything after it; proving a violation then means trying every subset of
    those writes at every point: exponential in their number.
    """
    operations = list(history)
    by_client: dict[str | int, list[int]] = defaultdict(list)
    for index, operation in enumerate(operations):
        by_client[operation.client].append(index)
    for indexes in by_client.values():
        indexes.sort(key=lambda i: operations[i].invoke)
        fence: float | None = None  # completion of the next OK write, scanning backwards
        for index in reversed(indexes):
            operation = operations[index]
            if operation.op == GET:
                continue
            if operation.outcome is Outcome.OK:
                fence = operation.complete
            elif fence is not None and (operation.complete is None or fence < operation.complete):
                operations[index] = replace(operation, complete=max(fence, operation.invoke))
    return operations


def describe_ops(ops: Sequence[Operation], origin: float | None = None) -> str:
    """The operations one per line, ordered by invocation, times relative to `origin` (default:
    the first invocation)."""
    ordered = sorted(ops, key=lambda o: o.invoke)
    if origin is None:
        origin = ordered[0].invoke if ordered else 0.0
    return "\n".join(o.describe(origin) for o in ordered)


# -- the search -----------------------------------------------------------------------------


class _Search:
    """WGL search over one key's operations (see the module docstring).

    Representation, for speed in the inner loop: operation i has list node 2*i (its call) and
    2*i+1 (its return, absent for an UNKNOWN operation without a bound); `_next` / `_prev` are
    the links of a doubly linked list with sentinels HEAD = 2*m and TAIL = 2*m+1, so lifting and
    re-inserting are O(1) ("dancing links"). Invariant: lifts and re-inserts happen in stack
    order, which is what makes re-insertion restore the list exactly.
    """

    def __init__(self, operations: Sequence[Operation]) -> None:
        # Numbered in invocation order, so the decided set is mostly a prefix (see `run`).
        self.ops = sorted(
            (o for o in operations if not (o.op == GET and o.outcome is Outcome.UNKNOWN)),
            key=lambda o: o.invoke,
        )
        self.steps = 0
        # After a failed run: the latest completion at which the search was ever blocked. Every
        # prefix of the history cut before it is linearizable (see _shortest_failing_prefix).
        self.frontier = float("-inf")
        m = len(self.ops)
        self.kind = [_KIND[o.op] for o in self.ops]
        self.arg1: list[Value] = [o.args[0] if o.args else None for o in self.ops]
        self.arg2: list[Value] = [o.args[1] if len(o.args) > 1 else None for o in self.ops]
        self.result = [o.result for o in self.ops]
        self.definite = [o.outcome is Outcome.OK for o in self.ops]
        self.has_return = [o.complete is not None for o in self.ops]
        # Calls before returns at equal times: touching intervals count as concurrent, the
        # lenient reading (the checker must never report a violation that is not one).
        events: list[tuple[float, int, int]] = []
        for i, o in enumerate(self.ops):
            events.append((o.invoke, 0, 2 * i))
            if o.complete is not None:
                events.append((o.complete, 1, 2 * i + 1))
        events.sort()
        self.head, self.tail = 2 * m, 2 * m + 1
        self._next = [0] * (2 * m + 2)
        self._prev = [0] * (2 * m + 2)
        previous = self.head
        for _, _, node in events:
            self._next[previous] = node
            self._prev[node] = previous
            previous = node
        self._next[previous] = self.tail
        self._prev[self.tail] = previous

    def _lift(self, i: int) -> None:
        nxt, prv = self._next, self._prev
        for node in (2 * i, 2 * i + 1) if self.has_return[i] else (2 * i,):
            nxt[prv[node]] = nxt[node]
            prv[nxt[node]] = prv[node]

    def _unlift(self, i: int) -> None:
        nxt, prv = self._next, self._prev
        for node in (2 * i + 1, 2 * i) if self.has_return[i] else (2 * i,):
            nxt[prv[node]] = node
            prv[nxt[node]] = node

    def run(self, deadline: float | None) -> bool:
        """True if linearizable, False if not; raises _OutOfTime past `deadline`."""
        kind, arg1, arg2, result, definite = (
            self.kind,
            self.arg1,
            self.arg2,
            self.result,
            self.definite,
        )
        nxt = self._next
        head = self.head
        limit = math.inf if deadline is None else deadline
        # Invariant: OK operations not yet linearized; their returns are all still listed.
        remaining = sum(definite)
        state: Value = None  # every key starts absent
        linearized = 0  # bitset of operations decided (linearized, or dropped if UNKNOWN)
        # Configurations entered (each one failed, or is on the current path). Stored as
        # (n, decided >> n, state) with n the number of trailing ones: operations are numbered
        # by invocation, so the decided set is a long prefix plus a few, and the shifted rest is
        # a small int. This keeps the cache small (a full bitset per entry is O(history) bytes).
        cache: set[tuple[int, int, Value]] = set()
        # (operation, state before it, dropped?) for every decided operation, in order
        stack: list[tuple[int, Value, bool]] = []
        node = nxt[head]
        steps = 0
        try:
            while remaining:
                steps += 1
                if steps % _DEADLINE_EVERY == 0 and time.monotonic() > limit:
                    raise _OutOfTime
                i = node >> 1
                if not node & 1:  # a call: try to linearize operation i now
                    k = kind[i]
                    if k == 0:  # put
                        ok, new = True, arg1[i]
                    elif k == 1:  # get
                        ok, new = result[i] == state, state
                    elif k == 2:  # delete
                        ok, new = (not definite[i]) or result[i] == (state is not None), None
                    else:  # cas
                        hit = state == arg1[i]
                        ok = (not definite[i]) or result[i] == hit
                        new = arg2[i] if hit else state
                    if ok:
                        decided = linearized | (1 << i)
                        low = (decided ^ (decided + 1)).bit_length() - 1
                        config = (low, decided >> low, new)
                        if config not in cache:
                            cache.add(config)
                            stack.append((i, state, False))
                            self._lift(i)
                            linearized, state = decided, new
                            remaining -= definite[i]
                            node = nxt[head]
                            continue
                    node = nxt[node]
                    continue
                # A return: operation i should have been linearized before it. An UNKNOWN one
                # may instead never have happened (dropped: decided, state unchanged).
                if not definite[i]:
                    decided = linearized | (1 << i)
                    low = (decided ^ (decided + 1)).bit_length() - 1
                    config = (low, decided >> low, state)
                    if config not in cache:
                        cache.add(config)
                        stack.append((i, state, True))
                        self._lift(i)
                        linearized = decided
                        node = nxt[head]
                        continue
                # Backtrack: undo the last decision and try the next call after it. Undoing a
                # drop puts us back at that return, where nothing else is left to try.
                blocked_at = self.ops[i].complete
                if blocked_at is not None and blocked_at > self.frontier:
                    self.frontier = blocked_at
                while True:
                    if not stack:
                        return False
                    i, state, dropped = stack.pop()
                    self._unlift(i)
                    linearized &= ~(1 << i)
                    remaining += definite[i]
                    if not dropped:
                        node = nxt[2 * i]
                        break
            return True
        finally:
            self.steps = steps


# -- explaining a violation -----------------------------------------------------------------


def _prefix(ops: Sequence[Operation], cut: float) -> list[Operation]:
    """The history as it stood at time `cut`: operations invoked by then, those still running
    made pending (an answer not yet seen constrains nothing; a read is dropped)."""
    prefix = []
    for o in ops:
        if o.invoke > cut:
            continue
        if o.complete is not None and o.complete <= cut:
            prefix.append(o)
        elif o.op != GET:
            prefix.append(replace(o, complete=None, result=None, outcome=Outcome.UNKNOWN))
    return prefix


def _shortest_failing_prefix(
    ops: Sequence[Operation], frontier: float, budget: float
) -> tuple[Operation | None, tuple[Operation, ...]]:
    """The shortest prefix of a non-linearizable key history (cut at the n-th definite
    completion) that is already not linearizable, and the operation completing at the cut.

    Failure is monotone in n (prefixes of a linearizable history are linearizable), so the
    search gallops then bisects. It starts at the failed search's `frontier`: when the search
    was blocked at a return at time T, the operations it had linearized include every one that
    completed before T, in an order that respects real time, so every cut before T is
    linearizable and the culprit completes at T or later. Usually the first probe fails and the
    whole explanation costs one search of the prefix. Returns (None, all ops) out of time.
    """
    deadline = time.monotonic() + budget
    completions = sorted(
        (o for o in ops if o.outcome is Outcome.OK and o.complete is not None),
        key=lambda o: (o.complete, o.invoke),
    )

    def fails(n: int) -> bool:
        cut = completions[n].complete
        assert cut is not None
        return not _Search(_prefix(ops, cut)).run(deadline)

    # Invariants: every cut before completions[low] passes; the cut at completions[high] fails
    # (the last one does: after it only UNKNOWN operations remain, which can all be dropped).
    low = next(
        (n for n, o in enumerate(completions) if o.complete is not None and o.complete >= frontier),
        0,
    )
    high = len(completions) - 1
    try:
        step = 1
        while low < high:  # gallop: probe low, low+1, low+3, low+7, ...
            probe = min(low + step - 1, high)
            if fails(probe):
                high = probe
                break
            low = probe + 1
            step *= 2
        while low < high:
            middle = (low + high) // 2
            if fails(middle):
                high = middle
            else:
                low = middle + 1
    except _OutOfTime:
        return None, tuple(ops)
    culprit = completions[high]
    cut = culprit.complete
    assert cut is not None
    return culprit, tuple(o for o in ops if o.invoke <= cut)


def _describe_violation(
    key: str,
    culprit: Operation | None,
    prefix: Sequence[Operation],
    everything: Sequence[Operation],
) -> str:
    origin = min(o.invoke for o in everything)
    lines = [f"key {key!r}: its {len(everything)} operations are not linearizable"]
    if culprit is None:
        lines.append("(the failing prefix was not narrowed down in time) the last operations:")
    else:
        lines.append(
            "linearizable until this operation completes; no order of the operations invoked "
            "before it completed explains its answer:"
        )
        lines.append("  " + culprit.describe(origin))
        lines.append(
            f"the last {min(_EXCERPT, len(prefix))} of those {len(prefix)} operations "
            "(seconds from the key's first operation; ?? = outcome unknown):"
        )
    tail = sorted(prefix, key=lambda o: o.invoke)[-_EXCERPT:]
    lines.extend(("> " if o is culprit else "  ") + o.describe(origin) for o in tail)
    return "\n".join(lines)
