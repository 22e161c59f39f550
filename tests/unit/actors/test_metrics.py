"""actors/metrics.py alone: bucket placement, counts and sums, label sets, writers' cells and
their retirement, the registry."""

from __future__ import annotations

import threading

import pytest

from actors.metrics import Histogram, Metrics, RaftMetrics


def histogram(bounds: tuple[float, ...] = (0.1, 1.0, 10.0)) -> Histogram:
    return Metrics().histogram("h_seconds", "a histogram", bounds)


@pytest.mark.parametrize(
    ("value", "bucket"),
    [
        pytest.param(0.0, 0, id="below the first bound"),
        pytest.param(0.1, 0, id="on a bound: that bucket (le)"),
        pytest.param(0.10001, 1, id="just above a bound: the next"),
        pytest.param(1.0, 1, id="on the second bound"),
        pytest.param(10.0, 2, id="on the last bound"),
        pytest.param(10.5, 3, id="above every bound: +Inf"),
    ],
)
def test_an_observation_lands_in_the_first_bucket_whose_bound_it_does_not_exceed(
    value: float, bucket: int
) -> None:
    h = histogram()
    cell = h.cell()
    cell.observe(value)
    assert cell.counts == [int(n == bucket) for n in range(4)]
    sample = h.sample()
    # Cumulative, as Prometheus wants them: every bucket from this one on counts it.
    assert sample.buckets == tuple(int(n >= bucket) for n in range(4))
    assert (sample.count, sample.sum) == (1, value)


def test_a_histogram_counts_and_sums_every_observation() -> None:
    h = histogram()
    cell = h.cell()
    for value in (0.05, 0.5, 0.5, 5.0, 50.0):
        cell.observe(value)
    sample = h.sample()
    assert sample.buckets == (1, 3, 4, 5)
    assert sample.count == 5 and sample.sum == pytest.approx(56.05)


def test_bucket_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="increasing"):
        histogram((1.0, 0.5))
    with pytest.raises(ValueError, match="increasing"):
        histogram((1.0, 1.0))
    with pytest.raises(ValueError, match="increasing"):
        histogram(())


def test_counters_keep_one_series_per_label_set() -> None:
    c = Metrics().counter("requests", "by op and status", ["op", "status"])
    put_ok, get_ok, put_error = c.cell("put", "ok"), c.cell("get", "ok"), c.cell("put", "error")
    put_ok.inc()
    put_ok.inc(4)
    get_ok.inc()
    assert (c.value("put", "ok"), c.value("get", "ok"), c.value("put", "error")) == (5, 1, 0)
    assert c.value("delete", "ok") == 0  # no writer: nothing counted
    assert [(s.labels, s.value) for s in c.samples()] == [
        (("get", "ok"), 1),
        (("put", "error"), 0),  # a cell taken is a series, exported at 0
        (("put", "ok"), 5),
    ]
    with pytest.raises(ValueError, match="labels"):
        c.cell("put")
    assert put_error.value == 0


def test_cells_make_one_cell_per_label_value_or_tuple() -> None:
    metrics = RaftMetrics()
    outcomes = metrics.proposals.cells("appended", "overloaded")
    outcomes["appended"].inc(3)
    snapshots = metrics.snapshots.cells(("save", "ok"), ("load", "failed"))
    snapshots["load", "failed"].inc()
    assert metrics.proposals.value("appended") == 3
    assert metrics.snapshots.value("load", "failed") == 1
    assert metrics.snapshots.value("save", "ok") == 0


def test_the_cells_of_several_writers_sum_into_their_series() -> None:
    """Each writer has a cell of its own (one writer per cell); the series is their sum."""
    metrics = RaftMetrics()
    node, log_manager = (metrics.proposals.cell("not_leader") for _ in range(2))
    node.inc(2)
    log_manager.inc(3)
    assert metrics.proposals.value("not_leader") == 5
    first, second = (metrics.fsync_seconds.cell() for _ in range(2))
    first.observe(0.001)
    second.observe(0.1)
    sample = metrics.fsync_seconds.sample()
    assert sample.count == 2 and sample.sum == pytest.approx(0.101)


def test_a_retired_cell_keeps_its_counts_and_is_no_longer_held() -> None:
    """A Replicator retires its cells when its term ends: counts stay, cells do not pile up."""
    h = histogram()
    for value in (0.05, 5.0):
        cell = h.cell()
        cell.observe(value)
        cell.retire()
        cell.retire()  # twice: counted once
    live = h.cell()
    live.observe(50.0)
    assert h.sample().buckets == (1, 1, 2, 3)
    assert h.sample().sum == pytest.approx(55.05)
    assert [len(cells) for cells in h._live.values()] == [1]  # only the live writer's cell
    c = Metrics().counter("sent", "a counter")
    for _ in range(3):
        cell_c = c.cell()
        cell_c.inc(2)
        cell_c.retire()
    assert c.value() == 6 and [len(cells) for cells in c._live.values()] == [0]


def test_scrapes_while_writers_write_take_and_retire_cells_see_counts_only_grow() -> None:
    """Writes take no lock; taking, retiring and scraping do, so a scrape on another thread
    never sees a count dip (a retiring cell counted twice or not at all) and nothing is lost."""
    h = histogram()
    writers, rounds, per_round = 4, 20, 100

    def write() -> None:
        for _ in range(rounds):
            cell = h.cell()
            for _ in range(per_round):
                cell.observe(0.5)
            cell.retire()

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    seen = []
    while any(thread.is_alive() for thread in threads):
        seen.append(h.sample().count)
    for thread in threads:
        thread.join()
    assert seen == sorted(seen)
    final = h.sample()
    assert final.count == writers * rounds * per_round == final.buckets[1]
    assert final.sum == pytest.approx(0.5 * final.count)
    assert [len(cells) for cells in h._live.values()] == [0]


def test_registering_a_name_again_returns_the_same_family_or_refuses() -> None:
    metrics = Metrics()
    requests = metrics.counter("client_requests", "doc", ["op", "status"])
    assert metrics.counter("client_requests", "doc", ["op", "status"]) is requests
    with pytest.raises(ValueError, match="differently"):
        metrics.counter("client_requests", "doc", ["op"])
    with pytest.raises(ValueError, match="differently"):
        metrics.histogram("client_requests", "doc", (1.0,), ["op", "status"])
    h = metrics.histogram("h", "doc", (1.0, 2.0))
    assert metrics.histogram("h", "doc", (1.0, 2.0)) is h
    with pytest.raises(ValueError, match="differently"):
        metrics.histogram("h", "doc", (1.0, 3.0))
    assert [f.name for f in metrics.families()] == ["client_requests", "h"]


def test_raft_metrics_name_their_families_with_units_and_no_prefix() -> None:
    """The collector adds the pykka_raft_ prefix (and _total to counters)."""
    names = {f.name: type(f).__name__ for f in RaftMetrics().families()}
    assert names == {
        "proposals": "Counter",
        "proposals_completed": "Counter",
        "apply_seconds": "Histogram",
        "fsync_seconds": "Histogram",
        "append_entries_batch_entries": "Histogram",
        "append_entries_batch_bytes": "Histogram",
        "pre_votes": "Counter",
        "elections": "Counter",
        "leader_changes": "Counter",
        "callback_errors": "Counter",
        "snapshots": "Counter",
        "snapshot_seconds": "Histogram",
    }


def test_durations_use_the_injected_clock() -> None:
    assert RaftMetrics(clock=lambda: 42.0).clock() == 42.0
