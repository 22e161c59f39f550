"""The project as a user installs it: `pip install -e .` and `pip install .`, each into a fresh
venv, give a `pykka-raft` command that is `python launcher.py`, and give mypy the packages'
types from a directory outside the checkout (setuptools' import-hook editable installs do not:
see the `package_dir` comment in setup.cfg).

The venv sees this environment's packages (pykka, pyzmq, mypy, ...) through a .pth file, so
nothing is downloaded but, when this environment cannot build the project itself (setuptools
< 68, or < 70.1 without `wheel`), pip's isolated build environment. The project is copied to
tmp_path first: building writes `build/` and `*.egg-info` next to setup.cfg, and an editable
install then points at the copy, not at the shared checkout.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.name != "posix", reason="kills process groups (POSIX)"),
]

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ("run", "client", "admin", "keygen")
INSTALL_TIMEOUT = 240.0  # a cold pip cache may have to fetch setuptools for an isolated build
COMMAND_TIMEOUT = 120.0
NOT_COPIED = shutil.ignore_patterns(
    *(".git", "__pycache__", "*.egg-info", "build", "dist", ".venv", "venv", "raft-data"),
    *(".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", "*.log"),
)
WHEEL_FILES = (
    *("actors/py.typed", "transport/py.typed", "storage/py.typed"),
    *("actors/service/status_page.html", "launcher.py"),
)

BAD_APP = """\
from actors.raft_node import RaftNode
from transport.client import KVClient

reveal_type(RaftNode.start)
client = KVClient(peers=123)
"""
GOOD_APP = """\
from pathlib import Path

from actors.raft_node import RaftNode
from storage.log_storage import SegmentLogStorage
from transport.client import KVClient


def read(client: KVClient, key: str) -> str | None:
    return client.get(key)


def log(path: Path) -> SegmentLogStorage:
    return SegmentLogStorage(path)


def node_type() -> type[RaftNode]:
    return RaftNode
