"""Fixtures for the versioned data tests: a lakeFS store on the in-process stand-in, or on a real lakeFS."""

from __future__ import annotations

import os

import pytest

from tests.conftest import REAL_LAKEFS_ENDPOINT
from tests.fabric.data.lakefs_standin import StandIn, running_standin


@pytest.fixture(scope="session")
def lakefs_standin() -> StandIn:
    """One stand-in lakeFS server for the whole test session (each test uses its own repositories)."""
    with running_standin() as server:
        yield server


def real_lakefs_store():
    """A ``LakeFSStore`` on the real lakeFS that LAKEFS_ENDPOINT named when the tests started; else skips."""
    from fabric.data.lakefs_store import LakeFSStore

    if not REAL_LAKEFS_ENDPOINT:
        pytest.skip("set LAKEFS_ENDPOINT (and LAKECTL_CREDENTIALS_*) to run against a real lakeFS")
    return LakeFSStore(
        REAL_LAKEFS_ENDPOINT,
        os.environ.get("LAKECTL_CREDENTIALS_ACCESS_KEY_ID"),
        os.environ.get("LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY"),
        storage_namespace=os.environ.get("FABRIC_LAKEFS_NAMESPACE", "local://fabric/{repo}"),
    )


def standin_store(server: StandIn):
    from fabric.data.lakefs_store import LakeFSStore

    return LakeFSStore(server.endpoint, server.access_key_id, server.secret_access_key)


@pytest.fixture(params=["standin", "real"])
def lakefs_store(request):
    """A fresh ``LakeFSStore``: on the stand-in, and on the real lakeFS named by ``LAKEFS_ENDPOINT`` if set."""
    if request.param == "standin":
        return standin_store(request.getfixturevalue("lakefs_standin"))
    return real_lakefs_store()


@pytest.fixture(params=["local", "lakefs-standin", "lakefs-real"])
def store(request, tmp_path):
    """Every backend in turn, for the contract that all of them keep."""
    if request.param == "local":
        from fabric.data.local_store import LocalStore

        return LocalStore(tmp_path / "store")
    if request.param == "lakefs-standin":
        return standin_store(request.getfixturevalue("lakefs_standin"))
    return real_lakefs_store()
