"""`fabric submit` against a real local Ray head started with the dashboard, as a cluster would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import free_ports, last_json, stop_group, wait_until_answers

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A `ray start --head` on loopback with the dashboard, in its own process group; stopped at the end."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("RAY_ADDRESS", None)
    agents = ("port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "ray-client-server-port",
              "metrics-export-port", "runtime-env-agent-port", "node-manager-port", "object-manager-port")
    dashboard_port, *agent_ports = free_ports(1 + len(agents))
    log = open(tmp_path_factory.mktemp("ray-head") / "head.log", "w")
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
            "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}", "--disable-usage-stats",
            # Fixed defaults such as the agent's 52365 are taken by this session's embedded Ray: pick free ones.
            *(f"--{name}={port}" for name, port in zip(agents, agent_ports, strict=True)),
        ],
        # Without FABRIC_HOME, as a head usually is: jobs must be told the home (fabric submit forwards it).
        env={k: v for k, v in env.items() if k != "FABRIC_HOME"}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        wait_until_answers(f"{address}/api/version", head, log.name)  # 401 for want of the token: it is up
        yield address, env, f"127.0.0.1:{agent_ports[0]}"  # the dashboard, and the GCS for ray.init
    finally:
        stop_group(head, term_wait=5)
        log.close()


def submit(address: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fabric", "submit", *args, "--address", address],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
    )


@pytest.fixture(scope="module")
def smoke_via_fabric(ray_head):
    """One `fabric submit smoke` run, shared by the tests that look at it (each costs most of a minute)."""
    address, env, _ = ray_head
    return submit(address, env, "smoke", "--config", "configs/smoke.yaml", "train.epochs=1")


def test_smoke_job_succeeds_and_streams_its_logs(smoke_via_fabric):
    out = smoke_via_fabric
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "submitted job raysubmit_" in out.stdout
    assert "python -m workloads.smoke --config configs/smoke.yaml train.epochs=1" in out.stdout
    assert "[smoke] done: test accuracy" in out.stdout
    assert last_json(out.stdout, "test_accuracy")["epochs"] == 1
    assert "SUCCEEDED" in out.stdout.rstrip().splitlines()[-1]


def test_failing_user_workload_is_reported_failed(ray_head):
    address, env, _ = ray_head
    out = submit(address, env, "tests/fixtures/failing_job.py", "reason=boom-from-test")
    assert out.returncode == 1
    assert "boom-from-test" in out.stdout
    assert "FAILED" in out.stdout.rstrip().splitlines()[-1]


def test_bad_config_is_refused_before_submitting(ray_head):
    address, env, _ = ray_head
    out = submit(address, env, "smoke", "--config", "configs/smoke.yaml", "train.epochs=0")
    assert out.returncode == 2
    assert "train.epochs" in out.stderr and "submitted job" not in out.stdout


def test_no_wait_returns_the_submission_id(ray_head):
    address, env, _ = ray_head
    out = submit(address, env, "tests/fixtures/quick_job.py", "n=5", "--no-wait")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split("submitted job ")[1].split(":")[0]
    # Polled with Ray's own CLI in a child process: this test process keeps its embedded Ray's auth settings.
    status_env = {**env, "RAY_AUTH_MODE": "token"}
    ray_cli = str(Path(sys.executable).parent / "ray")
    deadline = time.monotonic() + 300
    while True:
        polled = subprocess.run([ray_cli, "job", "status", job_id, "--address", address], capture_output=True,
                                text=True, env=status_env, timeout=60)
        status = (polled.stdout + polled.stderr).lower()
        if any(word in status for word in ("succeeded", "failed", "stopped")):
            break
        assert time.monotonic() < deadline, f"the --no-wait job did not finish: {status}"
        time.sleep(2)
    assert f"job '{job_id.lower()}' succeeded" in status


def readme_ray_job_submit() -> str:
    """The README's `ray job submit` line for the smoke workload (in "Running workloads"), joined as bash would."""
    block = (ROOT / "README.md").read_text().split("## Running workloads", 1)[1].split("```bash\n", 1)[1]
    block = block.split("```", 1)[0].replace("\\\n", "")
    (line,) = [line for line in block.splitlines() if "ray job submit" in line]
    return line