"""


def run(
    command: Sequence[str | Path],
    *,
    env: dict[str, str],
    cwd: Path,
    timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run to completion; on a timeout (or any interruption) kill its whole process group, so
    that no pip build backend outlives the test either. `cwd` is explicit: the checkout as the
    current directory would be importable (`python -c`) and hide what was installed."""
    args = [str(part) for part in command]
    process = subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def check(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert result.returncode == code, (
        f"{' '.join(result.args)} exited with {result.returncode}, not {code}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result.stdout


def builds_without_isolation() -> bool:
    """This environment's setuptools can build the project (pyproject.toml's build-system)."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major_minor = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if major_minor >= (70, 1):  # bdist_wheel is built in
        return True
    return major_minor >= (68, 0) and importlib.util.find_spec("wheel") is not None


def this_environments_site_dirs() -> list[str]:
    """Where this interpreter finds its installed packages (not its .pth files' additions,
    such as an editable install of the checkout itself)."""
    paths = sysconfig.get_paths()
    dirs = [*site.getsitepackages(), paths["purelib"], paths["platlib"]]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


@dataclass
class Installed:
    mode: str  # "editable" or "wheel"
    project: Path  # the copy that was installed
    python: Path
    script: Path  # the venv's pykka-raft
    site_packages: Path
    env: dict[str, str]
    outside: Path  # a working directory outside both the checkout and the copy

    def run(
        self, *command: str | Path, code: int | None = 0, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`command` in the venv's environment; its exit code must be `code` (None: any)."""
        result = run(command, env=self.env, cwd=cwd or self.outside)
        if code is not None:
            check(result, code)
        return result

    def launcher(self, *args: str | Path, code: int | None = 0) -> subprocess.CompletedProcess[str]:
        """`python launcher.py ARGS`, the venv's interpreter running the copy's launcher."""
        return self.run(self.python, self.project / "launcher.py", *args, code=code)


@pytest.fixture(scope="module", params=["editable", "wheel"])
def installed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed in this environment")
    mode: str = request.param
    base = tmp_path_factory.mktemp(f"packaging-{mode}")
    project = base / "pykka-raft"
    shutil.copytree(REPO, project, ignore=NOT_COPIED)
    hidden = ("PYTHONPATH", "PYTHONHOME", "MYPYPATH", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    env |= {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", "PYTHONNOUSERSITE": "1"}
    outside = base / "work"
    outside.mkdir()

    venv = base / "venv"
    check(run([sys.executable, "-m", "venv", "--without-pip", venv], env=env, cwd=outside))
    python = venv / "bin" / "python"
    where_code = "import json, sysconfig; print(json.dumps(sysconfig.get_paths()))"
    where = json.loads(check(run([python, "-c", where_code], env=env, cwd=outside)))
    site_packages = Path(where["purelib"])
    # Sorted after setuptools' __editable__ .pth, so that the installed copy comes first.
    (site_packages / "zz_parent_environment.pth").write_text(
        "".join(f"{d}\n" for d in this_environments_site_dirs())
    )
    install: list[str | Path] = [python, "-m", "pip", "install", "--quiet", "--no-deps"]
    if builds_without_isolation():
        install.append("--no-build-isolation")
    install += ["-e", project] if mode == "editable" else [project]
    check(run(install, env=env, cwd=outside, timeout=INSTALL_TIMEOUT))
    script = Path(where["scripts"]) / "pykka-raft"
    yield Installed(mode, project, python, script, site_packages, env, outside)


def test_the_packages_come_from_the_install(installed: Installed) -> None:
    code = (
        "import actors, launcher, storage, transport\n"
        "from actors.service.local_peer import LAUNCHER\n"
        "print(actors.__file__); print(launcher.__file__); print(LAUNCHER.is_file())\n"
    )
    out = installed.run(installed.python, "-c", code).stdout
    actors_file, launcher_file, launcher_found = out.split()
    assert launcher_found == "True"  # what `pykka-raft run` spawns for each peer
    site_packages = installed.site_packages
    if installed.mode == "editable":
        assert Path(actors_file).is_relative_to(installed.project)
        assert Path(launcher_file) == installed.project / "launcher.py"
        # A static path entry (what mypy reads), not an import hook.
        (pth,) = site_packages.glob("__editable__*pykka_raft*.pth")
        assert pth.read_text().split() == [str(installed.project)]
    else:
        assert Path(actors_file).is_relative_to(site_packages)
        for name in WHEEL_FILES:
            assert (site_packages / name).is_file(), name
        for name in ("tests", "bench", "docs"):
            assert not (site_packages / name).exists(), name


def test_the_command_is_the_launcher(installed: Installed) -> None:
    help_text = installed.run(installed.script, "--help").stdout
    for command in COMMANDS:
        assert command in help_text
    assert help_text == installed.launcher("--help").stdout
    assert "status" in installed.run(installed.script, "client", "--help").stdout
    # Exit code 2 for bad input, from argparse and from main()'s own checks alike.
    for bad in (["client"], ["keygen", "keys", "--peers", "nonsense"]):
        script = installed.run(installed.script, *bad, code=2)
        assert script.stderr == installed.launcher(*bad, code=2).stderr


def test_keygen_makes_the_same_keys(installed: Installed, tmp_path: Path) -> None:
    def keygen(result: subprocess.CompletedProcess[str], directory: Path) -> tuple[object, ...]:
        out = json.loads(result.stdout)
        assert out.pop("dir") == str(directory)
        files = sorted(
            (str(p.relative_to(directory)), p.stat().st_mode) for p in directory.rglob("*")
        )
        return out, files

    script_dir, plain_dir = tmp_path / "script", tmp_path / "plain"
    by_script = keygen(installed.run(installed.script, "keygen", script_dir), script_dir)
    by_launcher = keygen(installed.launcher("keygen", plain_dir), plain_dir)
    assert by_script == by_launcher
    assert by_script[1], "no key files"


def test_mypy_outside_the_checkout_sees_the_types(installed: Installed, tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "mypy.ini").write_text("[mypy]\n")  # not the user's own configuration
    (app / "bad.py").write_text(BAD_APP)
    (app / "good.py").write_text(GOOD_APP)
    cache = tmp_path / "mypy-cache"
    mypy = (installed.python, "-m", "mypy", "--config-file", "mypy.ini", "--cache-dir", cache)

    report = installed.run(*mypy, "bad.py", code=1, cwd=app).stdout
    assert "import-not-found" not in report and "import-untyped" not in report, report
    # The real signature, not Any: mypy read the installed package's annotations.
    assert re.search(
        r'bad.py:4: note: Revealed type is "def .*\(options: actors.options.Node', report
    )
    assert 'bad.py:5: error: Argument "peers" to "KVClient" has incompatible type' in report
    assert "Found 1 error in 1 file" in report, report

    good = installed.run(*mypy, "good.py", cwd=app).stdout
    assert "Success: no issues found in 1 source file" in good
