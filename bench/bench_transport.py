"""Transport benchmark (a script, not a test): python bench/bench_transport.py [--quick]

Runs a responder in a second OS process and measures, from this process:

  (a) bare pyzmq DEALER -> ROUTER echo round trip of raw bytes (the floor);
  (b) ZmqTransport AppendEntriesRequest -> AppendEntriesResponse round trip through the full
      path (encode, queue + wake-up, DEALER, ROUTER, decode + validate, deliver, and back):
      b1 driven from an application thread (as an actor would: send, then wait for the reply
         that deliver hands over through a queue), b2 driven from deliver on the I/O thread;
      each for a heartbeat (no entries) and for 64 entries of 100 bytes, against (a) with raw
      frames of the same sizes;
  (c) pipelined throughput: AppendEntriesRequests of 64 x 100-byte entries, a window of 256 in
      flight, responses counted: c1 sent from an application thread, c2 from deliver;
  (t) for reference, a round trip between two threads of this process through queues: the
      price of the two thread wake-ups (b1) pays on top of (b2) on this machine.

Also times the codec alone. Prints a table. Targets: (b) within 1.5x of (a); (c) >= 20,000/s.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import resource
import statistics
import sys
import threading
import time
import timeit
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import zmq

from storage.entry import EntryType, LogEntry
from transport.codec import decode, encode
from transport.rpc import AppendEntriesRequest, AppendEntriesResponse, RpcMessage
from transport.zmq_transport import ZmqTransport

REQUESTER = "requester"
RESPONDER = "responder"
DEADLINE = 120.0


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_request(seq: int, entries: tuple[LogEntry, ...]) -> AppendEntriesRequest:
    prev = entries[0].index - 1 if entries else 1000
    return AppendEntriesRequest(3, REQUESTER, prev, 3, entries, prev, seq)


def make_entries(count: int, size: int = 100) -> tuple[LogEntry, ...]:
    return tuple(LogEntry(1001 + i, 3, EntryType.DATA, os.urandom(size)) for i in range(count))


# ---- the responder process --------------------------------------------------------------------


def raw_responder(conn: Connection) -> None:
    """Child process: a bare ROUTER echoing every message until it gets b"stop"."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    try:
        router.bind("tcp://127.0.0.1:0")
        conn.send(router.getsockopt_string(zmq.LAST_ENDPOINT))
        while True:
            parts = router.recv_multipart()
            if parts[1] == b"stop":
                break
            router.send_multipart(parts)
    finally:
        router.close(linger=0)
        context.term()


def transport_responder(conn: Connection) -> None:
    """Child process: a ZmqTransport answering every AppendEntriesRequest from deliver (on its
    I/O thread), until the parent says stop through the pipe."""
    transport = ZmqTransport(RESPONDER, "tcp://127.0.0.1:0")

    def deliver(message: RpcMessage) -> None:
        assert isinstance(message, AppendEntriesRequest)
        last = message.prev_log_index + len(message.entries)
        transport.send(
            message.leader_id,
            AppendEntriesResponse(message.term, True, last, RESPONDER, message.seq, message.term),
        )

    transport.start(deliver)
    try:
        conn.send(transport.bound_endpoint)
        transport.add_peer(REQUESTER, conn.recv())
        while conn.recv() != "stop":  # "cpu": report CPU seconds used so far
            conn.send(cpu_seconds())
    finally:
        transport.stop()


class Responder:
    """Runs a responder function in a spawned process; a context manager that always ends it."""

    def __init__(self, target: Callable[[Connection], None]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(child_conn,), daemon=True)

    def __enter__(self) -> Responder:
        self.process.start()
        if not self.conn.poll(30):
            raise RuntimeError("responder did not start")
        self.endpoint: str = self.conn.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.process.is_alive():
                self.conn.send("stop")
        except OSError:
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


# ---- measurements -----------------------------------------------------------------------------


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    """(p50, p99, mean) in microseconds."""
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50 * 1e6, p99 * 1e6, statistics.fmean(samples) * 1e6


def bench_raw(payload_size: int, count: int) -> tuple[float, float, float]:
    """(a): bare DEALER/ROUTER echo of `payload_size` raw bytes."""
    payload = os.urandom(payload_size)
    with Responder(raw_responder) as responder:
        context = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        try:
            dealer.connect(responder.endpoint)
            for _ in range(200):  # warm up (also waits for the connection)
                dealer.send(payload)
                dealer.recv()
            samples = []
            clock = time.perf_counter
            for _ in range(count):
                start = clock()
                dealer.send(payload)
                dealer.recv()
                samples.append(clock() - start)
            dealer.send(b"stop")
        finally:
            dealer.close(linger=0)
            context.term()
    return percentiles(samples)


