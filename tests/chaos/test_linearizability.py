"""The linearizability checker (transport/linearizability.py): hand-written histories with known
verdicts, the unknown-outcome rules, session fencing, the time budget, and properties checked
against a simulated register and against brute-force enumeration."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.chaos.linearizability import (
    CAS,
    DELETE,
    GET,
    PUT,
    Operation,
    Outcome,
    Verdict,
    check,
    describe_ops,
    fence_by_session,
)

Value = str | None


# -- building histories -----------------------------------------------------------------------


def put(c: int, start: float, end: float | None, value: str, *, key: str = "k") -> Operation:
    return _op(c, PUT, key, (value,), start, end, None)


def get(c: int, start: float, end: float, result: Value, *, key: str = "k") -> Operation:
    return _op(c, GET, key, (), start, end, result)


def delete(c: int, start: float, end: float | None, existed: bool, *, key: str = "k") -> Operation:
    return _op(c, DELETE, key, (), start, end, existed)


def cas(
    c: int,
    start: float,
    end: float | None,
    expected: Value,
    new: str,
    swapped: bool,
    *,
    key: str = "k",
) -> Operation:
    return _op(c, CAS, key, (expected, new), start, end, swapped)


def _op(
    c: int, op: str, key: str, args: tuple[Value, ...], start: float, end: float | None, res: object
) -> Operation:
    """end=None makes an UNKNOWN operation (a ClientTimeout) with no bound."""
    if end is None:
        return Operation(c, op, key, args, start, None, None, Outcome.UNKNOWN)
    return Operation(c, op, key, args, start, end, res)


def unknown(op: Operation, bound: float | None = None) -> Operation:
    """The same operation with its outcome unknown (optionally bounded at `bound`)."""
    return Operation(op.client, op.op, op.key, op.args, op.invoke, bound, None, Outcome.UNKNOWN)


def verdict(history: Sequence[Operation]) -> Verdict:
    return check(history, timeout=30).verdict


# -- linearizable histories -------------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    result = check([])
    assert result.verdict is Verdict.OK and result.operations == 0


def test_sequential_history_with_every_operation() -> None:
    history = [
        get(1, 0, 1, None),
        put(1, 2, 3, "a"),
        get(2, 4, 5, "a"),
        cas(1, 6, 7, "a", "b", True),
        cas(2, 8, 9, "a", "c", False),
        get(1, 10, 11, "b"),
        delete(2, 12, 13, True),
        delete(1, 14, 15, False),
        cas(2, 16, 17, None, "d", True),  # expected None: only if absent
        cas(1, 18, 19, None, "e", False),
        get(2, 20, 21, "d"),
    ]
    assert verdict(history) is Verdict.OK


def test_reads_concurrent_with_a_write_may_see_either_value() -> None:
    history = [
        put(1, 0, 1, "old"),
        put(1, 2, 10, "new"),
        get(2, 3, 4, "new"),  # the write took effect early...
        get(3, 5, 6, "new"),  # ...so later reads see it too
    ]
    assert verdict(history) is Verdict.OK
    assert verdict([*history[:2], get(2, 3, 4, "old"), get(3, 5, 6, "new")]) is Verdict.OK


def test_order_of_concurrent_writes_is_chosen_to_fit_the_reads() -> None:
    history = [
        put(1, 0, 10, "a"),  # long-running: may take effect after b
        put(2, 1, 2, "b"),
        get(3, 3, 4, "b"),
        get(3, 5, 6, "a"),
        cas(2, 7, 8, "a", "c", True),
    ]
    assert verdict(history) is Verdict.OK


def test_touching_intervals_count_as_concurrent() -> None:
    # get ends exactly when put starts: treated as overlapping, so either order is allowed.
    assert verdict([put(1, 1, 2, "a"), get(2, 0, 1, "a")]) is Verdict.OK


def test_keys_are_independent() -> None:
    history = [
        put(1, 0, 1, "a", key="x"),
        put(2, 0, 1, "b", key="y"),
        get(1, 2, 3, "a", key="x"),
        get(2, 2, 3, "b", key="y"),
        delete(1, 4, 5, False, key="z"),
    ]
    result = check(history)
    assert result.verdict is Verdict.OK and result.keys == 3 and result.operations == 5


# -- violations -------------------------------------------------------------------------------


def test_stale_read_is_a_violation() -> None:
    history = [
        put(1, 0, 1, "a"),
        put(1, 2, 3, "b"),
        get(2, 4, 5, "a"),  # b was acknowledged before this read began
    ]
    result = check(history)
    assert result.verdict is Verdict.VIOLATION
    assert result.key == "k"
    assert result.culprit == history[2]
    assert "get('k') -> 'a'" in result.description


def test_lost_write_is_a_violation() -> None:
    history = [
        put(1, 0, 1, "a"),
        put(2, 2, 3, "b"),  # acknowledged...
        get(1, 4, 5, "b"),
        get(2, 6, 7, "a"),  # ...then gone, though nobody wrote "a" again
    ]
    result = check(history)
    assert result.verdict is Verdict.VIOLATION
    assert result.culprit == history[3]


def test_write_taking_effect_twice_is_a_violation() -> None:
    history = [
        cas(1, 0, 1, None, "a", True),
        delete(2, 2, 3, True),
        get(1, 4, 5, "a"),  # "a" again, with no writer: the cas was applied twice
    ]
    assert verdict(history) is Verdict.VIOLATION


def test_read_of_a_value_never_written_is_a_violation() -> None:
    assert verdict([put(1, 0, 1, "a"), get(2, 0.5, 2, "z")]) is Verdict.VIOLATION


def test_cas_and_delete_answers_must_match_the_state() -> None:
    assert verdict([put(1, 0, 1, "a"), cas(1, 2, 3, "a", "b", False)]) is Verdict.VIOLATION
    assert verdict([put(1, 0, 1, "a"), cas(1, 2, 3, "x", "b", True)]) is Verdict.VIOLATION
    assert verdict([cas(1, 0, 1, None, "b", False)]) is Verdict.VIOLATION  # absent: must swap
    assert verdict([put(1, 0, 1, "a"), cas(1, 2, 3, None, "b", True)]) is Verdict.VIOLATION
    assert verdict([delete(1, 0, 1, True)]) is Verdict.VIOLATION
    # A failed cas changes nothing:
    failed = [put(1, 0, 1, "a"), cas(1, 2, 3, "x", "b", False), get(1, 4, 5, "b")]
    assert verdict(failed) is Verdict.VIOLATION


def test_only_the_violating_key_is_reported() -> None:
    history = [
        put(1, 0, 1, "a", key="good"),
        get(1, 2, 3, "a", key="good"),
        put(2, 0, 1, "a", key="bad"),
        get(2, 2, 3, None, key="bad"),
    ]
    result = check(history)
    assert result.verdict is Verdict.VIOLATION
    assert result.key == "bad" and result.violating_keys == ("bad",)
    assert all(o.key == "bad" for o in result.ops)


def test_culprit_is_the_first_unexplainable_answer_in_a_long_history() -> None:
    history: list[Operation] = []
    for n in range(200):
        history.append(put(1, 4 * n, 4 * n + 1, f"v{n}"))
        history.append(get(2, 4 * n + 2, 4 * n + 3, f"v{n}"))
    history[301] = get(2, 4 * 150 + 2, 4 * 150 + 3, "v149")  # stale by one write
    result = check(history)
    assert result.verdict is Verdict.VIOLATION
    assert result.culprit == history[301]
    assert max(o.invoke for o in result.ops) <= history[301].invoke  # cut at the culprit
    assert len(result.description.splitlines()) < 40  # a readable excerpt, not 400 lines


# -- unknown outcomes -------------------------------------------------------------------------


def test_unknown_write_that_happened() -> None:
    history = [put(1, 0, 1, "a"), put(2, 2, None, "b"), get(1, 5, 6, "b"), get(1, 7, 8, "b")]
    assert verdict(history) is Verdict.OK


def test_unknown_write_that_did_not_happen() -> None:
    history = [put(1, 0, 1, "a"), put(2, 2, None, "b"), get(1, 5, 6, "a"), get(1, 7, 8, "a")]
    assert verdict(history) is Verdict.OK


def test_unknown_write_may_take_effect_long_after_it_was_sent() -> None:
    history = [put(2, 0, None, "b"), put(1, 1, 2, "a"), get(1, 3, 4, "a"), get(1, 50, 51, "b")]
    assert verdict(history) is Verdict.OK


def test_unknown_write_cannot_take_effect_before_it_was_sent() -> None:
    history = [put(1, 0, 1, "a"), get(1, 2, 3, "b"), put(2, 4, None, "b")]
    assert verdict(history) is Verdict.VIOLATION


def test_two_unknown_writes_take_effect_in_either_order_but_once_each() -> None:
    writes = [put(1, 0, None, "a"), put(2, 0, None, "b")]
    b_then_a = [*writes, get(3, 1, 2, "b"), get(3, 3, 4, "a")]
    a_then_b = [*writes, get(3, 1, 2, "a"), get(3, 3, 4, "b")]
    assert verdict(b_then_a) is Verdict.OK
    assert verdict(a_then_b) is Verdict.OK
    assert verdict([*b_then_a, get(3, 5, 6, "b")]) is Verdict.VIOLATION


def test_unknown_delete_and_cas_effects_follow_the_state() -> None:
    gone = [put(1, 0, 1, "a"), delete(2, 2, None, False), get(1, 3, 4, None)]
    assert verdict(gone) is Verdict.OK  # the delete happened (its answer is not known)
    swapped = [put(1, 0, 1, "a"), cas(2, 2, None, "a", "b", False), get(1, 3, 4, "b")]
    assert verdict(swapped) is Verdict.OK
    # An unknown cas whose expectation never held cannot have written:
    cannot = [put(1, 0, 1, "a"), cas(2, 2, None, "x", "b", False), get(1, 3, 4, "b")]
    assert verdict(cannot) is Verdict.VIOLATION


def test_unknown_read_constrains_nothing() -> None:
    result = check([put(1, 0, 1, "a"), unknown(get(2, 2, 3, "zzz"))])
    assert result.verdict is Verdict.OK and result.operations == 1


def test_bounded_unknown_write_happens_before_its_bound_or_never() -> None:
    late = [put(1, 0, 1, "a"), unknown(put(2, 2, 3, "b"), bound=5), get(1, 6, 7, "a")]
    assert verdict(late) is Verdict.OK  # never happened
    seen = [put(1, 0, 1, "a"), unknown(put(2, 2, 3, "b"), bound=5), get(1, 6, 7, "b")]
    assert verdict(seen) is Verdict.OK  # happened before 5
    flip = [*seen, get(1, 8, 9, "a")]
    assert verdict(flip) is Verdict.VIOLATION  # "a" came back: no writer of it after 1
    after = [put(1, 0, 1, "a"), unknown(put(2, 2, 3, "b"), bound=5)]
    after += [get(1, 6, 7, "a"), get(1, 8, 9, "b")]
    assert verdict(after) is Verdict.VIOLATION  # would have taken effect after its bound


def test_fencing_bounds_an_unknown_write_by_the_clients_next_acknowledged_write() -> None:
    history = [
        put(1, 0, 1, "a"),
        put(2, 2, None, "lost"),  # client 2 timed out...
        get(2, 3, 4, "a"),  # (reads fence nothing)
        put(2, 5, 6, "x", key="other"),  # ...then a later write of client 2 was acknowledged
        get(1, 7, 8, "a"),  # so "lost" cannot take effect after 6: it never did...
        get(1, 9, 10, "lost"),  # ...and cannot appear now
    ]
    assert verdict(history) is Verdict.OK  # unbounded: it may have taken effect at 8.5
    fenced = fence_by_session(history)
    assert fenced[1].complete == 6 and fenced[1].outcome is Outcome.UNKNOWN
    assert fenced[2] == history[2] and fenced[0] == history[0]
    assert verdict(fenced) is Verdict.VIOLATION
    assert history[1].complete is None  # the input is left alone


def test_fencing_skips_later_unknown_writes_and_leaves_the_last_unbounded() -> None:
    history = [
        put(1, 0, None, "a"),
        put(1, 1, None, "b"),
        delete(1, 2, 3, False, key="j"),
        put(1, 4, None, "c"),
    ]
    fenced = fence_by_session(history)
    assert [o.complete for o in fenced] == [3, 3, 3, None]


# -- the time budget --------------------------------------------------------------------------


def test_exhausted_budget_is_unknown_not_a_verdict() -> None:
    history = []
    for n in range(5000):
        history.append(put(n % 4, 2 * n, 2 * n + 1.5, f"v{n}"))
    result = check(history, timeout=0)
    assert result.verdict is Verdict.UNKNOWN
    assert "budget" in result.description


def test_exponential_search_runs_out_of_budget() -> None:
    # 40 timed-out writes, then a read only "no write happened at all" explains... except that
    # it contradicts the acknowledged first write. Proving that means trying every subset.
    history = [put(0, 0, 1, "first")]
    history += [put(n, 2, None, f"v{n}") for n in range(1, 41)]
    history += [get(0, 3, 4, None)]
    assert check(history, timeout=0.5).verdict is Verdict.UNKNOWN


def test_operations_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        Operation(1, "incr", "k", (), 0, 1)
    with pytest.raises(ValueError, match="argument"):
        Operation(1, PUT, "k", (), 0, 1)
    with pytest.raises(ValueError, match="completion time"):
        Operation(1, GET, "k", (), 0, None)
    with pytest.raises(ValueError, match="before it is invoked"):
        Operation(1, GET, "k", (), 2, 1)
    with pytest.raises(ValueError, match="cannot return"):
        Operation(1, CAS, "k", ("a", "b"), 0, 1, result="yes")
    with pytest.raises(ValueError, match="needs a value"):
        Operation(1, PUT, "k", (None,), 0, 1)


def test_describe_ops_lists_operations_in_invocation_order() -> None:
    text = describe_ops([get(2, 5, 6, "a"), put(1, 3, None, "a")])
    first, second = text.splitlines()
    assert "put('k', 'a') -> ??" in first and "inf" in first
    assert second.startswith("[2.0000 .. 3.0000] client 2: get('k') -> 'a'")


# -- properties -------------------------------------------------------------------------------


def simulate(seed: int, clients: int, ops_per_client: int, keys: int) -> list[Operation]:
    """A history of a real (atomic) map: each operation gets a random interval and a random
    linearization point inside it; results come from applying them in point order. Some writes
    time out (UNKNOWN), and of those some took effect and some did not."""
    rng = random.Random(seed)
    planned = []
    for client in range(clients):
        now = rng.random()
        for n in range(ops_per_client):
            length = rng.expovariate(1.0)
            point = now + rng.random() * length
            op = rng.choice([PUT, GET, GET, DELETE, CAS])
            timed_out = op != GET and rng.random() < 0.15
            applied = not timed_out or rng.random() < 0.5
            key = f"k{rng.randrange(keys)}"
            planned.append((point, client, n, op, key, now, now + length, timed_out, applied))
            now += length + rng.expovariate(10.0)
    planned.sort()
    state: dict[str, str] = {}
    history = []
    for _, client, n, op, key, start, end, timed_out, applied in planned:
        current = state.get(key)
        value = f"{client}-{n}"
        args: tuple[Value, ...]
        result: Value | bool
        if op == PUT:
            args, result = (value,), None
            if applied:
                state[key] = value
        elif op == GET:
            args, result = (), current
        elif op == DELETE:
            args, result = (), current is not None
            if applied:
                state.pop(key, None)
        else:
            expected = rng.choice([current, None, f"{rng.randrange(clients)}-{n}"])
            args, result = (expected, value), current == expected
            if result and applied:
                state[key] = value
        outcome = Outcome.UNKNOWN if timed_out else Outcome.OK
        history.append(
            Operation(client, op, key, args, start, None if timed_out else end, result, outcome)
        )
    return history


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    clients=st.integers(1, 8),
    ops_per_client=st.integers(1, 40),
    keys=st.integers(1, 3),
)
def test_histories_of_an_atomic_register_are_linearizable(
    seed: int, clients: int, ops_per_client: int, keys: int
) -> None:
    history = simulate(seed, clients, ops_per_client, keys)
    result = check(history, timeout=30)
    assert result.verdict is Verdict.OK, result.description
    # One client per session, ops of a client sequential: fencing is valid and keeps it OK.
    assert check(fence_by_session(history), timeout=30).verdict is Verdict.OK


def brute_force(history: Sequence[Operation]) -> bool:
    """Linearizable by enumeration: every subset of UNKNOWN writes, every order that respects
    real time (a before b iff a completes strictly before b is invoked), replayed on a dict."""
    ops = [o for o in history if not (o.op == GET and o.outcome is Outcome.UNKNOWN)]
    optional = [o for o in ops if o.outcome is Outcome.UNKNOWN]
    required = [o for o in ops if o.outcome is Outcome.OK]
    for size in range(len(optional) + 1):
        for chosen in itertools.combinations(optional, size):
            for order in itertools.permutations([*required, *chosen]):
                if _respects_real_time(order) and _replays(order):
                    return True
    return False


def _respects_real_time(order: Sequence[Operation]) -> bool:
    for i, later in enumerate(order):
        for earlier in order[i + 1 :]:  # `earlier` is placed after `later`: must not precede it
            if earlier.complete is not None and earlier.complete < later.invoke:
                return False
    return True


def _replays(order: Sequence[Operation]) -> bool:
    state: dict[str, str] = {}
    for o in order:
        current = state.get(o.key)
        known = o.outcome is Outcome.OK
        if o.op == PUT:
            assert o.args[0] is not None
            state[o.key] = o.args[0]
        elif o.op == GET:
            if o.result != current:
                return False
        elif o.op == DELETE:
            if known and o.result != (current is not None):
                return False
            state.pop(o.key, None)
        else:
            hit = current == o.args[0]
            if known and o.result != hit:
                return False
            if hit:
                assert o.args[1] is not None
                state[o.key] = o.args[1]
    return True


_values = st.sampled_from(["a", "b"])


@st.composite
def small_histories(draw: st.DrawFn) -> list[Operation]:
    """Arbitrary (mostly non-linearizable) histories of up to 6 operations on one or two keys,
    times on a coarse grid so that ties and overlaps are common."""
    history = []
    for client in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from([PUT, GET, DELETE, CAS]))
        key = draw(st.sampled_from(["k", "k", "j"]))
        start = draw(st.integers(0, 6))
        end = start + draw(st.integers(0, 4))
        outcome = draw(st.sampled_from([Outcome.OK, Outcome.OK, Outcome.UNKNOWN]))
        args: tuple[Value, ...]
        result: Value | bool
        if op == PUT:
            args, result = (draw(_values),), None
        elif op == GET:
            args, result = (), draw(st.sampled_from([None, "a", "b"]))
        elif op == DELETE:
            args, result = (), draw(st.booleans())
        else:
            args = (draw(st.sampled_from([None, "a", "b"])), draw(_values))
            result = draw(st.booleans())
        bounded = outcome is Outcome.UNKNOWN and draw(st.booleans())
        complete: float | None = end if outcome is Outcome.OK or bounded else None
        if outcome is Outcome.UNKNOWN:
            result = None
        history.append(Operation(client, op, key, args, start, complete, result, outcome))
    return history


@settings(max_examples=400, deadline=None)
@given(small_histories())
def test_verdict_agrees_with_brute_force(history: list[Operation]) -> None:
    expected = Verdict.OK if brute_force(history) else Verdict.VIOLATION
    result = check(history, timeout=30)
    assert result.verdict is expected, describe_ops(history)
    if expected is Verdict.VIOLATION:
        # The culprit ends the shortest failing prefix: cut there it fails, cut before it not.
        assert result.key is not None and result.culprit is not None
        assert result.culprit.complete is not None
        on_key = [o for o in history if o.key == result.key]
        assert not brute_force(cut_at(on_key, result.culprit.complete))
        earlier = [
            o.complete
            for o in on_key
            if o.outcome is Outcome.OK
            and o.complete is not None
            and o.complete < result.culprit.complete
        ]
        if earlier:
            assert brute_force(cut_at(on_key, max(earlier)))


def cut_at(history: Sequence[Operation], time: float) -> list[Operation]:
    """The history as seen at `time`: operations still running then have no known answer."""
    seen = []
    for o in history:
        if o.invoke > time:
            continue
        if o.complete is not None and o.complete <= time:
            seen.append(o)
        elif o.op != GET:
            seen.append(unknown(o))
    return seen
