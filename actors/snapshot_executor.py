"""SnapshotExecutor: the peer's snapshot storage and everything slow about snapshots.

SOFAJRaft's SnapshotExecutor, as an actor of its own so that neither applying (the FSMCaller)
nor the log (the LogManager) waits while a snapshot is written or received. It is the only
owner of the SnapshotStore's writes (docs/DESIGN.md, principle 2); others only open readers.

Saving (every peer):
- `SaveSnapshot` from the FSMCaller carries a writer the state machine has filled, or a
  `finish` function that fills it from a view the state machine captured: it runs here, off the
  apply path. Then the snapshot is committed (fsynced, renamed into place), the LogManager is
  told to compact the log before it (SnapshotSaved) and the FSMCaller that it is done.
- `SnapshotTick`, every `snapshot_interval` seconds: asks the FSMCaller for a snapshot if
  anything was applied since the last one.

Installing (a follower; SOFAJRaft's InstallSnapshot, streamed):
- The Node checks the leader and the term, then passes each chunk on (FollowerInstall). Chunks
  are written in order into one download; the answer says how many bytes are held
  (`next_offset`), so a lost or repeated chunk, or a leader that restarts its transfer, costs a
  rewind and never a wrong byte. A chunk of another snapshot, term or leader replaces the
  download (a newer snapshot supersedes one in progress). A snapshot this peer already covers
  (committed_index at or past it) is answered as installed at once.
- After the final chunk the download is verified against the leader's size and checksum and
  committed; then the LogManager makes the log continue it (InstallLog), the FSMCaller loads
  it, and only once it has (SnapshotLoaded) is the final chunk acknowledged to the leader.
  A crash anywhere in between leaves either the previous snapshot (the download is a temporary
  directory, deleted at start) or the new one, which the log is reconciled with at start.

Supervision: an unexpected exception is a crash (RaftActor), which puts the peer in ERROR. A
failed save only fails that snapshot (logged; the next one is tried later); a download that
fails verification is dropped and refused, and the leader starts again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from actors.base import RaftActor, handles
from actors.clock import Clock, TimerHandle
from actors.configuration import Configuration
from actors.log_view import LogView
from actors.mailbox import Mailbox
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
from actors.rejections import Rejections
from storage.base import SnapshotStore
from storage.errors import StaleSnapshotError, StorageError
from storage.snapshot_storage import SnapshotMeta, SnapshotWriter
from transport.base import Transport
from transport.rpc import InstallSnapshotRequest, InstallSnapshotResponse

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Download:
    """The leader's snapshot being received. `installing`: committed, waiting for the log and
    the state machine; `answer` is then the chunk to acknowledge once they are done."""

    request: InstallSnapshotRequest  # its first chunk: names the snapshot, term and leader
    writer: SnapshotWriter
    started_at: float  # the metrics clock when the first chunk arrived
    installing: bool = False
    answer: InstallSnapshotRequest | None = None
    node_term: int = 0

    def older_than(self, req: InstallSnapshotRequest) -> bool | None:
        """Whether this download is of an older snapshot than `req`'s, from the same leader in
        the same term; None when `req` comes from another leader or term (it supersedes)."""
        first = self.request
        if (req.term, req.leader_id) != (first.term, first.leader_id):
            return None
        return first.last_included_index < req.last_included_index

    def same_stream(self, req: InstallSnapshotRequest) -> bool:
        first = self.request
        return (
            req.last_included_index == first.last_included_index
            and req.last_included_term == first.last_included_term
            and req.term == first.term
            and req.leader_id == first.leader_id
            and req.size == first.size
            and req.checksum == first.checksum
        )


class SnapshotExecutor(RaftActor):
    def __init__(
        self,
        peer_id: str,
        snapshots: SnapshotStore,
        log_view: LogView,
        transport: Transport,
        node: Mailbox,
        log_manager: Mailbox,
        fsm_caller: Mailbox,
        clock: Clock,
        raft_options: RaftOptions,
        rejections: Rejections | None = None,
        metrics: RaftMetrics | None = None,
    ) -> None:
        super().__init__(supervisor=node)
        self.peer_id = peer_id
        self.snapshots = snapshots
        self.log_view = log_view
        self.transport = transport
        self.log_manager = log_manager
        self.fsm_caller = fsm_caller
        self.clock = clock
        self.raft_options = raft_options
        self.rejections = rejections or Rejections(peer_id)
        self.download: _Download | None = None
        self.saves = 0  # snapshots committed from this peer's own state
        self.installs = 0  # snapshots installed from a leader
        self._tick_gen = 0
        self._tick_timer: TimerHandle | None = None
        self._failed = False
        # This actor's own cells (actors/metrics.py): written on this thread only. Saves and
        # loads are counted by the FSMCaller, which starts and ends them.
        metrics = metrics or RaftMetrics()
        self._clock = metrics.clock
        self._installs = metrics.snapshots.cells(("install", "ok"), ("install", "failed"))
        self._install_seconds = metrics.snapshot_seconds.cell("install")

    def __str__(self) -> str:
        download = self.download
        state = "idle"
        if download is not None:
            received = download.writer.bytes_written
            state = f"receiving {download.request.last_included_index} ({received} bytes)"
            if download.installing:
                state = f"installing {download.request.last_included_index}"
        return f"{state} saves={self.saves} installs={self.installs}"

    def startup(self) -> None:
        self._arm_tick()

    def shutdown(self) -> None:
        self._tick_gen += 1
        if self._tick_timer is not None:
            self._tick_timer.cancel()
        self._drop_download()

    def enter_error(self, reason: str) -> None:
        self._failed = True
        self.shutdown()

    # -- saving ------------------------------------------------------------------------------

    def _arm_tick(self) -> None:
        interval = self.raft_options.snapshot_interval
        if interval > 0:
            self._tick_gen += 1
            self._tick_timer = self.tell_later(self.clock, interval, SnapshotTick(self._tick_gen))

    @handles(SnapshotTick)
    def on_snapshot_tick(self, msg: SnapshotTick) -> None:
        if msg.generation != self._tick_gen or self._failed:
            return
        self._arm_tick()
        self.fsm_caller.tell(TakeSnapshot(if_changed=True))

    @handles(SaveSnapshot)
    def on_save_snapshot(self, msg: SaveSnapshot) -> None:
        writer = msg.writer
        try:
            if self._failed:
                raise StorageError("the peer is in ERROR")
            if msg.finish is not None:
                msg.finish()
            meta = self.snapshots.commit(writer)
        except Exception as exc:
            if not isinstance(exc, StaleSnapshotError):
                log.exception("%s: snapshot %d not saved", self.peer_id, writer.meta.last_index)
            self.snapshots.abort(writer)
            self.fsm_caller.tell(SnapshotDone(writer.meta, exc))
            return
        self.saves += 1
        log.info("%s: saved snapshot %d (%d bytes)", self.peer_id, meta.last_index, meta.size)
        self.log_manager.tell(SnapshotSaved(meta))
        self.fsm_caller.tell(SnapshotDone(meta))

    # -- installing --------------------------------------------------------------------------

    @handles(FollowerInstall)
    def on_follower_install(self, msg: FollowerInstall) -> None:
        req, term = msg.request, msg.node_term
        if self._failed:
            return
        download = self.download
        if download is not None and download.installing and download.same_stream(req):
            if req.done:  # a resend of the final chunk: answer that one once loaded
                download.answer, download.node_term = req, term
            return
        if req.last_included_index <= self.log_view.committed_index:
            self._answer(req, term, True, req.size, done=True)  # covered already
            return
        if download is not None and not download.same_stream(req):
            if download.installing or download.older_than(req) is False:
                # One install at a time; and from the same leader in the same term, a chunk of
                # an older snapshot is a straggler of a transfer it gave up: the leader retries.
                self._answer(req, term, False, 0)
                return
            log.info("%s: snapshot download superseded by %s", self.peer_id, _name(req))
            self._drop_download()
            download = None
        if download is None:
            download = self._start_download(req, term)
            if download is None:
                return
        self._receive(download, req, term)

    def _start_download(self, req: InstallSnapshotRequest, term: int) -> _Download | None:
        if req.offset != 0:
            self._answer(req, term, True, 0)  # nothing held: from the start, please
            return None
        problem = _meta_problem(req)
        if problem is not None:
            self.rejections.refuse(problem[0], req.leader_id, problem[1])
            self._answer(req, term, False, 0)
            return None
        meta = SnapshotMeta(req.last_included_index, req.last_included_term, req.conf)
        writer = self.snapshots.create_writer(
            meta, expected_size=req.size, expected_checksum=req.checksum
        )
        log.info("%s: receiving %s from %s", self.peer_id, _name(req), req.leader_id)
        self.download = _Download(req, writer, self._clock())
        return self.download

    def _receive(self, download: _Download, req: InstallSnapshotRequest, term: int) -> None:
        writer = download.writer
        held = writer.bytes_written
        if req.offset != held:
            self._answer(req, term, True, held)  # a gap or a repeat: resume from what we hold
            return
        if held + len(req.data) > req.size or (req.done and held + len(req.data) != req.size):
            self.rejections.refuse("snapshot_chunk_out_of_range", req.leader_id)
            self._installs["install", "failed"].inc()
            self._drop_download()
            self._answer(req, term, False, 0)
            return
        writer.write(req.data)
        if not req.done:
            self._answer(req, term, True, writer.bytes_written)
            return
        try:
            meta = self.snapshots.commit(writer)
        except StaleSnapshotError:
            self.download = None  # a newer one is here already
            self._answer(req, term, True, req.size, done=True)
            return
        except StorageError as exc:  # e.g. the checksum does not match: start again
            log.error("%s: %s not installed: %s", self.peer_id, _name(req), exc)
            self._installs["install", "failed"].inc()
            self.snapshots.abort(writer)
            self.download = None
            self._answer(req, term, False, 0)
            return
        download.installing, download.answer, download.node_term = True, req, term
        self.log_manager.tell(InstallLog(meta))

    @handles(SnapshotLoaded)
    def on_snapshot_loaded(self, msg: SnapshotLoaded) -> None:
        download = self.download
        if download is None or not download.installing:
            return
        if msg.meta.last_index != download.request.last_included_index:
            return
        self.download = None
        answer = download.answer or download.request
        self._installs["install", "ok" if msg.error is None else "failed"].inc()
        if msg.error is None:
            self.installs += 1
            self._install_seconds.observe(self._clock() - download.started_at)
        self._answer(answer, download.node_term, msg.error is None, answer.size, done=True)

    def _answer(
        self,
        req: InstallSnapshotRequest,
        term: int,
        success: bool,
        next_offset: int,
        done: bool = False,
    ) -> None:
        self.transport.send(
            req.leader_id,
            InstallSnapshotResponse(
                term=term,
                success=success,
                peer_id=self.peer_id,
                seq=req.seq,
                req_term=req.term,
                last_included_index=req.last_included_index,
                next_offset=next_offset,
                done=done,
            ),
        )

    def _drop_download(self) -> None:
        download, self.download = self.download, None
        if download is not None and not download.installing:
            self.snapshots.abort(download.writer)


def _meta_problem(req: InstallSnapshotRequest) -> tuple[str, str] | None:
    """(reason, detail) when the snapshot a chunk describes is impossible (the codec has checked
    types and ranges; these are the snapshot's own rules)."""
    if not 1 <= req.last_included_term <= req.term or req.last_included_index < 1:
        where = f"{req.last_included_index}@{req.last_included_term} in term {req.term}"
        return "snapshot_with_bad_meta", where
    if req.checksum >= 1 << 32:
        return "snapshot_with_bad_meta", f"checksum {req.checksum} is not a crc32"
    try:
        Configuration.decode(req.conf)
    except ValueError as exc:
        return "snapshot_with_bad_conf", str(exc)
    return None


def _name(req: InstallSnapshotRequest) -> str:
    return f"snapshot {req.last_included_index}@{req.last_included_term} ({req.size} bytes)"
