"""In-process transport with injectable network faults, for tests: nothing leaves the process.

An application's tests get it ready-made as `actors.testkit.InMemoryCluster` (docs/TESTING.md).

A `MemoryNetwork` is a hub; `network.endpoint(peer_id)` returns a `MemoryTransport` that
implements the `transport.base.Transport` protocol, so the same actors that run over ZeroMQ in
production run over it in in-process cluster tests and in the deterministic simulator.

Faults, all changeable at run time from the test: drop probability, duplicate probability,
delay (fixed, or uniformly random in a range - which reorders messages), symmetric partitions
(`partition`), one-way cuts (`cut`), isolating one peer (`isolate`) and `heal`.

Determinism: every random decision comes from the one injected `random.Random`, taken in `send`
call order under the network's lock, and delays are scheduled on the injected clock; so a test
driving the network from one thread (as the simulator does) is reproducible from its seed.

Semantics, chosen to mirror the ZeroMQ transport and to be simple:
- faults (link state, drop, duplicate, delay) are decided when a message is sent;
- a message is delivered only if its destination endpoint is running when it arrives (messages
  to an endpoint that is stopped, not yet started or never created are dropped and counted);
- with no delay configured, delivery is synchronous: `deliver` runs on the sender's thread
  inside `send` (typically `deliver` is an ActorRef.tell, so that is cheap and safe);
- with a delay, delivery runs wherever the clock runs its callbacks.

Unlike production, programming errors are loud here: `send` raises EncodeError when the
message would not survive the real codec (with `encode=True` every message is encoded and
decoded, catching non-serialisable or mistyped fields) and ValueError when the message's
`sender` is not the sending endpoint (the ZeroMQ transport's receiver drops such frames as
spoofed).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from transport import codec
from transport.base import Deliver, Drained, Failure
from transport.errors import DecodeError, EncodeError
from transport.rpc import RpcMessage

__all__ = ["Cancellable", "MemoryNetwork", "MemoryTransport", "NetworkStats", "Scheduler"]


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """What the network needs from a clock to delay messages (actors.clock provides one)."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable: ...


@dataclass(frozen=True, slots=True)
class NetworkStats:
    """Counters of a MemoryNetwork. Every sent message ends up counted exactly once in
    `delivered` or `dropped`, or is still `in_flight` (delayed); a duplicate counts as an extra
    message sent (in `duplicated`) with its own fate."""

    sent: int
    delivered: int
    dropped: int
    duplicated: int
    in_flight: int


class MemoryTransport:
    """One peer's (or client's) endpoint on a MemoryNetwork. FOR TESTS ONLY.

    Thread-safe: `send` may be called from any thread; `start`/`stop` from the test.
    """

    def __init__(self, network: MemoryNetwork, local_id: str) -> None:
        self._network = network
        self._local_id = local_id
        self._deliver: Deliver | None = None
        self._on_drained: Drained | None = None
        self._stopped = False

    @property
    def local_id(self) -> str:
        return self._local_id

    @property
    def running(self) -> bool:
        """True between start() and stop(): only then are messages delivered to it."""
        return self._deliver is not None and not self._stopped

    @property
    def max_frame_size(self) -> int:
        return codec.DEFAULT_MAX_FRAME_SIZE

    def start(
        self, deliver: Deliver, on_failure: Failure | None = None, on_drained: Drained | None = None
    ) -> None:
        """Begin receiving: every message that arrives from now on goes to `deliver`, each
        followed by `on_drained()` (a burst of one)."""
        if self._stopped:
            raise RuntimeError(f"endpoint {self._local_id} was stopped; create a new one")
        if self._deliver is not None:
            raise RuntimeError(f"endpoint {self._local_id} already started")
        self._deliver = deliver
        self._on_drained = on_drained

    def send(self, to: str, message: RpcMessage) -> None:
        """Route `message` to endpoint `to` through the network's faults. Never blocks; raises
        only for programming errors (see the module docstring)."""
        self._network._send(self, to, message)

    def ensure_peer(self, peer_id: str) -> None:
        """Nothing to do: the network reaches every endpoint by id."""

    def stop(self) -> None:
        """Stop receiving and sending (later messages to and from it are dropped). Idempotent."""
        self._stopped = True

    def _receiver(self) -> Deliver | None:
        """The deliver callable if this endpoint accepts messages now, else None."""
        if self._stopped or self._deliver is None:
            return None
        if self._on_drained is None:
            return self._deliver
        return self._deliver_one

    def _deliver_one(self, message: RpcMessage) -> None:
        assert self._deliver is not None and self._on_drained is not None
        self._deliver(message)
        self._on_drained()


