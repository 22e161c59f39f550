"""SnapshotExecutor, alone: saving (finish, commit, who is told), the interval tick, and a
follower's install, chunk by chunk. Each test reads as a transcript: the chunks the leader
sent, what this follower answered (seq, success, next_offset, done), and what it told whom."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from actors.clock import ManualClock
from actors.configuration import Configuration
from actors.log_view import LogView
from actors.messages import (
    FollowerInstall,
    InstallLog,
    SaveSnapshot,
    SnapshotDone,
    SnapshotLoaded,
    SnapshotSaved,
    SnapshotTick,
    TakeSnapshot,
)
from actors.metrics import RaftMetrics
from actors.options import RaftOptions
from actors.snapshot_executor import SnapshotExecutor
from actors.testing import ActorHarness, RecordingMailbox, RecordingTransport, Transcript
from storage.errors import StaleSnapshotError, StorageError
from storage.memory import MemoryLogStorage, MemorySnapshotStorage
from storage.snapshot_storage import SnapshotMeta, SnapshotWriter
from transport.rpc import InstallSnapshotRequest, InstallSnapshotResponse

ME, LEADER, OTHER = "b:2", "a:1", "c:3"
TERM = 5  # the leader's term, and this follower's
CONF = Configuration.of((LEADER, ME, OTHER)).encode()
DATA = bytes(range(256)) * 4  # the leader's snapshot: 1024 bytes, four chunks of 256
CHUNK = 256
INDEX, SNAP_TERM = 10, 2  # the snapshot is 10@2


def chunk(
    offset: int,
    seq: int,
    *,
    data: bytes = DATA,
    index: int = INDEX,
    term: int = TERM,
    leader: str = LEADER,
    checksum: int | None = None,
    conf: bytes = CONF,
) -> InstallSnapshotRequest:
    """The chunk of the leader's snapshot `data` at `offset`, as its Replicator sends it."""
    piece = data[offset : offset + CHUNK]
    return InstallSnapshotRequest(
        term=term,
        leader_id=leader,
        last_included_index=index,
        last_included_term=SNAP_TERM,
        conf=conf,
        size=len(data),
        checksum=zlib.crc32(data) if checksum is None else checksum,
        offset=offset,
        data=piece,
        done=offset + len(piece) >= len(data),
        seq=seq,
    )


def meta_of(data: bytes = DATA, index: int = INDEX) -> SnapshotMeta:
    """The complete meta of a committed snapshot of `data`."""
    return SnapshotMeta(index, SNAP_TERM, CONF, len(data), zlib.crc32(data))


class Exe:
    """A SnapshotExecutor for follower "b:2" on the test thread, with recording neighbours."""

    def __init__(self, committed: int = 0, **options: Any) -> None:
        self.snapshots = MemorySnapshotStorage()
        self.log_view = LogView(MemoryLogStorage())
        self.log_view.set_committed(committed)
        self.clock = ManualClock()
        self.transcript = Transcript()
        self.transport = RecordingTransport(ME, self.transcript)
        self.node = RecordingMailbox("node", self.transcript)
        self.lm = RecordingMailbox("log_manager", self.transcript)
        self.fsm = RecordingMailbox("fsm", self.transcript)
        self.metrics = RaftMetrics(clock=self.clock.now)
        self.actor = SnapshotExecutor(
            ME, self.snapshots, self.log_view, self.transport, self.node, self.lm, self.fsm,
            self.clock, RaftOptions(**options), metrics=self.metrics,
        )  # fmt: skip
        self.harness = ActorHarness(self.actor, self.clock)

    def install(self, *requests: InstallSnapshotRequest, node_term: int = TERM) -> None:
        for req in requests:
            self.harness.send(FollowerInstall(req, node_term))

    def answers(self) -> list[tuple[int, bool, int, bool]]:
        """(seq, success, next_offset, done) of each answer sent since the last call."""
        taken = self.transport.take()
        assert all(isinstance(m, InstallSnapshotResponse) for _, m in taken), taken
        return [(m.seq, m.success, m.next_offset, m.done) for _, m in taken]

    def stored(self, index: int = INDEX) -> bytes:
        with self.snapshots.open(index) as reader:
            return reader.read()

    def refused(self) -> dict[str, int]:
        return self.actor.rejections.as_dict()


