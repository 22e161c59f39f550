"""A chaos run's own network: every peer in a Linux network namespace, cut from the others by
silent packet drops while clients outside still reach every peer.

Layout (all names carry the run's tag, so cleanup touches only what this run made):

    host netns ── veth <tag>h ──┐
                                 br0 in netns <tag>-br ── veth ── netns <tag>-p<i> (peer i)
                                 (one bridge; a veth per peer)

Addresses come from one /24 inside 10.0.0.0/8 that no interface of the host uses: the host
end is .1, peer i is .(i + 2). Peers bind their own address; clients (in the host namespace)
reach any of them through the host's veth, whatever cuts exist between peers.

A cut is a set of directed links (a, b): packets from a to b are dropped. Each peer's
namespace holds one nftables table whose output chain drops what the peer may not send, so a
one-way cut drops a's packets to b (its SYNs, its data, its ACKs) and nothing else. Drops are
silent, as a real partition looks to TCP: no RST, no ICMP; connections stall, retransmit, and
ZMTP heartbeats notice.

Needs root and `ip` and `nft` (Debian: iproute2, nftables); `unavailable()` says why not.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import random
import shutil
import subprocess
from collections.abc import Iterable, Sequence

Link = tuple[int, int]  # (from peer index, to peer index): that direction is dropped


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network partitions need root (ip netns)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"network partitions need `{tool}` (Debian: iproute2, nftables)"
    # Root is not always enough (a container without CAP_SYS_ADMIN, a kernel without
    # nf_tables): make a namespace and a table in it, and say what failed.
    probe = f"krprobe{os.getpid() % 100000}"
    try:
        _run("ip", "netns", "add", probe)
        _run("ip", "netns", "exec", probe, "nft", "add", "table", "inet", "chaos")
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot make a network namespace with an nftables table here: {error}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


def _run(*command: str, stdin: str | None = None) -> None:
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise OSError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")


def _free_subnet(rng: random.Random) -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 that overlaps no address or route of the host."""
    shown = (
        subprocess.run(
            ["ip", "-4", "-o", "route", "show", "table", "all"], capture_output=True, text=True
        ).stdout
        + subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    )
    used = []
    for word in shown.split():
        try:
            used.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue
    for _ in range(1000):
        candidate = ipaddress.ip_network(f"10.{rng.randrange(64, 250)}.{rng.randrange(256)}.0/24")
        if not any(candidate.overlaps(net) for net in used if net.prefixlen > 0):
            return candidate
    raise OSError("no free /24 in 10.0.0.0/8 for the chaos network")


