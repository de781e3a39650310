"""What only the embedded store can show: files on disk, other processes, a writer killed mid-commit."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pandas as pd

from fabric import data
from fabric.data.local_store import LocalStore


def objects(store: LocalStore, repo: str) -> set[str]:
    return {p.name for p in (store.root / repo / "objects").rglob("*.parquet")}


def test_branching_copies_no_data(tmp_path):
    store = LocalStore(tmp_path)
    data.init("zero", store=store)
    data.write("lakefs://zero/main/t", pd.DataFrame({"x": range(1000)}), "base", store=store)
    before = objects(store, "zero")
    for n in range(5):
        data.branch("zero", f"b{n}", source="main", store=store)
    assert objects(store, "zero") == before
    data.write("lakefs://zero/b0/t", pd.DataFrame({"x": range(1000)}), "same rows again", store=store)
    assert objects(store, "zero") == before  # identical content is stored once


def _write_many(root: str, worker: int, count: int) -> None:
    store = LocalStore(root)
    for n in range(count):
        data.write(f"lakefs://procs/main/w{worker}", pd.DataFrame({"n": [n]}), f"w{worker}-{n}", store=store)


def test_writers_in_separate_processes_lose_no_commit(tmp_path):
    store = LocalStore(tmp_path)
    data.init("procs", store=store)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(str(tmp_path), w, 5)) for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    messages = {c.message for c in data.log("lakefs://procs/main", store=store)}
    assert {f"w{w}-{n}" for w in range(3) for n in range(5)} <= messages
    history = data.log("lakefs://procs/main", store=store)
    assert all(len(c.parents) == 1 for c in history[:-1])  # one straight line of 15 commits after the first


def _killed_mid_commit(root: str) -> None:
    store = LocalStore(root)
    original = LocalStore._write_commit

    def write_commit_then_die(self, *args, **kwargs):
        original(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)  # after the commit file, before the branch moves

    LocalStore._write_commit = write_commit_then_die
    data.write("lakefs://crash/main/t", pd.DataFrame({"x": [1, 2]}), "never lands", store=store)


def test_a_writer_killed_mid_commit_leaves_the_branch_where_it_was(tmp_path):
    store = LocalStore(tmp_path)
    data.init("crash", store=store)
    head = data.resolve("lakefs://crash/main", store=store)
    process = multiprocessing.get_context("spawn").Process(target=_killed_mid_commit, args=(str(tmp_path),))
    process.start()
    process.join(120)
    assert process.exitcode == -signal.SIGKILL
    assert data.resolve("lakefs://crash/main", store=store) == head
    assert [c.message for c in data.log("lakefs://crash/main", store=store)] == ["Repository created"]
    data.write("lakefs://crash/main/t", pd.DataFrame({"x": [3]}), "after the crash", store=store)  # lock released
    assert data.head("lakefs://crash/main/t", store=store)["x"].tolist() == [3]


def test_read_one_block_per_file_some_columns_or_read_parquet_options(tmp_path, ray_session):
    import ray.data

    store = LocalStore(tmp_path)
    data.init("reads", store=store)
    frame = pd.DataFrame({"a": range(2_500), "b": [f"s{i}" for i in range(2_500)]})
    data.write("lakefs://reads/main/t", ray.data.from_pandas(frame).repartition(1), "one file", store=store)
    ds = data.read("lakefs://reads/main/t", store=store, columns=["b"])
    assert ds.schema().names == ["b"] and ds.count() == 2_500
    assert sorted(r["b"] for r in ds.take_all()) == sorted(frame["b"])
    via_parquet = data.read("lakefs://reads/main/t", store=store, override_num_blocks=4)
    assert sorted(r["a"] for r in via_parquet.take_all()) == list(range(2_500))


def test_create_if_missing_writes_once_and_then_leaves_the_data_alone(tmp_path):
    store = LocalStore(tmp_path)
    calls = []

    def make() -> pd.DataFrame:
        calls.append(1)
        return pd.DataFrame({"x": [1, 2, 3]})

    commit = data.create_if_missing("lakefs://fresh/main/t", make, "Create t", {"source": "test"}, store=store)
    assert data.resolve("lakefs://fresh/main", store=store) == commit
    assert data.log("lakefs://fresh/main", store=store)[0].metadata == {"source": "test"}
    assert data.create_if_missing("lakefs://fresh/main/t", make, "Create t again", store=store) is None
    assert len(calls) == 1 and data.head("lakefs://fresh/main/t", store=store)["x"].tolist() == [1, 2, 3]


def test_objects_are_synced_to_disk_before_the_commit_that_names_them(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    data.init("sync", store=store)
    synced: list[str] = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    frame = pd.DataFrame({"x": range(10)})
    commit = data.write("lakefs://sync/main/t", frame, "synced", store=store)
    commit_synced = next(i for i, path in enumerate(synced) if f"/commits/.{commit}.json." in path)
    for name in store._tree("sync", commit).values():
        assert any(f"/objects/{name[:2]}/.{name}." in path for path in synced[:commit_synced]), name