def writer_for(exe: Exe, index: int = 7, term: int = 2) -> SnapshotWriter:
    return exe.snapshots.create_writer(SnapshotMeta(index, term, CONF))


def writing(writer: SnapshotWriter, data: bytes) -> Callable[[], None]:
    """A state machine's `finish`: writes its captured state, off the apply path."""

    def finish() -> None:
        writer.write(data)

    return finish


def is_aborted(writer: SnapshotWriter) -> bool:
    try:
        writer.write(b"")
    except StorageError:
        return True
    return False


# -- saving ------------------------------------------------------------------------------------


def test_save_runs_finish_then_commits_then_tells_the_log_manager_and_the_fsm() -> None:
    exe = Exe()
    writer = writer_for(exe)
    state = msgpack.packb([[1, 1, b"x"]])
    exe.harness.send(SaveSnapshot(writer, writing(writer, state)))
    meta = SnapshotMeta(7, 2, CONF, len(state), zlib.crc32(state))
    # The log is compacted only once the snapshot is durable, and before the FSMCaller may
    # start the next one.
    assert exe.transcript.entries == [
        ("log_manager", SnapshotSaved(meta)),
        ("fsm", SnapshotDone(meta)),
    ]
    assert exe.snapshots.latest() == meta
    assert exe.stored(7) == state
    assert str(exe.actor) == "idle saves=1 installs=0"


def test_save_of_a_writer_already_filled_needs_no_finish() -> None:
    exe = Exe()
    writer = writer_for(exe)
    writer.write(b"abc")
    exe.harness.send(SaveSnapshot(writer, None))
    meta = SnapshotMeta(7, 2, CONF, 3, zlib.crc32(b"abc"))
    assert exe.lm.take() == [SnapshotSaved(meta)]
    assert exe.fsm.take() == [SnapshotDone(meta)]


def test_a_finish_that_raises_fails_only_that_snapshot() -> None:
    exe = Exe()
    writer = writer_for(exe)
    boom = RuntimeError("disk full, as the test asked")

    def finish() -> None:
        writer.write(b"half")
        raise boom

    exe.harness.send(SaveSnapshot(writer, finish))
    assert exe.fsm.take() == [SnapshotDone(writer.meta, boom)]
    assert exe.lm.told == []  # nothing to compact
    assert exe.snapshots.latest() is None
    assert is_aborted(writer)
    assert exe.node.told == []  # not a crash: the peer goes on
    assert exe.actor.saves == 0
    # The next one is saved normally.
    again = writer_for(exe, index=8)
    exe.harness.send(SaveSnapshot(again, writing(again, b"ok")))
    assert [m.meta.last_index for m in exe.lm.take(SnapshotSaved)] == [8]


def test_a_save_older_than_the_latest_snapshot_is_dropped_quietly() -> None:
    exe = Exe()
    newer = writer_for(exe, index=9)
    exe.harness.send(SaveSnapshot(newer, None))
    exe.lm.clear()
    exe.fsm.clear()
    older = writer_for(exe, index=8)  # e.g. a slow save finishing after an install of 9
    exe.harness.send(SaveSnapshot(older, None))
    [done] = exe.fsm.take()
    assert isinstance(done, SnapshotDone) and isinstance(done.error, StaleSnapshotError)
    assert exe.lm.told == []
    latest = exe.snapshots.latest()
    assert latest is not None and latest.last_index == 9


def test_snapshot_tick_rearms_and_asks_for_a_snapshot_if_anything_changed() -> None:
    exe = Exe(snapshot_interval=30.0)
    exe.harness.advance(29.9)
    assert exe.fsm.told == []
    exe.harness.advance(0.1)
    assert exe.fsm.take() == [TakeSnapshot(if_changed=True)]
    exe.harness.advance(30.0)  # re-armed: once per interval
    assert exe.fsm.take() == [TakeSnapshot(if_changed=True)]
    exe.harness.stop()
    exe.harness.advance(90.0)
    assert exe.fsm.told == []


def test_no_tick_when_the_interval_is_off() -> None:
    exe = Exe(snapshot_interval=0.0)
    assert exe.clock.pending() == 0
    exe.harness.advance(1000.0)
    assert exe.fsm.told == []


