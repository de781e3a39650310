"""A real two-node Ray cluster on this machine: a head with no CPUs and a second node (`ray start --address`, its own
resources and temp dir) where every read and training worker must run. The embedded stores work there when both
nodes see the fabric home, and a node that does not (its own mount over the home, as another machine's disk would
be) stops the workload before any work, naming the node and what to do."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import free_ports, last_json, stop_group

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
         "node-manager-port", "object-manager-port")
TRAIN = ["--config", "configs/tabular/train.yaml", "model.type=linear", "train.epochs=2", "scaling.num_workers=1",
         "export_onnx=false", "registry.model_name=multinode-bc", "data.uri=lakefs://multinode/main/bc"]
pytestmark = pytest.mark.slow


def _start(args: list[str], env: dict[str, str], log: Path, wrap: list[str] | None = None) -> subprocess.Popen:
    """`ray start --block` with ``args`` and free ports of its own (the session's embedded Ray holds the defaults)."""
    ports = free_ports(len(PORTS))
    return subprocess.Popen(
        [*(wrap or []), RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
         "--object-store-memory=100000000", *args, *(f"--{n}={p}" for n, p in zip(PORTS, ports, strict=True))],
        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def _alive_nodes(address: str, env: dict[str, str]) -> list[dict]:
    script = (f"import json, ray; ray.init(address={address!r}, log_to_driver=False); "
              "print(json.dumps([{'cpus': n['Resources'].get('CPU', 0), 'id': n['NodeID']} "
              "for n in ray.nodes() if n['Alive']]))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wait_for_nodes(address: str, env: dict[str, str], n: int, logs: list[Path], timeout: float = 120) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            nodes = _alive_nodes(address, env)
            if len(nodes) == n:
                return nodes
        except (ValueError, IndexError, subprocess.TimeoutExpired):
            pass
        time.sleep(2)
    raise RuntimeError(f"the cluster did not reach {n} nodes; see {', '.join(map(str, logs))}")


@pytest.fixture(scope="module")
def cluster():
    """A head with 0 CPUs on loopback; yields (address, env, folder for logs and the home)."""
    folder = Path(tempfile.mkdtemp(prefix="fmn-", dir="/tmp"))  # Ray's socket paths must stay short
    home = folder / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", FABRIC_HOME=str(home),
               RAY_AUTH_MODE="token")  # Ray 2.60's default for `ray start`: every node and driver shows the token
    [port] = free_ports(1)
    head = _start(["--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false",
                   f"--temp-dir={folder / 'head'}"], env, folder / "head.log")
    try:
        yield f"127.0.0.1:{port}", env, folder
    finally:
        stop_group(head)
        shutil.rmtree(folder, ignore_errors=True)


def test_training_on_the_second_node_uses_the_shared_home(cluster):
    address, env, folder = cluster
    node = _start([f"--address={address}", "--num-cpus=2", f"--temp-dir={folder / 'node2'}"], env,
                  folder / "node2.log")
    try:
        nodes = _wait_for_nodes(address, env, 2, [folder / "head.log", folder / "node2.log"])
        assert sorted(n["cpus"] for n in nodes) == [0, 2]  # every CPU task (reads, train workers) runs on node 2
        out = subprocess.run([sys.executable, "-m", "workloads.train_tabular", *TRAIN],
                             capture_output=True, text=True, cwd=ROOT, env={**env, "RAY_ADDRESS": address},
                             timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        result = last_json(out.stdout, "version")
        assert result["registered_model"] == "multinode-bc" and result["test_metrics"]["accuracy"] > 0.8
        assert len(result["data_commit"]) == 64
    finally:
        stop_group(node)


def test_a_node_that_does_not_see_the_home_stops_the_run_before_any_work(cluster):
    address, env, folder = cluster
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"needs mount namespaces (unshare -m) to give node 2 a disk of its own: {probe.stderr!r}")
    home = env["FABRIC_HOME"]
    # Node 2 in its own mount namespace with an empty tmpfs over the home: another machine's disk, in effect.
    node = _start([f"--address={address}", "--num-cpus=2", f"--temp-dir={folder / 'node3'}"], env,
                  folder / "node3.log", wrap=["unshare", "-m", "--propagation", "private", "sh", "-c",
                                              f'mount -t tmpfs tmpfs "{home}" && exec "$0" "$@"'])
    try:
        _wait_for_nodes(address, env, 2, [folder / "head.log", folder / "node3.log"])
        out = subprocess.run([sys.executable, "-m", "workloads.train_tabular", *TRAIN, "registry.model_name=nope"],
                             capture_output=True, text=True, cwd=ROOT, env={**env, "RAY_ADDRESS": address},
                             timeout=600)
        assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
        assert re.search(r"the local data store at \S+ is not visible from Ray node\(s\) \S+ \(\w+\)", out.stderr)
        assert "put FABRIC_HOME on storage every node mounts" in out.stderr and "lakeFS" in out.stderr
        assert "Traceback" not in out.stderr and "[data]" not in out.stdout and "[train" not in out.stdout
    finally:
        stop_group(node)
