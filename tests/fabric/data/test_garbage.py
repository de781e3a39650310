"""`fabric.data.gc` on the local store: what a writer killed with kill -9 leaves behind, and only that, goes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from fabric import data
from fabric.data.local_store import LocalStore
from fabric.files import locked


@pytest.fixture
def tmpdir_(tmp_path, monkeypatch) -> Path:
    """A temp folder of this test's own, for this process and the writers it starts."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _killed_after_commit(root: str) -> None:
    """Writes a commit, then dies with SIGKILL before its branch moves: an orphan commit, its objects and the
    writer's temp folder stay behind."""
    original = LocalStore._write_commit

    def write_commit_then_die(self, *args, **kwargs):
        original(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    LocalStore._write_commit = write_commit_then_die
    data.write("lakefs://gcr/main/t", pd.DataFrame({"x": range(100, 200)}), "never lands", store=LocalStore(root))


def _kill_a_writer(root: Path) -> None:
    process = multiprocessing.get_context("spawn").Process(target=_killed_after_commit, args=(str(root),))
    process.start()
    process.join(120)
    assert process.exitcode == -signal.SIGKILL


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and p.name != "lock"}


def test_gc_removes_what_a_killed_writer_left_and_keeps_every_ref(tmp_path, tmpdir_):
    store = LocalStore(tmp_path / "store")
    data.init("gcr", store=store)
    data.write("lakefs://gcr/main/t", pd.DataFrame({"x": [1, 2]}), "kept", store=store)
    data.branch("gcr", "side", source="main", store=store)
    data.write("lakefs://gcr/side/t", pd.DataFrame({"x": [3]}), "kept on a branch", store=store)
    data.tag("gcr", "v1", "main", store=store)
    kept = _files(store.root)
    _kill_a_writer(store.root)
    left = _files(store.root) - kept
    assert {p.parent.name for p in left} >= {"commits"} and any(p.suffix == ".parquet" for p in left)
    assert [p.name.split(".")[0] for p in tmpdir_.iterdir()] == ["fabric-write-gcr"]

    assert data.gc("gcr", store=store).removed == []  # all of it is younger than the grace period
    dry = data.gc("gcr", grace_s=0, dry_run=True, store=store)
    assert {Path(r.path) for r in dry.removed if r.kind != "temp"} == left and dry.count("temp") == 1
    assert dry.bytes == sum(p.stat().st_size for p in left) + sum(
        p.stat().st_size for p in tmpdir_.rglob("*") if p.is_file())
    assert _files(store.root) - kept == left  # a dry run deletes nothing

    report = data.gc("gcr", grace_s=0, store=store)
    assert report.to_dict() == {**dry.to_dict(), "dry_run": False}
    assert _files(store.root) == kept and list(tmpdir_.iterdir()) == []
    assert data.head("lakefs://gcr/main/t", store=store)["x"].tolist() == [1, 2]
    assert data.head("lakefs://gcr/side/t", store=store)["x"].tolist() == [3]
    assert [c.message for c in data.log("lakefs://gcr/v1", store=store)] == ["kept", "Repository created"]
    assert data.gc("gcr", grace_s=0, store=store).removed == []


def test_gc_keeps_the_temp_folder_of_a_live_writer_and_removes_stale_temp_files(tmp_path, tmpdir_):
    store = LocalStore(tmp_path / "store")
    data.init("gcr", store=store)
    live = tmpdir_ / f"fabric-write-gcr.{os.getpid()}.abc123"
    other_repo = tmpdir_ / "fabric-write-other.999999999.abc123"
    legacy = tmpdir_ / "fabric-write-k2j4h5g6"
    for folder in (live, other_repo, legacy):
        folder.mkdir()
        (folder / "part-00000.parquet").write_bytes(b"x" * 10)
    partial = store.root / "gcr" / "objects" / "ab" / ".abcd.parquet.x1y2.tmp"
    partial.parent.mkdir()
    partial.write_bytes(b"half an object")
    report = data.gc("gcr", grace_s=0, store=store)
    assert sorted((r.kind, Path(r.path).name) for r in report.removed) == [("temp", partial.name),
                                                                           ("temp", legacy.name)]
    assert live.is_dir() and other_repo.is_dir() and not legacy.exists() and not partial.exists()


def test_gc_waits_for_the_store_lock(tmp_path, tmpdir_):
    store = LocalStore(tmp_path / "store")
    data.init("gcr", store=store)
    done = threading.Event()
    with locked(store.root / "gcr" / "lock"):  # a writer between adding objects and moving its branch
        worker = threading.Thread(target=lambda: (data.gc("gcr", grace_s=0, store=store), done.set()))
        worker.start()
        time.sleep(0.5)
        assert not done.is_set()
    worker.join(30)
    assert done.is_set()


def test_gc_cli_dry_run_lists_then_deletes(tmp_path, tmpdir_, cli_env):
    import json
    import subprocess
    import sys

    env = {**cli_env, "FABRIC_HOME": str(tmp_path / "home"), "TMPDIR": str(tmpdir_)}

    def fabric(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fabric", "data", *args], capture_output=True, text=True,
                              env=env, timeout=120)

    assert fabric("init", "gcr").returncode == 0
    stale = tmpdir_ / "fabric-write-gcr.999999999.abc123"
    stale.mkdir()
    (stale / "part-00000.parquet").write_bytes(b"x" * 1000)
    listed = fabric("gc", "gcr", "--grace", "0s", "--dry-run")
    assert listed.returncode == 0 and str(stale) in listed.stdout and "would remove 0 objects" in listed.stdout
    assert stale.is_dir()
    removed = json.loads(fabric("gc", "gcr", "--grace", "0", "--json").stdout)
    assert (removed["temp"], removed["bytes"], removed["dry_run"]) == (1, 1000, False) and not stale.exists()
    bad = fabric("gc", "gcr", "--grace", "soon")
    assert bad.returncode == 2 and "error: --grace takes a duration" in bad.stderr
