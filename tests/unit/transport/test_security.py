"""transport.security: the key directory `keygen` makes, loading it, and who may send what."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from transport.rpc import (
    AdminRequest,
    AppendEntriesResponse,
    ClientRequest,
    RequestVoteRequest,
    RpcMessage,
    StatusRequest,
)
from transport.security import (
    ADMINS,
    CLIENTS,
    PEERS,
    ClientSecurity,
    KeyDirectoryError,
    PeerSecurity,
    generate_keys,
    read_http_token,
)

A, B = "127.0.0.1:7001", "127.0.0.1:7002"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    generate_keys(tmp_path / "keys", [A, B])
    return tmp_path / "keys"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_makes_every_key_readable_by_its_owner_only(keys: Path) -> None:
    files = sorted(p.relative_to(keys).as_posix() for p in keys.rglob("*") if p.is_file())
    assert files == [
        "admins/admin.key",
        "admins/admin.key_secret",
        "clients/client.key",
        "clients/client.key_secret",
        "http/token",
        "peers/127.0.0.1_7001.key",
        "peers/127.0.0.1_7001.key_secret",
        "peers/127.0.0.1_7002.key",
        "peers/127.0.0.1_7002.key_secret",
    ]
    assert {mode(keys / f) for f in files} == {0o600}
    assert {mode(d) for d in [keys, keys / PEERS, keys / CLIENTS, keys / ADMINS]} == {0o700}
    assert mode(keys / "http") == 0o700


def test_keygen_keeps_existing_keys_and_adds_missing_ones(keys: Path) -> None:
    before = (keys / PEERS / "127.0.0.1_7001.key_secret").read_bytes()
    token = read_http_token(keys)
    done = generate_keys(keys, [A, "127.0.0.1:7003"], clients=["app"], admins=[])
    assert done == {
        "created": ["peers/127.0.0.1_7003", "clients/app"],
        "kept": ["peers/127.0.0.1_7001", "http/token"],
    }
    assert (keys / PEERS / "127.0.0.1_7001.key_secret").read_bytes() == before
    assert read_http_token(keys) == token and len(token) >= 32


@pytest.mark.parametrize("content", [None, "", "short", "tab\tinside-a-long-token"])
def test_a_missing_or_bad_http_token_is_a_clear_error(keys: Path, content: str | None) -> None:
    path = keys / "http" / "token"
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    with pytest.raises(KeyDirectoryError, match="http/token"):
        read_http_token(keys)


@pytest.mark.parametrize("name", ["", "../x", ".hidden", "a b"])
def test_keygen_refuses_bad_key_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="bad key name"):
        generate_keys(tmp_path, [A], clients=[name])


def test_each_key_is_labelled_with_its_holder(keys: Path) -> None:
    security = PeerSecurity(keys, A)
    holders = sorted(security.users.values())
    assert holders == ["admin:admin", "client:client", f"peer:{A}", f"peer:{B}"]
    assert security.peer_keys.keys() == {A, B}
    assert security.user_id(b"0" * 40) is None


def test_a_peer_needs_its_own_secret(keys: Path) -> None:
    (keys / PEERS / "127.0.0.1_7002.key_secret").unlink()
    PeerSecurity(keys, A)  # B's public key is enough for A
    with pytest.raises(KeyDirectoryError, match=r"no secret key for peer 127.0.0.1:7002.*keygen"):
        PeerSecurity(keys, B)


def test_not_a_key_directory_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(KeyDirectoryError, match=r"not a key directory.*launcher.py keygen"):
        PeerSecurity(tmp_path, A)
    with pytest.raises(KeyDirectoryError, match="not a key directory"):
        ClientSecurity(tmp_path / "missing", (CLIENTS,))


def test_a_corrupt_key_file_is_named(keys: Path) -> None:
    (keys / CLIENTS / "client.key").write_text("garbage\n")
    (keys / CLIENTS / "client.key_secret").write_text("garbage\n")
    with pytest.raises(KeyDirectoryError, match=r"clients/client.key_secret"):
        PeerSecurity(keys, A)


def test_a_stray_file_among_the_peer_keys_is_named(keys: Path) -> None:
    (keys / PEERS / "notes.key").write_bytes((keys / PEERS / "127.0.0.1_7001.key").read_bytes())
    with pytest.raises(KeyDirectoryError, match="peers/notes: not a peer's key"):
        PeerSecurity(keys, A)


def test_clients_pick_the_kind_of_key_they_prefer(keys: Path) -> None:
    users = PeerSecurity(keys, A).users
    assert users[ClientSecurity(keys, (CLIENTS, ADMINS)).own.public] == "client:client"
    assert users[ClientSecurity(keys, (ADMINS, CLIENTS)).own.public] == "admin:admin"
    for secret in (keys / ADMINS).glob("*.key_secret"):
        secret.unlink()
    assert users[ClientSecurity(keys, (ADMINS, CLIENTS)).own.public] == "client:client"
    for secret in (keys / CLIENTS).glob("*.key_secret"):
        secret.unlink()
    with pytest.raises(KeyDirectoryError, match="no secret key in"):
        ClientSecurity(keys, (ADMINS, CLIENTS))


def test_check_peers_names_peers_without_a_key(keys: Path) -> None:
    ClientSecurity(keys, (CLIENTS,)).check_peers([A, B])
    with pytest.raises(KeyDirectoryError, match=r"no public key for 127\.0\.0\.1:7003"):
        ClientSecurity(keys, (CLIENTS,)).check_peers([A, "127.0.0.1:7003"])


VOTE_FROM_B = RequestVoteRequest(9, B, 0, 0, False)


@pytest.mark.parametrize(
    ("user", "message", "refusal"),
    [
        (f"peer:{B}", VOTE_FROM_B, None),
        (f"peer:{B}", AppendEntriesResponse(1, True, 0, B, 0, 1), None),
        (f"peer:{A}", VOTE_FROM_B, "claims '127.0.0.1:7002' over 127.0.0.1:7001's key"),
        ("client:client", VOTE_FROM_B, "a client key claims to be peer 127.0.0.1:7002"),
        ("client:client", RequestVoteRequest(9, "c1", 0, 0, False), "peers only"),
        ("client:client", ClientRequest("c1", 1, 1, b"x"), None),
        ("client:client", StatusRequest("c1", 1), None),
        ("client:client", ClientRequest(B, 1, 1, b"x"), "claims to be peer"),
        ("client:client", AdminRequest("c1", 1, "snapshot"), "need an admin or peer key"),
        ("admin:admin", AdminRequest("c1", 1, "snapshot"), None),
        ("admin:admin", RequestVoteRequest(9, "c1", 0, 0, False), "peers only"),
        (f"peer:{B}", AdminRequest(B, 1, "snapshot"), None),
    ],
)
def test_who_may_send_what(keys: Path, user: str, message: RpcMessage, refusal: str | None) -> None:
    verdict = PeerSecurity(keys, A).authorize(user, message)
    if refusal is None:
        assert verdict is None
    else:
        assert verdict is not None and refusal in verdict


def test_a_key_added_after_start_is_read_on_refresh_at_most_every_interval(keys: Path) -> None:
    security = PeerSecurity(keys, A)
    new = "127.0.0.1:7003"
    generate_keys(keys, [new])
    assert new not in security.peer_keys
    assert security.refresh()  # the first unknown key reads the directory at once
    assert new in security.peer_keys and f"peer:{new}" in security.users.values()
    generate_keys(keys, ["127.0.0.1:7004"])
    assert not security.refresh()  # within REFRESH_INTERVAL: not again
    assert security.refresh(min_interval=0.0)  # a connection to a new member does
    assert "127.0.0.1:7004" in security.peer_keys