def test_a_stale_snapshot_tick_is_ignored() -> None:
    exe = Exe(snapshot_interval=30.0)
    exe.harness.send(SnapshotTick(0))  # not the live generation
    assert exe.fsm.told == []


# -- installing: the chunk stream ----------------------------------------------------------------


def test_chunks_in_order_are_answered_with_the_bytes_held() -> None:
    exe = Exe()
    exe.install(chunk(0, 1), chunk(256, 2), chunk(512, 3))
    assert exe.answers() == [(1, True, 256, False), (2, True, 512, False), (3, True, 768, False)]
    assert str(exe.actor) == "receiving 10 (768 bytes) saves=0 installs=0"
    assert exe.snapshots.latest() is None  # nothing committed before the final chunk


def test_an_answer_names_the_snapshot_and_goes_to_the_leader_in_our_term() -> None:
    exe = Exe()
    exe.install(chunk(0, 4, term=TERM), node_term=TERM)
    assert exe.transport.take() == [
        (LEADER, InstallSnapshotResponse(TERM, True, ME, 4, TERM, INDEX, 256, False))
    ]


def test_a_gap_or_a_repeat_is_answered_with_the_bytes_held_and_nothing_is_written_twice() -> None:
    exe = Exe()
    exe.install(chunk(0, 1))
    exe.install(chunk(512, 3))  # chunk 256 was lost: a gap
    exe.install(chunk(0, 4))  # a duplicate of the first
    assert exe.answers() == [(1, True, 256, False), (3, True, 256, False), (4, True, 256, False)]
    assert exe.actor.download is not None and exe.actor.download.writer.bytes_written == 256
    exe.install(chunk(256, 5), chunk(512, 6), chunk(768, 7))
    assert exe.answers() == [(5, True, 512, False), (6, True, 768, False)]  # 7: loading first
    assert exe.stored() == DATA


def test_a_first_chunk_past_offset_zero_asks_for_the_start() -> None:
    exe = Exe()
    exe.install(chunk(512, 3))  # e.g. this follower restarted mid-transfer
    assert exe.answers() == [(3, True, 0, False)]
    assert exe.actor.download is None
    exe.install(chunk(0, 4))
    assert exe.answers() == [(4, True, 256, False)]


@pytest.mark.parametrize(
    "newer",
    [
        pytest.param(chunk(0, 9, index=12, data=DATA[::-1]), id="a newer snapshot"),
        pytest.param(chunk(0, 9, term=TERM + 1), id="the next term"),
        pytest.param(chunk(0, 9, leader=OTHER, term=TERM + 1), id="another leader"),
    ],
)
def test_a_chunk_of_another_stream_supersedes_the_download(newer: InstallSnapshotRequest) -> None:
    exe = Exe()
    exe.install(chunk(0, 1), chunk(256, 2))
    assert exe.actor.download is not None
    old_writer = exe.actor.download.writer
    exe.transport.take()
    exe.install(newer, node_term=newer.term)
    assert is_aborted(old_writer)  # the old download's temporary data is gone
    assert exe.transport.take() == [
        (
            newer.leader_id,
            InstallSnapshotResponse(
                newer.term, True, ME, 9, newer.term, newer.last_included_index, 256, False
            ),
        )
    ]
    assert exe.actor.download is not None
    assert exe.actor.download.request == newer
    assert exe.actor.download.writer.bytes_written == 256


def test_final_chunk_commits_installs_the_log_and_answers_only_once_loaded() -> None:
    exe = Exe()
    exe.install(chunk(0, 1), chunk(256, 2), chunk(512, 3))
    exe.answers()
    exe.harness.advance(0.25)
    exe.install(chunk(768, 4))
    meta = meta_of()
    assert exe.snapshots.latest() == meta
    assert exe.stored() == DATA
    assert exe.lm.take() == [InstallLog(meta)]
    assert exe.answers() == []  # not before the log and the state machine are at it
    assert str(exe.actor) == "installing 10 saves=0 installs=0"
    exe.harness.send(SnapshotLoaded(meta))
    assert exe.answers() == [(4, True, 1024, True)]
    assert str(exe.actor) == "idle saves=0 installs=1"
    assert exe.fsm.told == [] and exe.node.told == []
    assert exe.metrics.snapshots.value("install", "ok") == 1
    timed = exe.metrics.snapshot_seconds.sample("install")  # from the first chunk to loaded
    assert (timed.count, timed.sum) == (1, 0.25)