class Network:
    """See the module docstring. `create` builds it, `destroy` removes everything it made
    (idempotent, safe after a half-done create); use it as a context manager."""

    def __init__(self, size: int, tag: str, rng: random.Random) -> None:
        if len(tag) > 8:
            raise ValueError("tag is at most 8 characters (interface names are <= 15)")
        self.size = size
        self.tag = tag
        self.subnet = _free_subnet(rng)
        hosts = list(self.subnet.hosts())
        self.host_address = str(hosts[0])
        self.addresses = [str(hosts[i + 1]) for i in range(size)]
        self.bridge_ns = f"{tag}-br"
        self.peer_ns = [f"{tag}-p{i}" for i in range(size)]
        self._made_ns: list[str] = []
        self._host_veth: str | None = None
        self.cut: frozenset[Link] = frozenset()

    def __enter__(self) -> Network:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def create(self) -> None:
        try:
            self._create()
        except BaseException:
            self.destroy()
            raise

    def _create(self) -> None:
        br, prefix = self.bridge_ns, self.subnet.prefixlen
        self._add_ns(br)
        _run("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", br, "link", "set", "br0", "up")
        host_veth = f"{self.tag}h"
        _run("ip", "link", "add", host_veth, "type", "veth", "peer", "name", f"{self.tag}hb")
        self._host_veth = host_veth
        self._attach(f"{self.tag}hb")
        _run("ip", "addr", "add", f"{self.host_address}/{prefix}", "dev", host_veth)
        _run("ip", "link", "set", host_veth, "up")
        for i, ns in enumerate(self.peer_ns):
            self._add_ns(ns)
            inside, outside = f"{self.tag}p{i}", f"{self.tag}p{i}b"
            _run("ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
            _run("ip", "link", "set", inside, "netns", ns)
            self._attach(outside)
            _run("ip", "-n", ns, "addr", "add", f"{self.addresses[i]}/{prefix}", "dev", inside)
            _run("ip", "-n", ns, "link", "set", inside, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        self.apply(frozenset())

    def _add_ns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self._made_ns.append(name)

    def _attach(self, veth: str) -> None:
        """Move a veth end into the bridge namespace and enslave it to br0."""
        _run("ip", "link", "set", veth, "netns", self.bridge_ns)
        _run("ip", "-n", self.bridge_ns, "link", "set", veth, "master", "br0")
        _run("ip", "-n", self.bridge_ns, "link", "set", veth, "up")

    def destroy(self) -> None:
        """Delete this run's namespaces (their veths go with them) and the host's veth."""
        for ns in reversed(self._made_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self._made_ns.clear()
        if self._host_veth is not None:
            subprocess.run(["ip", "link", "del", self._host_veth], capture_output=True, timeout=30)
            self._host_veth = None

    def wrapper(self, index: int) -> list[str]:
        """The command prefix that runs a process inside peer `index`'s namespace."""
        return ["ip", "netns", "exec", self.peer_ns[index]]

    def apply(self, cut: Iterable[Link]) -> None:
        """Make exactly the links in `cut` drop (every other link delivers)."""
        links = frozenset(cut)
        for i, ns in enumerate(self.peer_ns):
            dropped = sorted(self.addresses[b] for a, b in links if a == i)
            rule = f"ip daddr {{ {', '.join(dropped)} }} drop" if dropped else ""
            _run(
                "ip",
                "netns",
                "exec",
                ns,
                "nft",
                "-f",
                "-",
                stdin=(
                    "table inet chaos\ndelete table inet chaos\n"
                    "table inet chaos {\n chain out {\n"
                    f"  type filter hook output priority 0; policy accept;\n  {rule}\n }}\n}}\n"
                ),
            )
        self.cut = links

    def heal(self) -> None:
        self.apply(frozenset())


# -- shapes: which links a partition cuts ------------------------------------------------------


def between(groups: Sequence[Iterable[int]]) -> frozenset[Link]:
    """Both directions of every link between peers of different groups."""
    sets = [set(g) for g in groups]
    return frozenset(
        (a, b)
        for x, y in itertools.permutations(range(len(sets)), 2)
        for a in sets[x]
        for b in sets[y]
    )


def isolate(size: int, target: int) -> frozenset[Link]:
    return between([[target], [i for i in range(size) if i != target]])


def halves(size: int, rng: random.Random) -> frozenset[Link]:
    """A random majority and minority."""
    order = rng.sample(range(size), size)
    return between([order[: (size - 1) // 2], order[(size - 1) // 2 :]])


def bridge(size: int, rng: random.Random) -> frozenset[Link]:
    """Two halves that both still see one peer, the bridge (Jepsen's `bridge`)."""
    order = rng.sample(range(size), size)
    middle, rest = order[0], order[1:]
    left, right = rest[: len(rest) // 2], rest[len(rest) // 2 :]
    return between([left, right]) - {(middle, p) for p in rest} - {(p, middle) for p in rest}


def majorities_ring(size: int, rng: random.Random) -> frozenset[Link]:
    """Every peer sees a majority, and no two see the same one (Jepsen's `majorities-ring`):
    peers on a shuffled ring keep only their nearest neighbours. With 3 peers that is one cut
    link (the ring's ends each see a different pair)."""
    order = rng.sample(range(size), size)
    keep = max(1, (size // 2 + 1) // 2)  # neighbours on each side that stay linked
    if size == 3:
        a, b = order[0], order[1]
        return frozenset({(a, b), (b, a)})
    cut = set()
    for x, y in itertools.permutations(range(size), 2):
        distance = min((x - y) % size, (y - x) % size)
        if distance > keep:
            cut.add((order[x], order[y]))
    return frozenset(cut)


def one_way(size: int, source: int, rng: random.Random) -> frozenset[Link]:
    """`source`'s packets to one other peer are dropped; that peer's to `source` still go."""
    other = rng.choice([i for i in range(size) if i != source])
    return frozenset({(source, other)})