def connect_pair(transport: ZmqTransport, responses: queue.SimpleQueue[Any]) -> None:
    """Send probes until the responder answers (connections are up both ways)."""
    deadline = time.monotonic() + 30
    probe = make_request(0, ())
    while time.monotonic() < deadline:
        transport.send(RESPONDER, probe)
        try:
            responses.get(timeout=0.05)
            break
        except queue.Empty:
            continue
    else:
        raise RuntimeError("responder never answered")
    while not responses.empty():
        responses.get()


def bench_transport_app_thread(entries: tuple[LogEntry, ...], count: int) -> Any:
    """(b1): send from this thread, wait for the response delivered through a queue."""
    responses: queue.SimpleQueue[Any] = queue.SimpleQueue()
    with Responder(transport_responder) as responder:
        transport = ZmqTransport(REQUESTER, "tcp://127.0.0.1:0")
        transport.start(responses.put)
        try:
            responder.conn.send(transport.bound_endpoint)
            transport.add_peer(RESPONDER, responder.endpoint)
            connect_pair(transport, responses)
            requests = [make_request(seq, entries) for seq in range(1, count + 201)]
            for request in requests[:200]:
                transport.send(RESPONDER, request)
                responses.get(timeout=DEADLINE)
            samples = []
            clock = time.perf_counter
            for request in requests[200:]:
                start = clock()
                transport.send(RESPONDER, request)
                responses.get(timeout=DEADLINE)
                samples.append(clock() - start)
        finally:
            transport.stop()
    return percentiles(samples)


def bench_transport_io_thread(entries: tuple[LogEntry, ...], count: int) -> Any:
    """(b2): deliver (on the I/O thread) records the round trip and sends the next request."""
    responses: queue.SimpleQueue[Any] = queue.SimpleQueue()
    samples: list[float] = []
    done = threading.Event()
    clock = time.perf_counter
    warmup = 200
    state = {"sent_at": 0.0, "seq": 0, "active": False}
    requests = [make_request(seq, entries) for seq in range(1, count + warmup + 2)]

    def deliver(message: RpcMessage) -> None:
        if not state["active"]:
            responses.put(message)
            return
        now = clock()
        seq = int(state["seq"])
        if seq > warmup:
            samples.append(now - state["sent_at"])
        if seq >= count + warmup:
            done.set()
            return
        state["seq"] = seq + 1
        state["sent_at"] = clock()
        transport.send(RESPONDER, requests[seq])

    with Responder(transport_responder) as responder:
        transport = ZmqTransport(REQUESTER, "tcp://127.0.0.1:0")
        transport.start(deliver)
        try:
            responder.conn.send(transport.bound_endpoint)
            transport.add_peer(RESPONDER, responder.endpoint)
            connect_pair(transport, responses)
            state["active"] = True
            state["seq"] = 1
            state["sent_at"] = clock()
            transport.send(RESPONDER, requests[0])
            if not done.wait(DEADLINE):
                raise RuntimeError("ping-pong stalled (a frame was dropped?)")
        finally:
            transport.stop()
    return percentiles(samples)


def bench_throughput(
    entries_count: int, total: int, window: int, from_io_thread: bool
) -> tuple[float, float, float, Any]:
    """(c): `total` AppendEntriesRequests with up to `window` in flight. Sent from this thread
    (c1: an actor's view; a semaphore refilled by deliver keeps the window), or (c2) from
    deliver on the I/O thread, one new request per response. Returns (requests/s, requester
    CPU us/request, responder CPU us/request, requester stats)."""
    entries = make_entries(entries_count)
    responses: queue.SimpleQueue[Any] = queue.SimpleQueue()
    slots = threading.Semaphore(window)
    counts = {"received": 0, "sent": 0}
    done = threading.Event()
    active = [False]

    def deliver(message: RpcMessage) -> None:
        if not active[0]:
            responses.put(message)
            return
        counts["received"] += 1
        if from_io_thread:
            if counts["sent"] < total:
                counts["sent"] += 1
                transport.send(RESPONDER, make_request(counts["sent"], entries))
        else:
            slots.release()
        if counts["received"] >= total:
            done.set()

    with Responder(transport_responder) as responder:
        transport = ZmqTransport(REQUESTER, "tcp://127.0.0.1:0")
        transport.start(deliver)
        try:
            responder.conn.send(transport.bound_endpoint)
            transport.add_peer(RESPONDER, responder.endpoint)
            connect_pair(transport, responses)
            active[0] = True
            responder.conn.send("cpu")
            responder_cpu = -responder.conn.recv()
            requester_cpu = -cpu_seconds()
            start = time.perf_counter()
            if from_io_thread:
                for _ in range(window):  # deliver keeps the window full from now on
                    counts["sent"] += 1
                    transport.send(RESPONDER, make_request(counts["sent"], entries))
            else:
                for seq in range(1, total + 1):
                    if not slots.acquire(timeout=DEADLINE):
                        raise RuntimeError("window never reopened (frames dropped?)")
                    transport.send(RESPONDER, make_request(seq, entries))
            if not done.wait(DEADLINE):
                raise RuntimeError("responses missing (frames dropped?)")
            elapsed = time.perf_counter() - start
            requester_cpu += cpu_seconds()
            responder.conn.send("cpu")
            responder_cpu += responder.conn.recv()
            stats = transport.stats
        finally:
            transport.stop()
    return total / elapsed, requester_cpu / total * 1e6, responder_cpu / total * 1e6, stats


