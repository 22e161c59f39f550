"""The launcher's command line, without a cluster: `run --join` / `--priority` reach the peer's
configuration or are refused with exit 2, and each `admin` membership operation calls its
AdminClient method and maps its outcome to the exit codes (0 ok, 1 definite failure, 2 bad
arguments, 3 outcome unknown). The peer and the client are replaced by recorders."""

from __future__ import annotations

import json
from typing import Any

import pytest

import launcher
from actors.service.peer import PeerConfig
from transport.client import ClientTimeout, CommandError

A, B, C, D = "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003", "127.0.0.1:7004"
PEERS = ",".join((A, B, C))


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[PeerConfig]:
    """The configs `run --self` would serve (nothing is started; signals are left alone)."""
    configs: list[PeerConfig] = []
    monkeypatch.setattr(launcher, "_on_signals", lambda stop: None)
    monkeypatch.setattr(launcher, "_setup_logging", lambda level, who: None)
    monkeypatch.setattr(
        launcher, "serve_peer", lambda config, stop, orphaned: configs.append(config)
    )
    return configs


def test_run_join_serves_a_peer_that_is_not_listed(served: list[PeerConfig]) -> None:
    code = launcher.main(["run", "--self", D, "--peers", PEERS, "--join", "--priority", "3"])
    assert code == launcher.EXIT_OK
    [config] = served
    assert (config.peer_id, config.peers, config.join, config.priority) == (
        D,
        (A, B, C),
        True,
        3,
    )
    assert config.node_options().join


def test_run_without_join_or_priority_keeps_the_defaults(served: list[PeerConfig]) -> None:
    assert launcher.main(["--self", A, "--peers", PEERS]) == launcher.EXIT_OK
    [config] = served
    assert (config.join, config.priority) == (False, -1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--peers", PEERS, "--join"], "--join goes with --self"),
        (["run", "--self", D, "--peers", D, "--join"], "--peers must name a peer"),
        (["run", "--self", D, "--peers", PEERS], "joins a running cluster with --join"),
        (["run", "--self", A, "--peers", PEERS, "--priority", "-2"], "--priority must be -1"),
    ],
    ids=["join-without-self", "join-alone", "unlisted-without-join", "priority-below-minus-one"],
)
def test_bad_membership_flags_exit_2_with_a_clear_message(
    served: list[PeerConfig], capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert launcher.main(argv) == launcher.EXIT_USAGE
    assert message in capsys.readouterr().err
    assert served == []


def test_a_priority_that_is_not_a_number_is_refused_by_the_parser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        launcher.main(["run", "--self", A, "--peers", PEERS, "--priority", "high"])
    assert exited.value.code == launcher.EXIT_USAGE
    assert "--priority" in capsys.readouterr().err


class RecordingAdmin:
    """Stands in for AdminClient: records calls, answers `outcome` (raised if an exception)."""

    outcome: Any = None
    instances: list[RecordingAdmin] = []

    def __init__(self, peers: list[str], timeout: float, keys: Any = None) -> None:
        self.peers, self.timeout = peers, timeout
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        RecordingAdmin.instances.append(self)

    def __enter__(self) -> RecordingAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any) -> Any:
            self.calls.append((name, args))
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            return self.outcome

        return call


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> type[RecordingAdmin]:
    RecordingAdmin.instances = []
    RecordingAdmin.outcome = None
    monkeypatch.setattr(launcher, "AdminClient", RecordingAdmin)
    return RecordingAdmin


@pytest.mark.parametrize(
    ("op", "method"),
    [
        ("add-peer", "add_peer"),
        ("add-learner", "add_learner"),
        ("promote", "promote"),
        ("remove-peer", "remove_peer"),
    ],
)
def test_each_membership_operation_calls_its_method_and_prints_json(
    admin: type[RecordingAdmin], capsys: pytest.CaptureFixture[str], op: str, method: str
) -> None:
    admin.outcome = {"leader": A, "voters": [A, B, C, D], "learners": []}
    assert launcher.main(["admin", "--peers", PEERS, "--timeout", "7", op, D]) == 0
    [client] = admin.instances
    assert (client.peers, client.timeout) == ([A, B, C], 7.0)
    assert client.calls == [(method, (D,))]
    assert json.loads(capsys.readouterr().out) == admin.outcome


@pytest.mark.parametrize(
    ("outcome", "code", "message"),
    [
        (CommandError("ChangeInProgressError: busy"), 1, "ChangeInProgressError: busy"),
        (ClientTimeout("no definite answer"), 3, "no definite answer"),
    ],
    ids=["refused", "unknown"],
)
def test_a_refused_change_exits_1_and_an_unknown_outcome_exits_3(
    admin: type[RecordingAdmin],
    capsys: pytest.CaptureFixture[str],
    outcome: Exception,
    code: int,
    message: str,
) -> None:
    admin.outcome = outcome
    assert launcher.main(["admin", "--peers", PEERS, "add-peer", D]) == code
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err


@pytest.mark.parametrize("op", ["add-peer", "add-learner", "promote", "remove-peer"])
def test_a_membership_operation_needs_a_host_port(
    admin: type[RecordingAdmin], capsys: pytest.CaptureFixture[str], op: str
) -> None:
    assert launcher.main(["admin", "--peers", PEERS, op, "not-a-peer"]) == launcher.EXIT_USAGE
    assert f"{op}: bad peer address" in capsys.readouterr().err
    assert admin.instances == []  # refused before any client is made
    with pytest.raises(SystemExit) as exited:
        launcher.main(["admin", "--peers", PEERS, op])  # the peer is required
    assert exited.value.code == launcher.EXIT_USAGE
