"""CurveZMQ keys and who may say what: `--keys DIR` / `KVClient(..., keys=DIR)`.

A key directory, as `launcher.py keygen DIR` makes it (pyzmq's `zmq.auth` key files):

    DIR/peers/<host>_<port>.key          every peer's public key: every machine needs them all
    DIR/peers/<host>_<port>.key_secret   that peer's secret key: only on that peer's machine
    DIR/clients/<name>.key[_secret]      client keys: client operations (put, get, ..., status)
    DIR/admins/<name>.key[_secret]       admin keys: client operations and admin operations
    DIR/http/token                       the bearer token of the peers' HTTP endpoints

Every directory is 0700 and every file 0600 (readable by its owner only). To deploy, copy
`peers/*.key` (public keys) to every machine, each peer's own `.key_secret` to its machine only,
`clients/` and `admins/` public keys to every peer, and a client's or admin's secret to whoever
uses it. The HTTP token goes to every peer and to whoever reads /status and /metrics (a
Prometheus server: `authorization: {credentials_file: DIR/http/token}`).

Who is who (the ZAP handler, `PeerSecurity.user_id`): a CURVE connection is accepted only with a
public key from this directory, and it is labelled with that key's holder: `peer:H:P`,
`admin:NAME` or `client:NAME` (ZeroMQ's User-Id metadata, attached to every message received on
the connection). `authorize` then decides per message:
- a peer message (votes, AppendEntries, InstallSnapshot, their responses) is accepted only from
  `peer:X` with `sender == X`: a peer's identity is bound to its key, so a client key cannot
  vote, append or answer as a peer;
- a client message (ClientRequest, StatusRequest) from any key, but a non-peer key may not use a
  peer's id as its own (a client claiming to be a peer);
- an AdminRequest needs an admin or a peer key.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from transport.errors import TransportError
from transport.peers import parse_peer
from transport.rpc import AdminRequest, ClientQuery, ClientRequest, RpcMessage, StatusRequest

log = logging.getLogger(__name__)

__all__ = [
    "ClientSecurity",
    "KeyDirectoryError",
    "PeerSecurity",
    "generate_keys",
    "key_name",
    "read_http_token",
]

PEERS: Final = "peers"
CLIENTS: Final = "clients"
ADMINS: Final = "admins"
HTTP_TOKEN: Final = "http/token"
ZAP_DOMAIN: Final = "pykka-raft"

PEER_ROLE: Final = "peer"
ADMIN_ROLE: Final = "admin"
CLIENT_ROLE: Final = "client"
_ROLE_OF_DIR: Final = {PEERS: PEER_ROLE, CLIENTS: CLIENT_ROLE, ADMINS: ADMIN_ROLE}

_CLIENT_MESSAGES: Final = (ClientRequest, ClientQuery, StatusRequest)


class KeyDirectoryError(TransportError):
    """A key directory is missing, incomplete or unreadable; the message says what to do."""


REFRESH_INTERVAL: Final = 5.0
"""Seconds between two readings of a key directory for a key it does not hold (a handshake
with an unknown key may be an attack, and must not make a peer read its disk in a loop)."""


def key_name(peer_id: str) -> str:
    """The file name (without suffix) of a peer's keys: "host_port"."""
    host, port = parse_peer(peer_id)
    return f"{host}_{port}"


def _peer_id_of(name: str) -> str:
    """The peer id of a key file named by key_name; KeyDirectoryError for any other name."""
    host, _, port = name.rpartition("_")
    try:
        parse_peer(f"{host}:{port}")
    except ValueError:
        raise KeyDirectoryError(f"{PEERS}/{name}: not a peer's key (expected HOST_PORT)") from None
    return f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class KeyPair:
    public: bytes  # z85, as ZeroMQ's CURVE socket options take it
    secret: bytes | None


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def generate_keys(
    directory: Path | str,
    peers: Sequence[str],
    clients: Sequence[str] = (CLIENT_ROLE,),
    admins: Sequence[str] = (ADMIN_ROLE,),
) -> dict[str, list[str]]:
    """Create the keys that are missing under `directory`; existing keys are kept, never
    overwritten (so new peers can be added to a deployed cluster's directory). Returns
    {"created": [...], "kept": [...]} as paths relative to `directory`."""
    root = Path(directory)
    done: dict[str, list[str]] = {"created": [], "kept": []}
    wanted = [(PEERS, key_name(p)) for p in peers]
    wanted += [(CLIENTS, _plain_name(n)) for n in clients]
    wanted += [(ADMINS, _plain_name(n)) for n in admins]
    _private_dir(root)
    for folder, name in wanted:
        where = root / folder
        _private_dir(where)
        relative = f"{folder}/{name}"
        if (where / f"{name}.key").exists() or (where / f"{name}.key_secret").exists():
            done["kept"].append(relative)
            continue
        public, secret = zmq.auth.create_certificates(str(where), name)
        for written in (public, secret):
            os.chmod(written, stat.S_IRUSR | stat.S_IWUSR)
        done["created"].append(relative)
    token = root / HTTP_TOKEN
    _private_dir(token.parent)
    if token.exists():
        done["kept"].append(HTTP_TOKEN)
    else:
        # Created with owner-only permissions from the start: never readable by others.
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        done["created"].append(HTTP_TOKEN)
    return done


