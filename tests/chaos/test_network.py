"""The chaos network: the partition shapes (pure), and the namespaces and silent drops (root
only; skipped with the reason elsewhere)."""

from __future__ import annotations

import itertools
import random
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.chaos import network as net
from tests.chaos.network import Link, Network

SIZES = [3, 4, 5, 7]


def _reach(size: int, cut: frozenset[Link]) -> dict[int, set[int]]:
    """Whom each peer can talk to both ways (itself included)."""
    return {
        a: {b for b in range(size) if a == b or ((a, b) not in cut and (b, a) not in cut)}
        for a in range(size)
    }


@pytest.mark.parametrize("size", SIZES)
def test_isolate_cuts_one_peer_from_all_others_both_ways(size: int) -> None:
    cut = net.isolate(size, 1)
    assert cut == {(1, b) for b in range(size) if b != 1} | {(b, 1) for b in range(size) if b != 1}


@pytest.mark.parametrize(("size", "seed"), list(itertools.product(SIZES, range(20))))
def test_halves_leave_exactly_one_majority(size: int, seed: int) -> None:
    reach = _reach(size, net.halves(size, random.Random(seed)))
    groups = {frozenset(r) for r in reach.values()}
    assert len(groups) == 2 and frozenset().union(*groups) == set(range(size))
    assert sum(len(g) > size // 2 for g in groups) == 1


@pytest.mark.parametrize(("size", "seed"), list(itertools.product(SIZES, range(20))))
def test_bridge_joins_two_halves_through_one_peer(size: int, seed: int) -> None:
    reach = _reach(size, net.bridge(size, random.Random(seed)))
    bridges = [p for p, r in reach.items() if len(r) == size]
    assert len(bridges) == 1
    others = [frozenset(r - set(bridges)) for p, r in reach.items() if p not in bridges]
    halves = set(others)
    assert len(halves) == 2 and all(len(h) >= 1 for h in halves)
    assert not frozenset.intersection(*halves)


@pytest.mark.parametrize(("size", "seed"), list(itertools.product([3, 5, 7], range(20))))
def test_majorities_ring_gives_each_peer_a_different_majority(size: int, seed: int) -> None:
    reach = _reach(size, net.majorities_ring(size, random.Random(seed)))
    assert all(len(r) > size // 2 for r in reach.values())
    # Symmetric by construction; at 3 peers the middle peer sees all, the ends differ.
    assert len({frozenset(r) for r in reach.values()}) == size or size == 3
    assert any(len(r) < size for r in reach.values())


@pytest.mark.parametrize(("size", "seed"), list(itertools.product(SIZES, range(10))))
def test_one_way_drops_one_direction_only(size: int, seed: int) -> None:
    cut = net.one_way(size, 2, random.Random(seed))
    ((a, b),) = cut
    assert a == 2 and b != 2 and (b, a) not in cut


def test_between_cuts_every_link_across_groups_and_none_inside() -> None:
    cut = net.between([[0, 1], [2], [3, 4]])
    assert (0, 1) not in cut and (3, 4) not in cut
    assert {(0, 2), (2, 0), (1, 3), (4, 2)} <= cut
    assert len(cut) == 2 * (2 * 1 + 2 * 2 + 1 * 2)


# -- the real thing ----------------------------------------------------------------------------

REASON = net.unavailable()
needs_namespaces = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def _namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


@pytest.fixture
def network() -> Iterator[Network]:
    with Network(3, "krtest", random.Random(0)) as made:
        yield made


def _serve(network: Network, index: int, port: int, into: list[subprocess.Popen[str]]) -> None:
    """Start (into `into`, which the caller stops) a TCP listener inside peer `index`'s
    namespace that prints 'up' once it listens and answers each connection with 'hi'."""
    code = (
        "import socket,sys\n"
        f"s=socket.create_server(({network.addresses[index]!r},{port}))\n"
        "print('up',flush=True)\n"
        "while True:\n"
        " c,_=s.accept();c.sendall(b'hi');c.close()\n"
    )
    process = subprocess.Popen(
        [*network.wrapper(index), sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    )
    into.append(process)
    assert process.stdout is not None and process.stdout.readline().strip() == "up"


def _connect_from(network: Network, index: int, address: str, port: int) -> str:
    """What a connection from peer `index`'s namespace to address:port gets: 'hi', or the
    error ('timeout' for a silent drop, 'refused' for a reset)."""
    code = (
        "import socket\n"
        "try:\n"
        f" c=socket.create_connection(({address!r},{port}),timeout=1.0);print(c.recv(2).decode())\n"
        "except TimeoutError: print('timeout')\n"
        "except ConnectionRefusedError: print('refused')\n"
    )
    done = subprocess.run(
        [*network.wrapper(index), sys.executable, "-c", code], capture_output=True, text=True
    )
    return done.stdout.strip()


@needs_namespaces
def test_network_cuts_silently_one_way_and_heals(network: Network) -> None:
    servers: list[subprocess.Popen[str]] = []
    try:
        for i in range(3):
            _serve(network, i, 7000, servers)
        a0, a1, a2 = network.addresses
        # Clients outside reach every peer, whatever the cut.
        network.apply(net.isolate(3, 0))
        for address in network.addresses:
            with socket.create_connection((address, 7000), timeout=5) as client:
                assert client.recv(2) == b"hi"
        # Isolated peer 0: its packets to 1 vanish (no RST, so the connect times out), and
        # so do 1's to it; 1 and 2 still talk.
        assert _connect_from(network, 0, a1, 7000) == "timeout"
        assert _connect_from(network, 1, a0, 7000) == "timeout"
        assert _connect_from(network, 1, a2, 7000) == "hi"
        # One way: 0 may not send to 1. A TCP handshake needs both directions, so both
        # connects fail, while 0 <-> 2 is untouched.
        network.apply({(0, 1)})
        assert _connect_from(network, 0, a1, 7000) == "timeout"
        assert _connect_from(network, 0, a2, 7000) == "hi"
        network.heal()
        assert _connect_from(network, 0, a1, 7000) == "hi"
        assert _connect_from(network, 1, a0, 7000) == "hi"
    finally:
        for server in servers:
            server.kill()
            server.wait()
            assert server.stdout is not None
            server.stdout.close()


@needs_namespaces
def test_network_destroy_removes_everything_it_made() -> None:
    before = _namespaces()
    made = Network(3, "krgone", random.Random(1))
    made.create()
    assert {"krgone-br", "krgone-p0", "krgone-p1", "krgone-p2"} <= _namespaces()
    made.destroy()
    made.destroy()  # idempotent
    assert _namespaces() == before
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "krgoneh" not in links


def test_network_rejects_a_tag_too_long_for_interface_names() -> None:
    with pytest.raises(ValueError, match="at most 8"):
        Network(3, "much-too-long", random.Random(0))
