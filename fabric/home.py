"""Where the fabric home is: found as git finds ``.git``, and never a Ray job's temporary upload folder.

``$FABRIC_HOME`` when set, else the nearest ``.fabric`` in the working directory or a folder above it, else a
new ``.fabric`` in the working directory. ``fabric doctor`` prints which one and why.

Example:
    >>> locate_home()  # run from a subfolder of a project that has a .fabric
    (PosixPath('/work/project/.fabric'), 'found')
"""

from __future__ import annotations

import os
from pathlib import Path

from fabric.config import ConfigError

__all__ = ["HOME_DIR", "JobHomeError", "fabric_home", "locate_home", "refuse_home_in_job_dir"]

HOME_DIR = ".fabric"


class JobHomeError(ConfigError):
    """A Ray job would keep its tracking or data store in its temporary working directory."""


def locate_home() -> tuple[Path, str]:
    """The fabric home and why it is that one: ``env`` (``$FABRIC_HOME``), ``found`` (the nearest ``.fabric`` in
    the working directory or a folder above it, as git finds ``.git``) or ``new`` (``./.fabric``, not made yet).
    """
    if os.environ.get("FABRIC_HOME"):
        return Path(os.environ["FABRIC_HOME"]).resolve(), "env"
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / HOME_DIR).is_dir():
            return folder / HOME_DIR, "found"
    return cwd / HOME_DIR, "new"


def fabric_home() -> Path:
    """The folder that holds everything embedded (see :func:`locate_home`)."""
    return locate_home()[0]


def _ray_job_dir() -> Path | None:
    """The working directory of the Ray job this process is the driver (or a worker) of; None outside a job.

    Ray 2.60's job supervisor gives the driver ``RAY_JOB_CONFIG_JSON_ENV_VAR``, and runs it in the job's
    ``working_dir`` unpacked under the session's ``runtime_resources`` folder, which Ray deletes later.
    """
    if not os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return None
    cwd = Path.cwd().resolve()
    return cwd if "runtime_resources" in cwd.parts else None


def refuse_home_in_job_dir(home: Path, tracking: bool, data: bool) -> None:
    """Raises :class:`JobHomeError` when this is a Ray job and ``home`` (holding the embedded tracking store when
    ``tracking``, the local data store when ``data``) lies in the job's temporary working directory."""
    job_dir = _ray_job_dir()
    if job_dir is None or not home.is_relative_to(job_dir):
        return
    stores = " and ".join(name for name, embedded in (("MLflow tracking store", tracking), ("data store", data))
                          if embedded)
    raise JobHomeError(
        f"this Ray job would keep its {stores} in {home}, inside the job's temporary working directory, where "
        "no one finds them and Ray deletes them: set FABRIC_HOME to an absolute folder the cluster keeps (and "
        "MLFLOW_TRACKING_URI for a tracking server), e.g. ray job submit --runtime-env-json "
        "'{\"env_vars\": {\"FABRIC_HOME\": \"/shared/fabric\"}}' ... (fabric submit forwards both when they are "
        "set where you submit)"
    )