def read_http_token(directory: Path | str) -> str:
    """The HTTP bearer token of a key directory (`generate_keys` makes it); KeyDirectoryError
    if it is missing, empty or unreadable."""
    path = Path(directory) / HTTP_TOKEN
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise KeyDirectoryError(
            f"cannot read the HTTP token {path}: {exc.strerror or exc} "
            f"(`launcher.py keygen {directory}` adds what a key directory lacks)"
        ) from exc
    if len(token) < 16 or not token.isascii() or not token.isprintable():
        raise KeyDirectoryError(f"{path} does not hold a token (at least 16 printable characters)")
    return token


def _plain_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ValueError(f"bad key name {name!r}: use letters, digits, '-', '_' and '.'")
    return name


def _load(path: Path) -> KeyPair:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyDirectoryError(f"cannot read key file {path}: {exc}") from exc
    if public is None or len(public) != 40 or (secret is not None and len(secret) != 40):
        raise KeyDirectoryError(f"key file {path} does not hold a CURVE key")
    return KeyPair(public, secret)


def _keys_in(root: Path, folder: str) -> dict[str, KeyPair]:
    """name -> key pair of every key in `root/folder` (the secret where it is present)."""
    where = root / folder
    if not where.is_dir():
        return {}
    found: dict[str, KeyPair] = {}
    for path in sorted(where.iterdir()):
        if path.suffix == ".key":
            secret = path.with_suffix(".key_secret")
            found[path.stem] = _load(secret if secret.exists() else path)
        elif path.suffix == ".key_secret" and not path.with_suffix(".key").exists():
            found[path.stem] = _load(path)
    return found


def _root(directory: Path | str) -> Path:
    root = Path(directory)
    if not (root / PEERS).is_dir():
        raise KeyDirectoryError(
            f"{root} is not a key directory (no {PEERS}/ in it): make one with "
            f"`python launcher.py keygen {root}`"
        )
    return root


class _KeyHolder:
    """One side's view of a key directory: its own key pair and every peer's public key."""

    def __init__(self, root: Path, own: KeyPair) -> None:
        if own.secret is None:
            raise KeyDirectoryError(f"no secret key of this side's own in {root}")
        self.root = root
        self.own = own
        self.peer_keys = {  # peer id -> public key (z85)
            _peer_id_of(name): pair.public for name, pair in _keys_in(root, PEERS).items()
        }

    def refresh(self, min_interval: float = 0.0) -> bool:
        """Read the directory again for keys added since (PeerSecurity does; a client makes
        a new holder instead). Whether it read."""
        return False

    def check_peers(self, peers: list[str]) -> None:
        """KeyDirectoryError naming the peers that have no public key in the directory."""
        missing = [p for p in peers if p not in self.peer_keys]
        if missing:
            raise KeyDirectoryError(
                f"no public key for {', '.join(missing)} in {self.root / PEERS}"
            )

    def configure_client(self, socket: zmq.Socket[Any], peer_id: str) -> None:
        """Make `socket` a CURVE client of `peer_id` (it checks the peer's key, and shows ours);
        KeyDirectoryError when that peer has no public key here (read again first)."""
        if peer_id not in self.peer_keys:
            self.refresh(min_interval=0.0)
        server = self.peer_keys.get(peer_id)
        if server is None:
            raise KeyDirectoryError(f"no public key for peer {peer_id} in {self.root / PEERS}")
        socket.curve_serverkey = server
        socket.curve_publickey = self.own.public
        socket.curve_secretkey = self.own.secret


