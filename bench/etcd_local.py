"""A local 3-member etcd (Debian's `etcd-server`) and a load of the same shape as ours, for the
benchmarks' same-run comparison: each client thread keeps one HTTP connection to one member and
uses etcd's JSON gateway (`/v3/kv/put`, `/v3/kv/range`), as a Python application would without
a gRPC stack. Linearizable ranges are etcd's default; `serializable` asks for local reads."""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from transport.peers import free_ports


def available() -> bool:
    return shutil.which("etcd") is not None


class EtcdCluster:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bench-etcd-"))
        ports = free_ports(6)
        self.clients = [f"127.0.0.1:{p}" for p in ports[:3]]
        peers = [f"http://127.0.0.1:{p}" for p in ports[3:]]
        initial = ",".join(f"m{i}={url}" for i, url in enumerate(peers))
        self.processes = [
            subprocess.Popen(
                [
                    "etcd",
                    "--name",
                    f"m{i}",
                    "--data-dir",
                    str(self.root / f"m{i}"),
                    "--listen-client-urls",
                    f"http://{self.clients[i]}",
                    "--advertise-client-urls",
                    f"http://{self.clients[i]}",
                    "--listen-peer-urls",
                    peers[i],
                    "--initial-advertise-peer-urls",
                    peers[i],
                    "--initial-cluster",
                    initial,
                    "--initial-cluster-state",
                    "new",
                    "--log-level",
                    "error",
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(self.root / f"m{i}.log", "w"),  # noqa: SIM115 - lives with it
            )
            for i in range(3)
        ]

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                client = EtcdClient(self.clients[0])
                client.put("ready", "1")
                client.close()
                return
            except (OSError, http.client.HTTPException, RuntimeError):
                time.sleep(0.1)
        raise TimeoutError("etcd did not become ready")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdClient:
    """One keep-alive HTTP connection to one member."""

    def __init__(self, address: str) -> None:
        host, port = address.split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=30)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.connection.request(
            "POST", path, json.dumps(body), {"Content-Type": "application/json"}
        )
        reply = self.connection.getresponse()
        data = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"etcd {path}: {reply.status} {data[:200]!r}")
        result: dict[str, Any] = json.loads(data)
        return result

    def put(self, key: str, value: str) -> None:
        self._post("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    def get(self, key: str, serializable: bool = False) -> str | None:
        reply = self._post("/v3/kv/range", {"key": _b64(key), "serializable": serializable})
        kvs = reply.get("kvs")
        return base64.b64decode(kvs[0]["value"]).decode() if kvs else None

    def close(self) -> None:
        self.connection.close()
