"""Peer addresses: "host:port" strings, as the launcher, the client and peer ids use them."""

from __future__ import annotations

import socket


def parse_peer(peer: str) -> tuple[str, int]:
    """Split "host:port"; a ValueError says what is wrong with a malformed address."""
    if not isinstance(peer, str) or peer.count(":") != 1:
        raise ValueError(f"bad peer address {peer!r}: expected HOST:PORT, e.g. 127.0.0.1:7001")
    host, _, port_text = peer.partition(":")
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"bad peer address {peer!r}: empty or malformed host")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"bad peer address {peer!r}: port must be a number from 1 to 65535")
    return host, int(port_text)


def parse_peers(text: str) -> list[str]:
    """Parse a comma-separated peer list: at least one peer, each valid, none repeated."""
    peers = [p.strip() for p in text.split(",") if p.strip()]
    if not peers:
        raise ValueError("the peer list is empty")
    for peer in peers:
        parse_peer(peer)
    duplicates = sorted({p for p in peers if peers.count(p) > 1})
    if duplicates:
        raise ValueError(f"peer listed twice: {', '.join(duplicates)}")
    return peers


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the OS reports free now (bound to port 0, read back, released) - for tests, tools
    and benchmarks that must not use fixed ports. Another process may take one before use."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