class MemoryNetwork:
    """A hub of MemoryTransport endpoints with injectable faults. FOR TESTS ONLY.

    `rng` drives every random fault (default: random.Random(0), so even the default is
    deterministic). `encode=True` pushes every message through transport.codec. `clock` is only
    needed once a delay is set. Thread-safe; see the module docstring for the semantics.
    """

    def __init__(
        self,
        rng: random.Random | None = None,
        encode: bool = True,
        clock: Scheduler | None = None,
    ) -> None:
        self._rng = rng if rng is not None else random.Random(0)
        self._encode = encode
        self._clock = clock
        self._lock = threading.Lock()
        # All below guarded by _lock.
        self._endpoints: dict[str, MemoryTransport] = {}
        self._blocked: set[tuple[str, str]] = set()  # (src, dst) links that lose everything
        self._isolated: set[str] = set()
        self._drop_probability = 0.0
        self._duplicate_probability = 0.0
        self._delay = (0.0, 0.0)
        self._sent = 0
        self._delivered = 0
        self._dropped = 0
        self._duplicated = 0
        self._in_flight = 0

    # ---- endpoints --------------------------------------------------------------------------

    def endpoint(self, peer_id: str) -> MemoryTransport:
        """Create the endpoint of `peer_id`. A stopped endpoint may be replaced (a restarted
        peer); replacing a live one is an error."""
        with self._lock:
            old = self._endpoints.get(peer_id)
            if old is not None and not old._stopped:
                raise ValueError(f"endpoint {peer_id} exists and is not stopped")
            endpoint = MemoryTransport(self, peer_id)
            self._endpoints[peer_id] = endpoint
            return endpoint

    # ---- faults -----------------------------------------------------------------------------

    @property
    def drop_probability(self) -> float:
        return self._drop_probability

    @drop_probability.setter
    def drop_probability(self, value: float) -> None:
        self._drop_probability = _probability(value)

    @property
    def duplicate_probability(self) -> float:
        return self._duplicate_probability

    @duplicate_probability.setter
    def duplicate_probability(self, value: float) -> None:
        self._duplicate_probability = _probability(value)

    @property
    def delay(self) -> tuple[float, float]:
        """(minimum, maximum) delay in seconds of every message."""
        return self._delay

    def set_delay(self, minimum: float, maximum: float | None = None) -> None:
        """Delay every later message by `minimum` seconds, or by a uniformly random time in
        [minimum, maximum] (jitter, which reorders messages). (0, 0) restores immediate
        delivery. Needs the network's clock."""
        high = minimum if maximum is None else maximum
        if not 0 <= minimum <= high:
            raise ValueError(f"bad delay range ({minimum}, {maximum})")
        if high > 0 and self._clock is None:
            raise ValueError("delays need a clock: MemoryNetwork(clock=...)")
        with self._lock:
            self._delay = (float(minimum), float(high))

    def partition(self, group_a: Iterable[str], group_b: Iterable[str]) -> None:
        """Lose every message between the two groups, both ways (until heal())."""
        side_a, side_b = list(group_a), list(group_b)
        with self._lock:
            for a in side_a:
                for b in side_b:
                    self._blocked.add((a, b))
                    self._blocked.add((b, a))

    def cut(self, src: str, dst: str) -> None:
        """Lose every message from `src` to `dst` (one way only) until heal()."""
        with self._lock:
            self._blocked.add((src, dst))

    def isolate(self, peer: str) -> None:
        """Lose every message to or from `peer` until heal()."""
        with self._lock:
            self._isolated.add(peer)

    def heal(self) -> None:
        """Remove every partition, cut and isolation (drop/duplicate/delay settings stay)."""
        with self._lock:
            self._blocked.clear()
            self._isolated.clear()

    # ---- counters ---------------------------------------------------------------------------

    @property
    def stats(self) -> NetworkStats:
        with self._lock:
            return NetworkStats(
                self._sent, self._delivered, self._dropped, self._duplicated, self._in_flight
            )

    # ---- routing ----------------------------------------------------------------------------

    def _send(self, source: MemoryTransport, to: str, message: RpcMessage) -> None:
        """Runs on the sender's thread. Decides the message's fate under the lock, then
        delivers outside it (deliver may send again)."""
        if message.sender != source.local_id:
            raise ValueError(
                f"{type(message).__name__}.sender is {message.sender!r} but it is sent from "
                f"{source.local_id!r}: a real receiver drops it as spoofed"
            )
        if self._encode:
            frame = codec.encode(message)
            try:
                message = codec.decode(frame)
            except DecodeError as exc:
                raise EncodeError(f"a receiver would reject this message: {exc}") from exc
        with self._lock:
            self._sent += 1
            if (
                source._stopped
                or (source.local_id, to) in self._blocked
                or source.local_id in self._isolated
                or to in self._isolated
                or (self._drop_probability and self._rng.random() < self._drop_probability)
            ):
                self._dropped += 1
                return
            copies = 1
            if self._duplicate_probability and self._rng.random() < self._duplicate_probability:
                copies = 2
                self._sent += 1
                self._duplicated += 1
            low, high = self._delay
            delays = [self._rng.uniform(low, high) if high > low else low for _ in range(copies)]
            self._in_flight += copies
        for delay in delays:
            if delay > 0 and self._clock is not None:
                self._clock.call_later(delay, lambda: self._arrive(to, message))
            else:
                self._arrive(to, message)

    def _arrive(self, to: str, message: RpcMessage) -> None:
        """A message reaches `to` (now, or when its delay expires on the clock)."""
        with self._lock:
            self._in_flight -= 1
            endpoint = self._endpoints.get(to)
            deliver = endpoint._receiver() if endpoint is not None else None
            if deliver is None:
                self._dropped += 1
                return
            self._delivered += 1
        deliver(message)  # outside the lock: it may send


def _probability(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"a probability must be in [0, 1], got {value}")
    return float(value)
