"""The clients of a chaos run: random operations on a few keys, every one recorded."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from actors.read_only import LEASE, LINEARIZABLE
from tests.chaos.config import ChaosConfig
from tests.chaos.constants import OP_WEIGHTS
from tests.chaos.linearizability import (
    CAS,
    DELETE,
    GET,
    PUT,
    Operation,
    Outcome,
)
from tests.chaos.timeline import Failure
from transport.client import ClientTimeout, CommandError, KVClient


class Worker(threading.Thread):
    """One client: a single KVClient (one exactly-once session) for the whole run, issuing one
    operation at a time. Invariant: `history` holds every operation it invoked except definite
    failures (which are in `failures`), with `client` = this worker's index, in invocation
    order. Its gets are ReadIndex or (a `lease_reads` share) lease reads; an odd-numbered
    worker reads from any peer (follower reads), an even one from the leader."""

    def __init__(
        self, index: int, peers: Sequence[str], config: ChaosConfig, stop: threading.Event
    ) -> None:
        super().__init__(name=f"chaos-client-{index}", daemon=True)
        self.index = index
        self.peers = list(peers)
        self.config = config
        self.stop_event = stop
        self.rng = random.Random(f"{config.seed}/client/{index}")
        self.keys = [f"key{n}" for n in range(config.keys)]
        self.history: list[Operation] = []
        self.failures: list[Failure] = []
        self.read_from = "any" if index % 2 else "leader"
        self.errors: Counter[str] = Counter()
        self.error: BaseException | None = None  # what ended the thread, if not the stop event

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as error:  # reported by the runner after join
            self.error = error

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"{self.name} failed: {self.error!r}") from self.error

    def _loop(self) -> None:
        seen: dict[str, str | None] = {}  # the last value this client saw per key: cas bait
        ops, weights = list(OP_WEIGHTS), list(OP_WEIGHTS.values())
        with KVClient(
            self.peers,
            timeout=self.config.client_timeout,
            attempt_timeout=0.5,
            read_from=self.read_from,
            sync_interval=1.0,  # a client idle through a membership change still finds it
        ) as client:
            n = 0
            while not self.stop_event.is_set():
                n += 1
                key = self.rng.choice(self.keys)
                op = self.rng.choices(ops, weights)[0]
                value = f"c{self.index}-{n}"  # unique in the whole run
                args: tuple[str | None, ...]
                if op == PUT:
                    args = (value,)
                elif op == CAS:
                    expected = seen.get(key) if self.rng.random() < 0.7 else None
                    args = (expected, value)
                else:
                    args = ()
                self._one(client, op, key, args, seen)

    def _one(
        self,
        client: KVClient,
        op: str,
        key: str,
        args: tuple[str | None, ...],
        seen: dict[str, str | None],
    ) -> None:
        invoke = time.monotonic()
        try:
            if op == PUT:
                assert args[0] is not None
                client.put(key, args[0])
                result: Any = None
                seen[key] = args[0]
            elif op == GET:
                lease = self.rng.random() < self.config.lease_reads
                result = seen[key] = client.get(key, consistency=LEASE if lease else LINEARIZABLE)
            elif op == DELETE:
                result = client.delete(key)
                seen[key] = None
            else:
                assert args[1] is not None
                result = client.cas(key, args[0], args[1])
                if result:
                    seen[key] = args[1]
        except CommandError:
            # Definite: it had no effect, so it is not part of the history.
            self.failures.append(Failure(invoke, time.monotonic()))
            return
        except Exception as error:  # ClientTimeout, or anything unforeseen: outcome unknown
            if not isinstance(error, ClientTimeout):
                self.errors[type(error).__name__] += 1
            self.history.append(
                Operation(self.index, op, key, args, invoke, None, None, Outcome.UNKNOWN)
            )
            return
        self.history.append(Operation(self.index, op, key, args, invoke, time.monotonic(), result))
