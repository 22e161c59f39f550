"""PeerConfig: what a peer's flags make of its NodeOptions and its command line (joining,
election priority), without starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.configuration import Configuration
from actors.errors import OptionsError
from actors.service.local_peer import peer_command
from actors.service.peer import PeerConfig

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
