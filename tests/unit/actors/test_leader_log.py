"""LeaderLog (actors/leader_log.py) alone: a leader's appends on the Node's thread, with
recording mailboxes for the LogManager, the BallotBox, the FSMCaller and the Replicators."""

from __future__ import annotations

from typing import Any

import pykka
import pytest

from actors.configuration import Configuration
from actors.errors import OverloadedError
from actors.leader_log import LeaderLog
from actors.log_view import LogView
from actors.messages import LogAppended, PersistLeaderEntries, RegisterPending, SetConfiguration
from actors.metrics import RaftMetrics
from actors.options import RaftOptions
from actors.testing import RecordingMailbox, Transcript, counts
from storage.entry import EntryType, LogEntry, command_entries
from storage.memory import MemoryLogStorage

ME, B, C = "a:1", "b:2", "c:3"
CONF = Configuration.of((ME, B, C))
TERM = 3


class Fixture:
    def __init__(self, raft_options: RaftOptions | None = None) -> None:
        self.transcript = Transcript()
        self.view = LogView(MemoryLogStorage(), bootstrap_conf=CONF)
        # The term's first entry, as the LogManager appends it on BecomeLeader.
        self.view.append_unstable([LogEntry(1, TERM, EntryType.CONFIGURATION, CONF.encode())])
        self.lm = RecordingMailbox("log_manager", self.transcript)
        self.bb = RecordingMailbox("ballot_box", self.transcript)
        self.fsm = RecordingMailbox("fsm_caller", self.transcript)
        self.replicators = {B: RecordingMailbox(B, self.transcript)}
        self.metrics = RaftMetrics()
        cells = self.metrics.proposals.cells("appended", "overloaded")
        self.log = LeaderLog(
            TERM,
            self.view,
            self.lm,
            self.bb,
            self.fsm,
            self.replicators,
            raft_options or RaftOptions(),
            cells,
        )


def futures(n: int) -> tuple[pykka.ThreadingFuture[Any], ...]:
    return tuple(pykka.ThreadingFuture() for _ in range(n))


def test_commands_are_registered_then_readable_then_handed_to_be_written_and_sent() -> None:
    """The FSMCaller has the futures before any replica could grant the entries (it hears
    first), and the entries are in the LogView before any Replicator is told to send them."""
    f = Fixture()
    done = futures(2)
    f.log.append_commands((b"p", b"q"), done)
    entries = command_entries(2, TERM, (b"p", b"q"))
    assert f.transcript.entries == [
        ("fsm_caller", RegisterPending(2, done)),
        ("log_manager", PersistLeaderEntries(TERM, entries)),
        (B, LogAppended(3)),
    ]
    assert f.view.entries(2, 3) == entries and f.view.stable_index == 0  # not durable yet
    assert counts(f.metrics.proposals) == {"appended": 2, "overloaded": 0}


def test_a_replicator_added_to_the_nodes_map_is_told_of_the_next_append() -> None:
    f = Fixture()
    f.replicators[C] = RecordingMailbox(C, f.transcript)
    f.log.append_commands((b"x",), futures(1))
    assert f.replicators[C].take() == [LogAppended(2)]


def test_proposals_beyond_the_in_flight_bound_fail_fast_and_nothing_is_appended() -> None:
    """Back-pressure: at most max_pending_entries appended but unapplied; past it, a proposal is
    refused at once with OverloadedError (definite, retryable) instead of queuing for ever."""
    f = Fixture(RaftOptions(max_pending_entries=4))  # the term's first entry is 1 pending
    f.log.append_commands((b"a", b"b", b"c"), futures(3))
    f.transcript.clear()
    [refused] = futures(1)
    f.log.append_commands((b"d",), (refused,))
    with pytest.raises(OverloadedError) as info:
        refused.get(timeout=0)
    assert info.value.outcome_unknown is False
    assert f.transcript.entries == [] and f.view.last_index == 4
    f.view.applied_index = 3  # the FSMCaller caught up with three of them
    [again] = futures(1)
    f.log.append_commands((b"d",), (again,))
    assert f.view.last_index == 5
    assert f.fsm.take()[-1] == RegisterPending(5, (again,))
    assert counts(f.metrics.proposals) == {"appended": 4, "overloaded": 1}


def test_proposals_beyond_the_byte_bound_fail_fast() -> None:
    f = Fixture(RaftOptions(max_pending_bytes=1000, max_command_bytes=1000))
    f.log.append_commands((b"x" * 600,), futures(1))
    [refused] = futures(1)
    f.log.append_commands((b"y" * 600,), (refused,))
    with pytest.raises(OverloadedError, match="bytes"):
        refused.get(timeout=0)
    assert f.view.last_index == 2
    f.view.applied_index = 2  # the 600 bytes were applied: room again
    f.log.append_commands((b"y" * 600,), futures(1))
    assert f.view.last_index == 3


def test_a_configuration_entry_is_in_force_when_appended_and_counted_by_it_first() -> None:
    f = Fixture()
    new = Configuration.of((ME, B, C, "d:4"), (ME, B, C))
    [applied] = futures(1)
    f.log.append_configuration(new, applied)
    entry = LogEntry(2, TERM, EntryType.CONFIGURATION, new.encode())
    # The BallotBox counts by it before any Grant for it; its future is the FSMCaller's.
    assert f.transcript.entries == [
        ("ballot_box", SetConfiguration(TERM, new)),
        ("fsm_caller", RegisterPending(2, (applied,))),
        ("log_manager", PersistLeaderEntries(TERM, [entry])),
        (B, LogAppended(2)),
    ]
    assert f.view.conf == new and f.view.conf_state.index == 2
    assert f.view.conf_state.previous == CONF
