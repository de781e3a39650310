"""fabric/jobs.py and `fabric submit`'s exit status, against a stand-in for Ray's job client (no cluster)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from fabric import jobs
from fabric.cli.main import app

ROOT = Path(__file__).resolve().parents[2]


class FakeJobClient:
    """Accepts one job and reports it as ``status`` for ever after."""

    def __init__(self, status: str):
        self.status = status

    def submit_job(self, **job):
        self.job = job
        return "raysubmit_fake"

    async def tail_job_logs(self, job_id):
        yield "working...\n"

    def get_job_info(self, job_id):
        return SimpleNamespace(status=self.status, message=None)


@pytest.mark.parametrize(("status", "ok"), [("SUCCEEDED", True), ("FAILED", False), ("STOPPED", False),
                                            ("RUNNING", False), ("PENDING", False)])
def test_only_a_succeeded_job_is_ok(status, ok):
    assert jobs.JobOutcome("raysubmit_x", status).ok is ok


@pytest.fixture
def fake_cluster(monkeypatch):
    """Replaces Ray's job client; ``use(status)`` returns the client, which keeps the job it was given."""
    def use(status: str) -> FakeJobClient:
        client = FakeJobClient(status)
        monkeypatch.setattr(jobs, "_client", lambda address: client)
        monkeypatch.setattr(jobs, "_wait_terminal", lambda client, job_id: client.get_job_info(job_id))
        return client

    monkeypatch.chdir(ROOT)
    return use


def submit(*args: str):
    return CliRunner().invoke(app, ["--verbose", "submit", "tests/fixtures/quick_job.py", *args,
                                    "--address", "http://fake:8265"])


def test_submit_exits_non_zero_when_the_job_is_still_running_after_the_wait(fake_cluster):
    fake_cluster("RUNNING")
    out = submit()
    assert out.exit_code == 1, out.output
    assert "job raysubmit_fake RUNNING: still running when the wait ended, which is not success" in out.output


def test_submit_exits_zero_when_the_job_succeeded_or_was_only_submitted(fake_cluster):
    fake_cluster("SUCCEEDED")
    assert submit().exit_code == 0
    fake_cluster("PENDING")
    out = submit("--no-wait")
    assert out.exit_code == 0, out.output
    assert "job raysubmit_fake PENDING" in out.output


def test_credentials_are_forwarded_by_name_or_kept_here_with_no_forward_secrets(fake_cluster, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "mlflow-s3cret")
    monkeypatch.setenv("LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY", "lakefs-s3cret")
    client = fake_cluster("SUCCEEDED")
    out = submit()
    assert out.exit_code == 0, out.output
    assert client.job["runtime_env"]["env_vars"]["MLFLOW_TRACKING_PASSWORD"] == "mlflow-s3cret"
    assert "forwarding LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_PASSWORD" in out.output
    assert "s3cret" not in out.output
    client = fake_cluster("SUCCEEDED")
    out = submit("--no-forward-secrets")
    assert out.exit_code == 0, out.output
    env_vars = client.job["runtime_env"]["env_vars"]
    assert env_vars["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert not set(env_vars) & set(jobs.CREDENTIAL_ENV) and "forwarding" not in out.output


def test_a_secret_override_is_refused_before_it_reaches_the_job_command_line(fake_cluster):
    client = fake_cluster("SUCCEEDED")
    out = submit("runtime.lakefs.secret_access_key=lakefs-s3cret")
    assert out.exit_code == 2
    assert "error: runtime.lakefs.secret_access_key: a secret in an override" in out.output
    assert "s3cret" not in out.output and not hasattr(client, "job")