class PeerSecurity(_KeyHolder):
    """What a peer's transport needs: its own key pair (the ROUTER's server key and its DEALERs'
    client key), every peer's public key (to connect to them), and the holder of every key it
    accepts."""

    def __init__(self, directory: Path | str, local_id: str) -> None:
        """Raises KeyDirectoryError naming what is missing (the directory, this peer's secret)."""
        root = _root(directory)
        own = _keys_in(root, PEERS).get(key_name(local_id))
        if own is None or own.secret is None:
            raise KeyDirectoryError(
                f"no secret key for peer {local_id} in {root / PEERS} (expected "
                f"{key_name(local_id)}.key_secret): make it with `python launcher.py keygen "
                f"{root} --peers {local_id}`"
            )
        super().__init__(root, own)
        self.local_id = local_id
        self.users = self._read_users()  # public key (z85) -> "role:holder"
        # The first unknown key reads the directory at once (a new peer connecting as it
        # starts: libzmq does not retry a connection refused by authentication).
        self._refreshed_at = -float("inf")

    def _read_users(self) -> dict[bytes, str]:
        users = {}
        for folder, role in _ROLE_OF_DIR.items():
            for name, pair in _keys_in(self.root, folder).items():
                holder = _peer_id_of(name) if folder == PEERS else name
                users[pair.public] = f"{role}:{holder}"
        return users

    def refresh(self, min_interval: float = REFRESH_INTERVAL) -> bool:
        """Read the directory again (at most every `min_interval` seconds), so that a peer
        added to the cluster (its key generated and distributed after this peer started) is
        known without a restart. Keys are only ever added here: a key removed from the
        directory stays trusted until restart. Whether it read. Any thread: each table is
        replaced whole."""
        now = time.monotonic()
        if now - self._refreshed_at < min_interval:
            return False
        self._refreshed_at = now
        try:
            peers = {
                _peer_id_of(name): pair.public for name, pair in _keys_in(self.root, PEERS).items()
            }
            users = self._read_users()
        except KeyDirectoryError as error:
            log.warning("key directory %s unreadable: %s; keeping the keys read", self.root, error)
            return False
        self.peer_keys = {**self.peer_keys, **peers}
        self.users = {**self.users, **users}
        return True

    def user_id(self, public_z85: bytes) -> str | None:
        """The holder of a public key, or None: a key this cluster does not know."""
        return self.users.get(public_z85)

    def authorize(self, user_id: str, message: RpcMessage) -> str | None:
        """None if the connection labelled `user_id` may deliver `message`, else the reason
        (see the module docstring). Runs on the transport's I/O thread for every message."""
        role, _, holder = user_id.partition(":")
        if role == PEER_ROLE:
            if message.sender == holder:
                return None
            return f"{type(message).__name__} claims {message.sender!r} over {holder}'s key"
        if message.sender in self.peer_keys:
            return f"a {role} key claims to be peer {message.sender}"
        if isinstance(message, _CLIENT_MESSAGES):
            return None
        if isinstance(message, AdminRequest):
            if role == ADMIN_ROLE:
                return None
            return f"AdminRequest over a {role} key (admin operations need an admin or peer key)"
        return f"{type(message).__name__} over a {role} key (peers only)"

    def start_authenticator(self, context: zmq.Context[Any]) -> ThreadAuthenticator:
        """Start the ZAP handler of `context` (a thread of pyzmq's): it accepts the CURVE keys
        of this directory only and labels each connection with `user_id`. Stop it after the
        sockets it guards are closed."""
        security = self

        class Authenticator(ThreadAuthenticator):
            def curve_user_id(self, client_public_key: bytes) -> str:
                return security.user_id(z85.encode(client_public_key)) or "?"

        class KnownKeys:
            def callback(self, domain: str, key: bytes) -> bool:
                if domain != ZAP_DOMAIN:
                    return False
                if security.user_id(key) is None:
                    security.refresh()  # a new peer's or client's key, distributed since?
                return security.user_id(key) is not None

        authenticator = Authenticator(context)
        authenticator.start()
        authenticator.configure_curve_callback(ZAP_DOMAIN, KnownKeys())
        return authenticator

    def configure_server(self, socket: zmq.Socket[Any]) -> None:
        socket.curve_server = True
        socket.curve_publickey = self.own.public
        socket.curve_secretkey = self.own.secret
        socket.zap_domain = ZAP_DOMAIN.encode()


class ClientSecurity(_KeyHolder):
    """What a KVClient or AdminClient needs: its own key pair and the peers' public keys.
    `prefer` lists the kinds of key (CLIENTS, ADMINS) it may use, in order."""

    def __init__(self, directory: Path | str, prefer: tuple[str, ...]) -> None:
        root = _root(directory)
        for folder in prefer:
            secrets = [pair for pair in _keys_in(root, folder).values() if pair.secret]
            if secrets:
                super().__init__(root, secrets[0])
                return
        raise KeyDirectoryError(
            f"no secret key in {', '.join(str(root / f) for f in prefer)}: make one with "
            f"`python launcher.py keygen {root}`"
        )
