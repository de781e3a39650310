"""fabric/data/backends.py: configuration alone picks the backend; the same calls work on either."""

from __future__ import annotations

import pandas as pd
import pytest

from fabric import data
from fabric.config import ConfigError
from fabric.data.lakefs_store import LakeFSStore
from fabric.data.local_store import LocalStore
from fabric.runtime import RuntimeConfig


def test_embedded_default_is_the_local_store(fabric_home):
    store = data.open_store()
    assert isinstance(store, LocalStore) and store.root == fabric_home / "data"


def test_lakefs_endpoint_in_the_environment_selects_lakefs(monkeypatch, lakefs_standin):
    monkeypatch.setenv("LAKEFS_ENDPOINT", lakefs_standin.endpoint)
    monkeypatch.setenv("LAKECTL_CREDENTIALS_ACCESS_KEY_ID", lakefs_standin.access_key_id)
    monkeypatch.setenv("LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY", lakefs_standin.secret_access_key)
    assert isinstance(data.open_store(), LakeFSStore)
    data.init("by-env")  # no store argument: the default store is lakeFS now
    commit = data.write("lakefs://by-env/main/t", pd.DataFrame({"x": [1, 2, 3]}), "via env")
    assert data.resolve("lakefs://by-env/main") == commit
    assert data.head("lakefs://by-env/main/t")["x"].tolist() == [1, 2, 3]


def test_lakefs_from_config_without_credentials_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("LAKECTL_CREDENTIALS_ACCESS_KEY_ID", raising=False)
    runtime = RuntimeConfig.from_dict({"data_backend": "lakefs", "lakefs": {"endpoint": "http://127.0.0.1:9"}})
    with pytest.raises(data.DataError, match="no lakeFS credentials for http://127.0.0.1:9"):
        data.open_store(runtime)
    with pytest.raises(ConfigError, match="LAKEFS_ENDPOINT"):
        data.open_store(RuntimeConfig(data_backend="lakefs"))