def test_the_final_answer_carries_the_seq_of_the_latest_final_chunk() -> None:
    exe = Exe()
    exe.install(chunk(0, 1), chunk(256, 2), chunk(512, 3), chunk(768, 4))
    exe.answers()
    # Loading takes a while: the leader times out and resends from what was acked.
    exe.install(chunk(512, 7), chunk(768, 8))
    assert exe.answers() == []
    assert exe.lm.take() == [InstallLog(meta_of())]  # one install, not two
    exe.harness.send(SnapshotLoaded(meta_of()))
    assert exe.answers() == [(8, True, 1024, True)]


def test_snapshot_loaded_of_another_snapshot_is_not_an_answer() -> None:
    exe = Exe()
    exe.install(chunk(0, 1), chunk(256, 2), chunk(512, 3), chunk(768, 4))
    exe.answers()
    exe.harness.send(SnapshotLoaded(SnapshotMeta(9, 2, CONF)))
    assert exe.answers() == []
    exe.harness.send(SnapshotLoaded(meta_of(), error="on_snapshot_load raised"))
    assert exe.answers() == [(4, False, 1024, True)]  # failed to load: not installed
    assert exe.actor.installs == 0
    assert exe.metrics.snapshots.value("install", "failed") == 1
    assert exe.metrics.snapshot_seconds.sample("install").count == 0


def test_another_stream_during_the_install_is_refused() -> None:
    exe = Exe()
    exe.install(chunk(0, 1), chunk(256, 2), chunk(512, 3), chunk(768, 4))
    exe.answers()
    exe.install(chunk(0, 5, index=12, data=DATA[::-1]))
    assert exe.answers() == [(5, False, 0, False)]  # one install at a time; the leader retries
    exe.harness.send(SnapshotLoaded(meta_of()))
    assert exe.answers() == [(4, True, 1024, True)]


def test_a_checksum_mismatch_is_refused_and_nothing_is_committed() -> None:
    exe = Exe()
    bad = zlib.crc32(DATA) ^ 1
    exe.install(*(chunk(off, n, checksum=bad) for n, off in enumerate(range(0, 1024, 256), 1)))
    assert exe.answers() == [
        (1, True, 256, False),
        (2, True, 512, False),
        (3, True, 768, False),
        (4, False, 0, False),
    ]
    assert exe.snapshots.latest() is None
    assert exe.lm.told == []
    assert exe.actor.download is None
    assert exe.metrics.snapshots.value("install", "failed") == 1
    # The leader starts again, with the right checksum this time.
    exe.install(chunk(0, 5))
    assert exe.answers() == [(5, True, 256, False)]


@pytest.mark.parametrize("index", [INDEX, INDEX - 3])
def test_a_snapshot_already_covered_is_answered_installed_at_once(index: int) -> None:
    exe = Exe(committed=INDEX)  # this follower's log is committed up to 10 already
    exe.install(chunk(512, 3, index=index))
    assert exe.answers() == [(3, True, 1024, True)]
    assert exe.snapshots.latest() is None and exe.lm.told == []
    assert exe.actor.download is None


def test_a_newer_local_snapshot_committed_first_makes_the_install_moot() -> None:
    exe = Exe()
    exe.install(chunk(0, 1), chunk(256, 2), chunk(512, 3))
    exe.answers()
    local = writer_for(exe, index=INDEX + 1)  # applied and saved 11 meanwhile
    exe.harness.send(SaveSnapshot(local, None))
    exe.lm.clear()
    exe.install(chunk(768, 4))
    assert exe.answers() == [(4, True, 1024, True)]
    assert exe.lm.told == []  # no InstallLog of the older snapshot
    latest = exe.snapshots.latest()
    assert latest is not None and latest.last_index == INDEX + 1


@pytest.mark.parametrize(
    "conf",
    [
        pytest.param(b"\xc1", id="not msgpack"),
        pytest.param(msgpack.packb([["a:1"]]), id="one member set"),
        pytest.param(msgpack.packb(7), id="not a list"),
    ],
)
def test_a_snapshot_with_a_bad_conf_is_refused_and_counted(conf: bytes) -> None:
    exe = Exe()
    exe.install(chunk(0, 1, conf=conf))
    assert exe.answers() == [(1, False, 0, False)]
    assert exe.refused() == {"snapshot_with_bad_conf": 1}
    assert exe.actor.download is None