def test_plain_ray_job_submit_gives_the_fabric_submit_result(ray_head, smoke_via_fabric):
    """The third entry point: Ray's own CLI with the README's line as written, and the result of `fabric submit`."""
    address, env, _ = ray_head
    via_fabric = last_json(smoke_via_fabric.stdout, "test_accuracy")
    line = readme_ray_job_submit()
    assert line.endswith("-- python -m workloads.smoke --config configs/smoke.yaml train.epochs=2")
    out = subprocess.run(["bash", "-c", line.replace("train.epochs=2", "train.epochs=1")], capture_output=True,
                         text=True, cwd=ROOT, env={**env, "RAY_ADDRESS": address}, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    via_ray = last_json(out.stdout, "test_accuracy")
    keys = ("dataset", "train_rows", "test_rows", "epochs", "final_train_loss", "test_accuracy")
    assert {k: via_ray[k] for k in keys} == {k: via_fabric[k] for k in keys}


def test_plain_ray_job_submit_without_fabric_home_stops_before_any_work(ray_head):
    """Without FABRIC_HOME the job's home would be Ray's temporary upload folder: refused, naming what to set."""
    address, env, _ = ray_head
    env = {k: v for k, v in env.items() if k != "FABRIC_HOME"}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
         "--", "python", "-m", "workloads.smoke", "--config", "configs/smoke.yaml"],
        capture_output=True, text=True, cwd=ROOT, env={**env, "RAY_AUTH_MODE": "token"}, timeout=600,
    )
    assert out.returncode != 0
    assert "temporary working directory" in out.stdout and "set FABRIC_HOME" in out.stdout, out.stdout[-3000:]
    assert "[smoke] done" not in out.stdout


def test_train_and_tune_tabular_jobs_register_a_model(ray_head):
    """The training issue's `fabric submit` path: both workloads finish on a real head and register a version."""
    address, env, _ = ray_head
    tiny = ["runtime.ray.num_cpus=2", "scaling.num_workers=1", "registry.model_name=jobs-tabular"]
    out = submit(address, env, "train_tabular", "--config", "configs/tabular/train.yaml", "train.epochs=1", *tiny)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trained = last_json(out.stdout, "data_commit")
    assert trained["version"] == "1" and trained["promotion"] == "promoted"
    out = submit(address, env, "tune_tabular", "--config", "configs/tabular/tune.yaml", "train.epochs=2",
                 "tune.num_samples=2", "tune.grace_period=1", *tiny)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    tuned = last_json(out.stdout, "best_params")
    assert tuned["trials"] == 2 and tuned["version"] == "2"
    assert tuned["data_commit"] == trained["data_commit"]


def test_serve_up_detach_status_and_down_through_the_cli(ray_head):
    """`fabric serve up --detach` deploys the model the jobs above registered on the cluster and returns;
    `fabric serve status` lists it, it answers, and `fabric serve down NAME` removes it."""
    import requests

    from fabric.tabular.tables import load_frame

    _, env, gcs = ray_head
    [port] = free_ports(1)
    env = {**env, "RAY_ADDRESS": gcs, "RAY_AUTH_MODE": "token", "FABRIC_API_KEYS": "jobs-key:predict"}

    def fabric(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fabric", *args], capture_output=True, text=True, cwd=ROOT,
                              env=env, timeout=600)

    up = fabric("serve", "up", "configs/serve/tabular.yaml", "--detach", "name=jobs-serve", f"port={port}",
                "monitor=null", "models=[{name: jobs-tabular, alias: champion, placement: gateway}]")
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert "serving jobs-tabular@champion as application 'jobs-serve'" in up.stdout
    rows = load_frame("breast_cancer").drop(columns=["label"]).head(3).to_dict(orient="records")
    answer = requests.post(f"http://127.0.0.1:{port}/invocations", json={"dataframe_records": rows},
                           headers={"Authorization": "Bearer jobs-key"}, timeout=60)
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 3, answer.text
    status = fabric("serve", "status", "--json")
    assert status.returncode == 0, status.stderr[-3000:]
    assert json.loads(status.stdout)["jobs-serve"]["status"] == "RUNNING"
    down = fabric("serve", "down", "jobs-serve")
    assert down.returncode == 0 and "deleted jobs-serve" in down.stdout, down.stderr[-3000:]
    assert "jobs-serve" not in json.loads(fabric("serve", "status", "--json").stdout)
