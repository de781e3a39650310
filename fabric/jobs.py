"""Submitting workloads to a Ray cluster as Ray jobs.

``fabric submit smoke --config configs/smoke.yaml --address http://HEAD:8265`` is the same as::

    ray job submit --address http://HEAD:8265 --working-dir . -- python -m workloads.smoke --config configs/smoke.yaml

with the config validated here first, so a bad key fails before anything is uploaded.

Example:
    >>> outcome = submit("smoke", "configs/smoke.yaml", ["train.epochs=1"], address="http://127.0.0.1:8265")
    >>> outcome.status
    'SUCCEEDED'
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabric.config import ConfigError, is_secret_key
from fabric.workload import is_path_ref, load_workload

__all__ = [
    "CREDENTIAL_ENV",
    "DEFAULT_EXCLUDES",
    "FORWARDED_ENV",
    "JobOutcome",
    "build_entrypoint",
    "build_runtime_env",
    "submit",
]

DEFAULT_EXCLUDES = [".venv/", ".fabric/", ".git/", "**/__pycache__/", "*.pyc", "mlruns/", ".pytest_cache/"]
FORWARDED_ENV = [
    "FABRIC_HOME",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "QDRANT_URL",
    "QDRANT_API_KEY",
    "LAKEFS_ENDPOINT",
    "LAKECTL_SERVER_ENDPOINT_URL",
    "LAKECTL_CREDENTIALS_ACCESS_KEY_ID",
    "LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY",
]
# Ray 2.60 has no hidden runtime_env field: env_vars show in the dashboard and the job's info. These stay here
# with --no-forward-secrets (the cluster then needs them set on its nodes).
CREDENTIAL_ENV = [
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "QDRANT_API_KEY",
    "LAKECTL_CREDENTIALS_ACCESS_KEY_ID",
    "LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY",
]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass(frozen=True)
class JobOutcome:
    """What became of a submitted job."""

    submission_id: str
    status: str
    message: str | None = None

    @property
    def ok(self) -> bool:
        """Only a job that SUCCEEDED; one still PENDING or RUNNING when the wait ended has not (yet)."""
        return self.status == "SUCCEEDED"

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL


def build_entrypoint(ref: str, config_path: str | None, overrides: Iterable[str], root: Path) -> str:
    """The job's command line, with every path made relative to the uploaded working directory."""
    if is_path_ref(ref):
        command = ["python", "-m", "fabric", "run", _inside(root, ref, "workload file")]
    else:
        command = ["python", "-m", f"workloads.{ref}"]
    if config_path:
        command += ["--config", _inside(root, config_path, "config file")]
    return shlex.join([*command, *overrides])


def build_runtime_env(user_env: dict[str, Any], root: Path, forward_secrets: bool = True) -> dict[str, Any]:
    """The project folder as working_dir, minus bulky folders, plus fabric's settings from this environment.

    Without ``forward_secrets`` the :data:`CREDENTIAL_ENV` variables are left out (Ray's dashboard shows env_vars).
    """
    env = dict(user_env)
    env["working_dir"] = str(root)
    env["excludes"] = [*DEFAULT_EXCLUDES, *user_env.get("excludes", [])]
    names = [n for n in FORWARDED_ENV if forward_secrets or n not in CREDENTIAL_ENV]
    forwarded = {name: os.environ[name] for name in names if os.environ.get(name)}
    if "FABRIC_HOME" in forwarded:
        forwarded["FABRIC_HOME"] = str(Path(forwarded["FABRIC_HOME"]).resolve())
    env["env_vars"] = {**forwarded, **user_env.get("env_vars", {})}
    return env


def submit(
    ref: str,
    config_path: str | None,
    overrides: Iterable[str] = (),
    address: str | None = None,
    wait: bool = True,
    echo: Callable[[str], None] = lambda text: print(text, end="", flush=True),
    forward_secrets: bool = True,
) -> JobOutcome:
    """Validates the config, submits the workload as a Ray job, and (with ``wait``) streams its logs to the end.

    Credentials in this environment (:data:`CREDENTIAL_ENV`) go to the job unless ``forward_secrets`` is False;
    Ray shows them in its dashboard, so their names (never values) are echoed.
    """
    overrides = list(overrides)
    workload = load_workload(ref)
    cfg = workload.load_config(config_path, overrides)
    for item in overrides:
        key = item.partition("=")[0].strip()
        if is_secret_key(workload.config_cls, key):
            raise ConfigError(f"{key}: a secret in an override would be on the job's command line, which the Ray "
                              "dashboard shows; set its variable where you submit instead "
                              "(LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_PASSWORD, QDRANT_API_KEY)")
    runtime = getattr(cfg, "runtime", None)
    root = Path.cwd()
    entrypoint = build_entrypoint(ref, config_path, overrides, root)
    runtime_env = build_runtime_env(runtime.ray.runtime_env if runtime else {}, root, forward_secrets)
    shown = sorted(set(runtime_env["env_vars"]) & set(CREDENTIAL_ENV))
    if shown:
        echo(f"forwarding {', '.join(shown)} in the job's runtime env, which the Ray dashboard shows "
             "(--no-forward-secrets keeps them here)\n")
    client = _client(address)
    job_id = _submit_when_ready(client, entrypoint=entrypoint, runtime_env=runtime_env,
                                metadata={"workload": workload.name})
    echo(f"submitted job {job_id}: {entrypoint}\n")
    if not wait:
        return JobOutcome(job_id, "PENDING")
    try:
        asyncio.run(_tail(client, job_id, echo))
        info = _wait_terminal(client, job_id)
    except KeyboardInterrupt:
        echo(f"\nstopped following; the job goes on. Stop it with: ray job stop {job_id}\n")
        raise
    return JobOutcome(job_id, str(info.status), info.message)


def _client(address: str | None) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address, headers=_auth_headers())


def _auth_headers() -> dict[str, str]:
    """Ray 2.60 heads require a token by default: send the one `ray start` wrote when the user set nothing.

    Passed as a header rather than through RAY_AUTH_MODE, so the caller's process environment is left alone.
    """
    if os.environ.get("RAY_AUTH_MODE") or os.environ.get("RAY_AUTH_TOKEN"):
        return {}
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if not token_file.is_file():
        return {}
    return {"Authorization": f"Bearer {token_file.read_text().strip()}"}


def _submit_when_ready(client: Any, timeout_s: float = 90.0, **job: Any) -> str:
    """Submits the job, waiting while a freshly started head has no job agent yet (Ray answers 500 then)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)


async def _tail(client: Any, job_id: str, echo: Callable[[str], None]) -> None:
    async for lines in client.tail_job_logs(job_id):
        echo(lines)


def _wait_terminal(client: Any, job_id: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    info = client.get_job_info(job_id)
    while str(info.status) not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        info = client.get_job_info(job_id)
    return info


def _inside(root: Path, path: str, what: str) -> str:
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(root).as_posix()
    except ValueError:
        raise ConfigError(
            f"{what} {path} is outside the working directory {root}, which is what gets uploaded to the cluster; "
            "run fabric submit from a folder that holds it"
        ) from None