@pytest.mark.parametrize(
    "conf",
    [
        pytest.param(msgpack.packb("ab"), id="a two-character string"),
        pytest.param(msgpack.packb([[1, 2], []]), id="peers that are not strings"),
    ],
)
def test_a_conf_that_is_no_configuration_is_refused(conf: bytes) -> None:
    exe = Exe()
    exe.install(chunk(0, 1, conf=conf))
    assert exe.answers() == [(1, False, 0, False)]
    assert exe.refused() == {"snapshot_with_bad_conf": 1}


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"last_included_term": 0}, id="snapshot term 0"),
        pytest.param({"checksum": 2**32}, id="checksum beyond u32"),
    ],
)
def test_a_chunk_with_an_impossible_meta_is_refused_not_a_crash(fields: dict[str, int]) -> None:
    exe = Exe()
    exe.install(dataclasses.replace(chunk(0, 1), **fields))  # type: ignore[arg-type]
    assert exe.node.told == [] and not exe.actor.crashed
    assert exe.answers() == [(1, False, 0, False)]
    assert sum(exe.refused().values()) == 1
    assert exe.actor.download is None


def test_a_chunk_beyond_the_size_is_refused_and_the_download_dropped() -> None:
    exe = Exe()
    exe.install(chunk(0, 1), chunk(256, 2))
    assert exe.actor.download is not None
    writer = exe.actor.download.writer
    exe.answers()
    too_long = InstallSnapshotRequest(
        TERM, LEADER, INDEX, SNAP_TERM, CONF, 1024, zlib.crc32(DATA), 512, b"y" * 600, False, 3
    )
    exe.install(too_long)
    assert exe.answers() == [(3, False, 0, False)]
    assert exe.refused() == {"snapshot_chunk_out_of_range": 1}
    assert exe.metrics.snapshots.value("install", "failed") == 1
    assert is_aborted(writer) and exe.actor.download is None
    assert exe.snapshots.latest() is None


def test_a_final_chunk_that_ends_short_of_the_size_is_refused() -> None:
    exe = Exe()
    exe.install(chunk(0, 1))
    exe.answers()
    short = InstallSnapshotRequest(
        TERM, LEADER, INDEX, SNAP_TERM, CONF, 1024, zlib.crc32(DATA), 256, DATA[256:512], True, 2
    )
    exe.install(short)
    assert exe.answers() == [(2, False, 0, False)]
    assert exe.refused() == {"snapshot_chunk_out_of_range": 1}
    assert exe.snapshots.latest() is None and exe.lm.told == []


def test_an_empty_snapshot_is_one_final_chunk() -> None:
    exe = Exe()
    exe.install(chunk(0, 1, data=b""))
    meta = meta_of(b"")
    assert exe.lm.take() == [InstallLog(meta)]
    exe.harness.send(SnapshotLoaded(meta))
    assert exe.answers() == [(1, True, 0, True)]


def test_stop_aborts_the_download_in_progress() -> None:
    exe = Exe()
    exe.install(chunk(0, 1))
    assert exe.actor.download is not None
    writer = exe.actor.download.writer
    exe.harness.stop()
    assert is_aborted(writer)


def test_in_error_nothing_is_installed_or_saved() -> None:
    exe = Exe(snapshot_interval=30.0)
    exe.install(chunk(0, 1))
    assert exe.actor.download is not None
    download = exe.actor.download.writer
    exe.answers()
    exe.actor.enter_error("the peer is in ERROR")  # a crash here, or the Node's EnterError
    assert is_aborted(download)
    exe.install(chunk(256, 2))
    assert exe.answers() == []
    writer = writer_for(exe)
    exe.harness.send(SaveSnapshot(writer, None))
    [done] = exe.fsm.take()
    assert isinstance(done, SnapshotDone) and isinstance(done.error, StorageError)
    assert exe.snapshots.latest() is None and exe.lm.told == [] and is_aborted(writer)
    exe.harness.advance(60.0)  # no more ticks either
    assert exe.fsm.told == []
