"""pykka-raft launcher: run a replicated KV service, or talk to one.

    python launcher.py [run] [--peers H:P,...] [--self H:P] [--data-dir DIR]
                       [--election-timeout-ms N] [--log-level LEVEL] [--join] [--priority N]
                       [--snapshot-threshold N] [--snapshot-interval-s S] ...
    python launcher.py client [--peers ...] put KEY VALUE | get KEY | delete KEY
                                            | cas KEY EXPECTED NEW | status
    python launcher.py admin [--peers ...] members | add-peer H:P | add-learner H:P
                       | promote H:P | remove-peer H:P | transfer-leader [H:P] | snapshot [H:P]
    python launcher.py keygen DIR [--peers H:P,...] [--clients NAMES] [--admins NAMES]

`--peers` bootstraps a brand-new cluster and gives contact hints: a peer with durable state uses
the configuration of its own log and snapshot. `run --self H:P --peers EXISTING --join` starts a
brand-new peer that waits to be added (`admin add-peer H:P`) instead of bootstrapping;
`--priority N` is its election priority (-1, the default: off; 0: never leads; higher wins).
A brand-new cluster's id (persisted by every peer; a peer follows only leaders of its own
cluster) is derived from --peers and `--cluster-token TOKEN`: see actors/identity.py.

`--keys DIR` (run, client, admin) turns on CurveZMQ: every connection encrypted and
authenticated with the keys `keygen` made (see transport/security.py). Without it anyone who can
reach a peer's port can use the cluster: never expose such a cluster beyond a trusted network.

Without --self, `run` starts one OS process per peer on this machine (each is `run --self`),
supervises them (a peer that dies is reported and restarted after a back-off), says who leads,
and stops them all on SIGINT/SIGTERM. With --self it runs that one peer in the foreground.
Each peer keeps its data in DIR/<host>_<port>/ either way. The service itself lives in
actors/service/; this module is only its command line.

Exit codes: 0 success; 1 a definite failure (the service refused, a peer could not start);
2 bad command-line input; 3 a client timeout (the outcome is unknown).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.errors import OptionsError
from actors.options import RaftOptions
from actors.service.local_peer import STOP_GRACE, LocalPeer
from actors.service.peer import PeerConfig, PeerFailedError, PeerStartError
from actors.service.peer import run_peer as serve_peer
from transport.client import AdminClient, ClientTimeout, KVClient, KVError
from transport.kv_protocol import (
    ADMIN_ADD_LEARNER,
    ADMIN_ADD_PEER,
    ADMIN_PROMOTE,
    ADMIN_REMOVE_PEER,
    CONSISTENCIES,
    LINEARIZABLE,
)
from transport.peers import parse_peer, parse_peers
from transport.security import (
    ADMIN_ROLE,
    CLIENT_ROLE,
    KeyDirectoryError,
    PeerSecurity,
    generate_keys,
)

DEFAULT_PEERS = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
DEFAULT_DATA_DIR = "./raft-data"
MEMBERSHIP_HELP = {  # admin operations that change the configuration, each on one peer
    ADMIN_ADD_PEER: "make H:P a voter (a new peer, started with `run --join`, catches up first)",
    ADMIN_ADD_LEARNER: "make H:P a learner: it receives the log, never votes nor leads",
    ADMIN_PROMOTE: "make learner H:P a voter",
    ADMIN_REMOVE_PEER: "remove voter or learner H:P (a leader removing itself then hands over)",
}
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
RESTART_BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0)  # wait before the n-th restart of a crashed peer
STABLE_AFTER = 60.0  # a peer up this long has its back-off reset
SUPERVISOR_TICK = 0.2

log = logging.getLogger("launcher")


class UsageError(Exception):
    """Bad command-line input: reported with exit code 2."""


# -- arguments --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launcher.py", description="Run or use a pykka-raft replicated KV service."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the service (the default command)")
    run.add_argument("--peers", default=DEFAULT_PEERS, help="comma-separated HOST:PORT list")
    run.add_argument("--self", dest="self_id", metavar="H:P", help="run only this peer")
    run.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    run.add_argument("--election-timeout-ms", type=int, default=1000)
    run.add_argument(
        "--join",
        action="store_true",
        help="with --self: a brand-new peer that waits to be added to the running cluster of "
        "--peers (`admin add-peer`) instead of bootstrapping; --self need not be in --peers",
    )
    run.add_argument(
        "--priority",
        type=int,
        default=RaftOptions.election_priority,
        metavar="N",
        help="election priority: -1 off (the default), 0 never leads, a higher one is "
        "preferred as leader",
    )
    run.add_argument(
        "--cluster-token",
        default="",
        metavar="TOKEN",
        help="a brand-new cluster's id is derived from --peers and this token: give clusters "
        "founded with the same --peers different tokens (ignored by a peer with data, or "
        "with --join, which takes its leader's id)",
    )
    run.add_argument(
        "--snapshot-threshold",
        type=int,
        default=RaftOptions.snapshot_threshold,
        metavar="N",
        help="snapshot after N applied entries since the last one; 0 = never by count "
        f"(default {RaftOptions.snapshot_threshold})",
    )
    run.add_argument(
        "--snapshot-interval-s",
        type=float,
        default=RaftOptions.snapshot_interval,
        metavar="S",
        help="snapshot at least every S seconds when something was applied; 0 = never by time "
        f"(default {RaftOptions.snapshot_interval:g})",
    )
    run.add_argument(
        "--snapshot-log-margin",
        type=int,
        default=RaftOptions.snapshot_log_margin,
        metavar="N",
        help="entries kept in the log before each snapshot, so that a follower a little behind "
        f"catches up without one (default {RaftOptions.snapshot_log_margin})",
    )
    run.add_argument(
        "--snapshot-throttle-bytes",
        type=int,
        default=0,
        metavar="B",
        help="send a snapshot to each follower at most B bytes per second; 0 = unthrottled",
    )
    run.add_argument(
        "--http",
        metavar="H:P",
        help="with --self: serve /metrics, /health, /status and a status page on H:P",
    )
    run.add_argument(
        "--http-base-port",
        type=int,
        metavar="N",
        help="without --self: serve each peer's /metrics, /health, /status and page on "
        "port N+i (peer i of --peers, from 0), on the peer's host",
    )
    run.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
    )
    run.add_argument(
        "--no-fsync",
        action="store_true",
        help="never fsync the log (benchmarks only: a power failure loses acknowledged data)",
    )
    run.add_argument("--supervisor-pid", type=int, help=argparse.SUPPRESS)
    # The chaos runner's clock nemesis: the Raft clock runs at this rate (actors.clock).
    run.add_argument("--clock-rate", type=_clock_rate, default=1.0, help=argparse.SUPPRESS)
    _keys_flag(run)

    client = commands.add_parser("client", help="send one operation to the service")
    client.add_argument("--peers", default=DEFAULT_PEERS, help="comma-separated HOST:PORT list")
    client.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    ops = client.add_subparsers(dest="op", required=True, metavar="OPERATION")
    put = ops.add_parser("put", help="set KEY to VALUE")
    put.add_argument("key")
    put.add_argument("value")
    get = ops.add_parser("get", help="print KEY's value, or (nil)")
    get.add_argument("key")
    get.add_argument(
        "--consistency",
        choices=CONSISTENCIES,
        default=LINEARIZABLE,
        help="linearizable (default: a heartbeat round on the leader), lease (the leader's "
        "lease, assuming bounded clock drift) or serializable (any peer's state; may be stale)",
    )
    get.add_argument(
        "--read-from",
        choices=("leader", "any"),
        default="leader",
        help="leader (default) or any: whichever peer of --peers the client picks serves it (a "
        "follower asks the leader for a read index; still linearizable unless asked for less)",
    )
    ops.add_parser("delete", help="delete KEY; prints whether it existed").add_argument("key")
    cas = ops.add_parser("cas", help="set KEY to NEW if it holds EXPECTED; prints true/false")
    cas.add_argument("key")
    cas.add_argument("expected", help="the value KEY must hold (with --if-absent: omit it)")
    cas.add_argument("new", nargs="?")
    cas.add_argument("--if-absent", action="store_true", help="swap only if KEY is absent")
    ops.add_parser("status", help="print one JSON object per peer")
    _keys_flag(client)

    admin = commands.add_parser("admin", help="operate the cluster (prints JSON)")
    admin.add_argument("--peers", default=DEFAULT_PEERS, help="comma-separated HOST:PORT list")
    admin.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    admin_ops = admin.add_subparsers(dest="op", required=True, metavar="OPERATION")
    admin_ops.add_parser("members", help="the leader, the voters and the learners")
    for op, what in MEMBERSHIP_HELP.items():
        admin_ops.add_parser(op, help=what).add_argument("peer", metavar="H:P")
    snapshot = admin_ops.add_parser("snapshot", help="take a snapshot now (default: the leader)")
    snapshot.add_argument("peer", nargs="?", metavar="H:P", help="the peer to snapshot")
    transfer = admin_ops.add_parser(
        "transfer-leader", help="hand leadership to a voter (default: the most up-to-date one)"
    )
    transfer.add_argument("peer", nargs="?", metavar="H:P", help="the voter to lead")
    _keys_flag(admin)

    keygen = commands.add_parser("keygen", help="create the CurveZMQ keys of a cluster")
    keygen.add_argument("dir", metavar="DIR", help="the key directory (created if missing)")
    keygen.add_argument(
        "--peers", default=DEFAULT_PEERS, help="the peers to make keys for (HOST:PORT list)"
    )
    keygen.add_argument(
        "--clients", default=CLIENT_ROLE, help=f"comma-separated client key names ({CLIENT_ROLE})"
    )
    keygen.add_argument(
        "--admins", default=ADMIN_ROLE, help=f"comma-separated admin key names ({ADMIN_ROLE})"
    )
    return parser


def _keys_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keys",
        metavar="DIR",
        type=Path,
        help="encrypt and authenticate with the CurveZMQ keys in DIR (made by `keygen DIR`)",
    )


def _clock_rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.5 <= rate <= 2.0:
        raise argparse.ArgumentTypeError(f"must be between 0.5 and 2, not {rate}")
    return rate


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    if not argv or argv[0] not in ("run", "client", "admin", "keygen", "-h", "--help"):
        argv.insert(0, "run")  # `run` is the default command
    return build_parser().parse_args(argv)


def _peers(text: str) -> list[str]:
    try:
        return parse_peers(text)
    except ValueError as error:
        raise UsageError(f"--peers: {error}") from None


def _setup_logging(level: str, who: str) -> None:
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {who} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _on_signals(stop: threading.Event) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())


# -- one peer ---------------------------------------------------------------------------------


def run_peer(args: argparse.Namespace, peers: list[str]) -> int:
    """Run one peer in the foreground until SIGINT/SIGTERM (or its supervisor dies)."""
    stop = threading.Event()
    _on_signals(stop)
    supervisor = args.supervisor_pid

    def orphaned() -> bool:
        # An orphan is re-parented, so a changed parent means the supervisor is gone.
        if supervisor and os.getppid() != supervisor:
            log.warning("supervisor %d is gone; stopping", supervisor)
            return True
        return False

    try:
        serve_peer(_peer_config(args, args.self_id, peers), stop, orphaned)
    except OptionsError as error:
        raise UsageError(str(error)) from None
    except (PeerStartError, PeerFailedError) as error:
        print(f"{args.self_id}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _peer_config(args: argparse.Namespace, peer: str, peers: list[str]) -> PeerConfig:
    http = args.http
    if args.http_base_port is not None:
        host, _ = parse_peer(peer)
        http = f"{host}:{args.http_base_port + peers.index(peer)}"
    return PeerConfig(
        peer_id=peer,
        peers=tuple(peers),
        data_dir=Path(args.data_dir),
        election_timeout_ms=args.election_timeout_ms,
        fsync=not args.no_fsync,
        snapshot_threshold=args.snapshot_threshold,
        snapshot_interval_s=args.snapshot_interval_s,
        snapshot_log_margin=args.snapshot_log_margin,
        snapshot_throttle_bytes=args.snapshot_throttle_bytes,
        http=http,
        keys=args.keys,
        clock_rate=args.clock_rate,
        join=args.join,
        priority=args.priority,
        cluster_token=args.cluster_token,
    )


# -- a local cluster --------------------------------------------------------------------------


@dataclass
class _Child:
    peer: LocalPeer
    up: bool = False  # started, and its exit (if any) not yet handled
    started_at: float = 0.0
    restarts: int = 0
    next_start_at: float = 0.0


def supervise(args: argparse.Namespace, peers: list[str]) -> int:
    """Run every peer as a child process; restart the ones that die; report the leader."""
    for peer in peers:
        problem = _port_problem(peer)
        if problem:
            print(f"cannot start {peer}: {problem}", file=sys.stderr)
            return EXIT_FAILURE
    stop = threading.Event()
    _on_signals(stop)
    children = [
        _Child(LocalPeer(_peer_config(args, peer, peers), log_level=args.log_level))
        for peer in peers
    ]
    leader: tuple[str, int] | None = None
    next_status = 0.0
    print(f"starting {len(peers)} peers; data in {Path(args.data_dir).resolve()}", flush=True)
    try:
        while not stop.is_set():
            now = time.monotonic()
            for child in children:
                failure = _tend(child, now)
                if failure:
                    print(failure, file=sys.stderr)
                    return EXIT_FAILURE
            if now >= next_status:
                next_status = now + 1.0
                leader = _report_leader(peers, leader, args.keys)
            stop.wait(SUPERVISOR_TICK)
    finally:
        _stop_children([child.peer for child in children])
    print("all peers stopped", flush=True)
    return EXIT_OK


def _tend(child: _Child, now: float) -> str | None:
    """Start, or notice the death of, one child. Returns a message if the cluster must stop."""
    peer = child.peer
    if child.up:
        code = peer.poll()
        if code is None:
            if now - child.started_at > STABLE_AFTER:
                child.restarts = 0
            return None
        child.up = False
        if code == EXIT_USAGE:
            return f"peer {peer.id} refused its arguments (exit {code}); stopping"
        delay = RESTART_BACKOFF[min(child.restarts, len(RESTART_BACKOFF) - 1)]
        child.restarts += 1
        child.next_start_at = now + delay
        print(
            f"peer {peer.id} (pid {peer.pid}) exited with code {code}; restarting in {delay:.0f}s",
            file=sys.stderr,
            flush=True,
        )
        return None
    if now >= child.next_start_at:
        peer.start()
        child.up = True
        child.started_at = now
    return None


def _port_problem(peer: str) -> str | None:
    host, port = parse_peer(peer)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As ZeroMQ binds: connections of a cluster just stopped (TIME_WAIT) do not make the
        # port unavailable, a listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return f"{host}:{port} is not available here ({error.strerror})"
    return None


def _report_leader(
    peers: list[str], known: tuple[str, int] | None, keys: Path | None
) -> tuple[str, int] | None:
    with KVClient(peers, timeout=0.5, keys=keys) as client:
        statuses = client.status()
    leaders = [(s["id"], s["term"]) for s in statuses if s.get("role") == "leader"]
    if not leaders:
        return known
    current = max(leaders, key=lambda pair: pair[1])
    if current != known:
        print(f"leader: {current[0]} (term {current[1]})", flush=True)
    return current


def _stop_children(peers: list[LocalPeer]) -> None:
    running = [peer for peer in peers if peer.running]
    for peer in running:
        peer.terminate()
    deadline = time.monotonic() + STOP_GRACE
    for peer in running:
        if peer.wait(deadline - time.monotonic()) is None:
            print(f"peer pid {peer.pid} did not stop in time; killing it", file=sys.stderr)
            peer.kill()


def run_service(args: argparse.Namespace) -> int:
    peers = _peers(args.peers)
    if args.election_timeout_ms <= 0:
        raise UsageError("--election-timeout-ms must be a positive number of milliseconds")
    if args.snapshot_threshold < 0:
        raise UsageError("--snapshot-threshold must be 0 (off) or a positive number of entries")
    if not args.snapshot_interval_s >= 0:  # also refuses nan
        raise UsageError("--snapshot-interval-s must be 0 (off) or a positive number of seconds")
    if args.snapshot_log_margin < 0:
        raise UsageError("--snapshot-log-margin must be 0 or a positive number of entries")
    if args.snapshot_throttle_bytes < 0:
        raise UsageError("--snapshot-throttle-bytes must be 0 (off) or a number of bytes/s")
    if args.http is not None:
        if args.self_id is None:
            raise UsageError("--http goes with --self; a cluster takes --http-base-port")
        try:
            parse_peer(args.http)
        except ValueError as error:
            raise UsageError(f"--http: {error}") from None
    if args.http_base_port is not None:
        if args.self_id is not None:
            raise UsageError("--http-base-port is for the cluster form; with --self use --http")
        if not 1 <= args.http_base_port <= 65535 - len(peers) + 1:
            raise UsageError("--http-base-port: the ports N..N+peers-1 must be valid ports")
    if args.priority < -1:
        raise UsageError("--priority must be -1 (off), 0 (never leads) or a positive number")
    if args.join and args.self_id is None:
        raise UsageError("--join goes with --self: it starts one new peer, H:P, to be added")
    if args.self_id is not None:
        try:
            parse_peer(args.self_id)
        except ValueError as error:
            raise UsageError(f"--self: {error}") from None
        if args.join and not set(peers) - {args.self_id}:
            raise UsageError("--join: --peers must name a peer of the running cluster")
        if not args.join and args.self_id not in peers:
            raise UsageError(
                f"--self {args.self_id} is not among --peers {','.join(peers)} (a new peer "
                "joins a running cluster with --join)"
            )
    if args.keys is not None:
        for peer in [args.self_id] if args.self_id is not None else peers:
            try:
                PeerSecurity(args.keys, peer).check_peers([p for p in peers if p != peer])
            except KeyDirectoryError as error:
                raise UsageError(f"--keys: {error}") from None
    if args.self_id is not None:
        _setup_logging(args.log_level, args.self_id)
        return run_peer(args, peers)
    _setup_logging(args.log_level, "launcher")
    return supervise(args, peers)


# -- the client -------------------------------------------------------------------------------


def run_client(args: argparse.Namespace) -> int:
    peers = _peers(args.peers)
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    if args.op == "cas":
        if args.if_absent == (args.new is not None):
            raise UsageError("cas takes KEY EXPECTED NEW, or --if-absent KEY NEW")
        expected, new = (None, args.expected) if args.if_absent else (args.expected, args.new)
    try:
        read_from = getattr(args, "read_from", "leader")
        with KVClient(peers, timeout=args.timeout, keys=args.keys, read_from=read_from) as client:
            if args.op == "put":
                client.put(args.key, args.value)
                print("OK")
            elif args.op == "get":
                value = client.get(args.key, args.consistency)
                print("(nil)" if value is None else value)
            elif args.op == "delete":
                print(json.dumps(client.delete(args.key)))
            elif args.op == "cas":
                print(json.dumps(client.cas(args.key, expected, new)))
            else:
                statuses = client.status()
                for status in statuses:
                    print(json.dumps(status, sort_keys=True))
                if all(s.get("role") == "unreachable" for s in statuses):
                    print("error: no peer answered", file=sys.stderr)
                    return EXIT_FAILURE
    except ClientTimeout as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_TIMEOUT
    except KeyDirectoryError as error:
        raise UsageError(f"--keys: {error}") from None
    except KVError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def run_admin(args: argparse.Namespace) -> int:
    peers = _peers(args.peers)
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    if getattr(args, "peer", None) is not None:
        try:
            parse_peer(args.peer)
        except ValueError as error:
            raise UsageError(f"{args.op}: {error}") from None
    try:
        with AdminClient(peers, timeout=args.timeout, keys=args.keys) as admin:
            operations: dict[str, Callable[[], dict[str, Any]]] = {
                "members": admin.members,
                "snapshot": lambda: admin.snapshot(args.peer),
                "transfer-leader": lambda: admin.transfer_leader(args.peer),
                ADMIN_ADD_PEER: lambda: admin.add_peer(args.peer),
                ADMIN_ADD_LEARNER: lambda: admin.add_learner(args.peer),
                ADMIN_PROMOTE: lambda: admin.promote(args.peer),
                ADMIN_REMOVE_PEER: lambda: admin.remove_peer(args.peer),
            }
            result = operations[args.op]()
    except ClientTimeout as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_TIMEOUT
    except KeyDirectoryError as error:
        raise UsageError(f"--keys: {error}") from None
    except KVError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(result, sort_keys=True))
    return EXIT_OK


def run_keygen(args: argparse.Namespace) -> int:
    """Create the missing keys (existing ones are kept) and print what was done, as JSON."""
    peers = _peers(args.peers)
    names = [
        [n.strip() for n in text.split(",") if n.strip()] for text in (args.clients, args.admins)
    ]
    try:
        done = generate_keys(args.dir, peers, clients=names[0], admins=names[1])
    except ValueError as error:
        raise UsageError(str(error)) from None
    except OSError as error:
        print(f"error: cannot write keys in {args.dir}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps({"dir": str(args.dir), **done}, sort_keys=True))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "client":
            return run_client(args)
        if args.command == "admin":
            return run_admin(args)
        if args.command == "keygen":
            return run_keygen(args)
        return run_service(args)
    except UsageError as error:
        print(f"launcher.py: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