def bench_thread_handoff(count: int) -> tuple[float, float, float]:
    """Reference: a round trip between two Python threads through queues - the cost of the two
    thread wake-ups that (b1) pays on top of (b2), on this machine."""
    there: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    back: queue.SimpleQueue[int] = queue.SimpleQueue()

    def echo() -> None:
        while (item := there.get()) is not None:
            back.put(item)

    thread = threading.Thread(target=echo)
    thread.start()
    samples = []
    clock = time.perf_counter
    try:
        for number in range(count + 200):
            start = clock()
            there.put(number)
            back.get()
            if number >= 200:
                samples.append(clock() - start)
    finally:
        there.put(None)
        thread.join()
    return percentiles(samples)


def bench_codec() -> list[tuple[str, float]]:
    entries = make_entries(64)
    request = make_request(7, entries)
    heartbeat = make_request(7, ())
    response = AppendEntriesResponse(3, True, 1064, RESPONDER, 7, 3)
    frames = {id(m): encode(m) for m in (request, heartbeat, response)}
    results = []
    for name, message in (
        ("AppendEntriesRequest 64x100B", request),
        ("AppendEntriesRequest heartbeat", heartbeat),
        ("AppendEntriesResponse", response),
    ):
        frame = frames[id(message)]
        for verb, fn in (
            ("encode", lambda m=message: encode(m)),
            ("decode", lambda f=frame: decode(f)),
        ):
            number = 5000
            best = min(timeit.repeat(fn, number=number, repeat=5)) / number
            results.append((f"{verb} {name} ({len(frame)} B)", best * 1e6))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--count", type=int, default=5000, help="round trips per latency run")
    parser.add_argument("--total", type=int, default=50000, help="requests in the throughput run")
    parser.add_argument("--window", type=int, default=256)
    args = parser.parse_args()
    count = 1000 if args.quick else args.count
    total = 10000 if args.quick else args.total

    print(
        f"pid {os.getpid()}, {os.cpu_count()} CPUs, pyzmq {zmq.__version__}, "
        f"libzmq {zmq.zmq_version()}, Python {sys.version.split()[0]}"
    )
    print("\ncodec (best of 5, single thread)")
    for name, micros in bench_codec():
        print(f"  {name:<52} {micros:8.2f} us")

    heartbeat_size = len(encode(make_request(1, ())))
    big_entries = make_entries(64)
    big_size = len(encode(make_request(1, big_entries)))

    print(f"\nround trips ({count} each; p50 / p99 / mean in microseconds)")
    raw_small = bench_raw(heartbeat_size, count)
    raw_big = bench_raw(big_size, count)
    rows: list[tuple[str, tuple[float, float, float], float | None]] = [
        (f"(a)  raw echo {heartbeat_size} B", raw_small, raw_small[0]),
        (
            "(b1) transport heartbeat, app thread",
            bench_transport_app_thread((), count),
            raw_small[0],
        ),
        (
            "(b2) transport heartbeat, I/O thread",
            bench_transport_io_thread((), count),
            raw_small[0],
        ),
        (f"(a)  raw echo {big_size} B", raw_big, raw_big[0]),
        (
            "(b1) transport 64x100B, app thread",
            bench_transport_app_thread(big_entries, count),
            raw_big[0],
        ),
        (
            "(b2) transport 64x100B, I/O thread",
            bench_transport_io_thread(big_entries, count),
            raw_big[0],
        ),
        ("(t)  thread hand-off round trip (ref.)", bench_thread_handoff(count), None),
    ]
    print(f"  {'':<40} {'p50':>8} {'p99':>8} {'mean':>8}  {'p50 vs (a)':>10}")
    for name, (p50, p99, mean), base in rows:
        ratio = f"{p50 / base:9.2f}x" if base else ""
        print(f"  {name:<40} {p50:8.1f} {p99:8.1f} {mean:8.1f}  {ratio}")

    print(f"\nthroughput ({total} AppendEntriesRequests of 64 x 100 B, window {args.window})")
    for label, from_io_thread in (("(c1) from an app thread", False), ("(c2) from deliver", True)):
        rate, requester_cpu, responder_cpu, stats = bench_throughput(
            64, total, args.window, from_io_thread
        )
        print(f"  {label:<24} {rate:>9,.0f} requests/s ({rate * 64:>10,.0f} entries/s); ", end="")
        print(f"CPU/request: requester {requester_cpu:.1f} us, responder {responder_cpu:.1f} us")
        if stats.dropped_sends > 1:  # the one probe sent before the connection was up
            print(f"       requester {stats}")


if __name__ == "__main__":
    main()
