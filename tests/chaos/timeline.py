"""What a chaos run saw, as fault windows and leader changes on one clock, and the PNG of it.

The picture follows Jepsen's: one point per operation at its invocation time and its latency,
coloured by outcome (ok, failed, unknown), the ok throughput per second below, every fault's
window shaded across both, and a vertical line where the leader changed. People look at it
before they read logs: a gap in the points under a shaded window is an outage that fault
caused; points after the window ends show how long recovery took.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.chaos.linearizability import Operation, Outcome

# One colour per fault family (the part of a fault's kind before the first '-').
FAULT_COLOURS = {
    "kill": "tab:red",
    "pause": "tab:orange",
    "wipe": "tab:purple",
    "partition": "tab:blue",
    "clock": "tab:green",
    "member": "tab:brown",  # membership changes (tests/chaos/membership.py)
}


@dataclass
class Window:
    """A fault from `start` to `end` (monotonic seconds; `end` None while it lasts)."""

    kind: str  # e.g. "kill-leader", "partition-halves"
    target: str  # a peer id, or a description of the cut
    start: float
    end: float | None = None

    @property
    def family(self) -> str:
        return self.kind.split("-", 1)[0]


@dataclass(frozen=True)
class LeaderChange:
    at: float
    leader: str
    term: int


@dataclass(frozen=True)
class Failure:
    """A definitely failed operation (CommandError): not in the history, drawn all the same."""

    invoke: float
    complete: float


def draw(
    path: Path,
    history: Sequence[Operation],
    failures: Sequence[Failure],
    windows: Sequence[Window],
    leaders: Sequence[LeaderChange],
    started: float,
    ended: float,
    title: str,
) -> Path:
    """Write the run's timeline PNG to `path` (times are shown relative to `started`)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    fig, (lat, rate) = plt.subplots(
        2, 1, figsize=(14, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    span = max(ended - started, 1e-3)
    done = [o for o in history if o.complete is not None and o.outcome is Outcome.OK]
    unknown = [o for o in history if o.outcome is Outcome.UNKNOWN]
    lat.scatter(
        [o.invoke - started for o in done],
        [1000 * (o.complete - o.invoke) for o in done if o.complete is not None],
        s=3,
        c="tab:green",
        label=f"ok ({len(done)})",
    )
    # An unknown outcome has no completion: drawn at the client's timeout, where it gave up.
    top = max([1000 * (o.complete - o.invoke) for o in done if o.complete] or [1.0])
    lat.scatter(
        [o.invoke - started for o in unknown],
        [top * 1.3] * len(unknown),
        s=8,
        marker="x",
        c="tab:orange",
        label=f"unknown ({len(unknown)})",
    )
    lat.scatter(
        [f.invoke - started for f in failures],
        [1000 * (f.complete - f.invoke) for f in failures],
        s=6,
        marker="^",
        c="tab:red",
        label=f"failed ({len(failures)})",
    )
    lat.set_yscale("log")
    lat.set_ylabel("latency (ms)")
    per_second = Counter(int(o.invoke - started) for o in done)
    seconds = list(range(int(span) + 1))
    rate.plot(seconds, [per_second.get(s, 0) for s in seconds], c="tab:green", lw=1)
    rate.set_ylabel("ok ops/s")
    rate.set_xlabel("seconds since the run started")
    shown: set[str] = set()
    for window in windows:
        end = (window.end if window.end is not None else ended) - started
        colour = FAULT_COLOURS.get(window.family, "grey")
        label = None if window.family in shown else window.family
        shown.add(window.family)
        for axis in (lat, rate):
            axis.axvspan(window.start - started, end, color=colour, alpha=0.15, label=label)
            label = None
    for change in leaders:
        for axis in (lat, rate):
            axis.axvline(change.at - started, color="black", lw=0.6, ls=":")
    if leaders:
        lat.plot([], [], color="black", lw=0.6, ls=":", label=f"leader change ({len(leaders)})")
    lat.legend(loc="upper right", fontsize=8, ncol=4)
    lat.set_title(textwrap.fill(title, 160), fontsize=9)
    lat.set_xlim(0, span)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
