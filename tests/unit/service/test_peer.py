"""PeerConfig: what a peer's flags make of its NodeOptions and its command line (joining,
election priority), without starting anything."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import launcher
from actors.configuration import Configuration
from actors.errors import OptionsError
from actors.service.local_peer import peer_command
from actors.service.peer import PeerConfig, PeerStartError, run_peer
from transport.security import generate_keys

A, B, C, D = "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003", "127.0.0.1:7004"


def config(peer_id: str, peers: tuple[str, ...], **fields: object) -> PeerConfig:
    return PeerConfig(peer_id, peers, Path("data"), **fields)  # type: ignore[arg-type]


def test_a_bootstrapping_peer_starts_with_the_listed_peers_as_its_configuration() -> None:
    options = config(A, (A, B, C)).node_options()
    assert (options.peer_id, options.join) == (A, False)
    assert options.initial_conf == Configuration.of([A, B, C])
    assert options.raft.election_priority == -1  # off unless asked for
    assert config(A, (A, B, C)).contacts == (B, C)


def test_a_joining_peer_need_not_be_listed_and_gets_the_others_as_contact_hints() -> None:
    joining = config(D, (A, B, C), join=True)
    options = joining.node_options()
    assert (options.peer_id, options.join) == (D, True)
    assert options.initial_conf == Configuration.of([A, B, C])
    assert joining.contacts == (A, B, C)
    # Listing itself too changes nothing: it is never its own contact.
    listed = config(D, (A, D), join=True)
    assert listed.contacts == (A,)
    assert listed.node_options().initial_conf == Configuration.of([A])


def test_a_joining_peer_with_nobody_to_contact_is_refused() -> None:
    with pytest.raises(OptionsError, match="needs the address of a running peer"):
        config(D, (D,), join=True).node_options()


def test_a_peer_not_listed_must_join() -> None:
    with pytest.raises(OptionsError, match="not in the configuration"):
        config(D, (A, B, C)).node_options()


@pytest.mark.parametrize("priority", [0, 1, 100])
def test_the_priority_reaches_the_raft_options(priority: int) -> None:
    options = config(A, (A, B), priority=priority).node_options()
    assert options.raft.election_priority == priority


def test_a_priority_below_minus_one_is_refused() -> None:
    with pytest.raises(OptionsError, match="election_priority"):
        config(A, (A, B), priority=-2).node_options()


def test_the_peer_command_carries_join_and_priority_only_when_set() -> None:
    plain = peer_command(config(A, (A, B)))
    assert "--join" not in plain and "--priority" not in plain
    command = peer_command(config(D, (A, B), join=True, priority=0))
    assert "--join" in command
    assert command[command.index("--priority") + 1] == "0"
    assert command[command.index("--self") + 1] == D
    assert command[command.index("--peers") + 1] == f"{A},{B}"


def test_the_cluster_token_reaches_the_options_and_the_command_line() -> None:
    assert "--cluster-token" not in peer_command(config(A, (A, B)))
    founding = config(A, (A, B), cluster_token="blue")
    assert founding.node_options().cluster_token == "blue"
    command = peer_command(founding)
    assert command[command.index("--cluster-token") + 1] == "blue"
    args = launcher.parse_args(["run", "--self", A, "--peers", f"{A},{B}", "--cluster-token", "x"])
    assert launcher._peer_config(args, A, [A, B]).cluster_token == "x"


def test_keys_and_http_without_a_token_in_the_directory_is_a_clear_start_error(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys, [A, B])
    (keys / "http" / "token").unlink()  # a directory made before HTTP had a token
    peer = PeerConfig(A, (A, B), tmp_path / "data", keys=keys, http="127.0.0.1:0")
    with pytest.raises(PeerStartError, match=r"http/token.*keygen"):
        run_peer(peer, threading.Event())
