"""One contract for every versioned data backend, run on each: local, lakeFS stand-in, and a real lakeFS.

The real lakeFS runs when LAKEFS_ENDPOINT and LAKECTL_CREDENTIALS_* are set; otherwise that case is skipped.
"""

from __future__ import annotations

import threading
import uuid

import pandas as pd
import pytest

from fabric import data
from fabric.data import DataError, MergeConflictError, NotFoundError


@pytest.fixture
def repo(store) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    data.init(name, store=store)
    return name


def frame(version: int, rows: int = 20) -> pd.DataFrame:
    return pd.DataFrame({"id": range(rows), "value": [float(version * 100 + i) for i in range(rows)],
                         "label": [f"v{version}"] * rows})


def test_reading_a_commit_id_returns_that_version_exactly(store, repo, ray_session):
    data.branch(repo, "exp", source="main", store=store)
    v1 = data.write(f"lakefs://{repo}/exp/table", frame(1), "v1", metadata={"source": "test"}, store=store)
    v2 = data.write(f"lakefs://{repo}/exp/table", frame(2, rows=30), "v2", store=store)
    assert v1 != v2 and len(v1) == 64
    old = data.read(f"lakefs://{repo}/{v1}/table", store=store).take_all()
    assert sorted(old, key=lambda row: row["id"]) == frame(1).to_dict("records")
    new = data.read(f"lakefs://{repo}/exp/table", store=store).take_all()
    assert sorted(new, key=lambda row: row["id"]) == frame(2, rows=30).to_dict("records")
    assert data.resolve(f"lakefs://{repo}/exp", store=store) == v2
    assert data.pin(f"lakefs://{repo}/exp/table", store=store) == f"lakefs://{repo}/{v2}/table"
    pd.testing.assert_frame_equal(data.head(f"lakefs://{repo}/{v1}/table", n=3, store=store), frame(1).head(3))


def test_commits_record_message_metadata_and_parents(store, repo):
    start = data.resolve(f"lakefs://{repo}/main", store=store)
    c1 = data.write(f"lakefs://{repo}/main/a", frame(1), "first", metadata={"owner": "ml"}, store=store)
    c2 = data.write(f"lakefs://{repo}/main/b", frame(2), "second", store=store)
    history = data.log(f"lakefs://{repo}/main", store=store)
    assert [c.id for c in history[:3]] == [c2, c1, start]
    assert history[0].message == "second" and history[0].parents == [c1]
    assert history[1].metadata.get("owner") == "ml"
    assert history[0].time >= history[1].time > 0
    assert len(data.log(f"lakefs://{repo}/main", limit=1, store=store)) == 1


def test_branches_share_history_and_tags_are_fixed(store, repo):
    base = data.write(f"lakefs://{repo}/main/t", frame(1), "base", store=store)
    assert data.branch(repo, "feature", source="main", store=store) == base
    assert data.tag(repo, "v1.0", "main", store=store) == base
    data.write(f"lakefs://{repo}/main/t", frame(2), "moved on", store=store)
    assert data.resolve(f"lakefs://{repo}/v1.0", store=store) == base
    assert data.resolve(f"lakefs://{repo}/feature", store=store) == base
    assert store.list_files(repo, "feature", "t") == store.list_files(repo, base, "t")


def test_diff_names_added_removed_and_changed_paths(store, repo):
    data.write(f"lakefs://{repo}/main/keep", frame(1), "keep", store=store)
    data.write(f"lakefs://{repo}/main/edit", frame(1), "edit v1", store=store)
    data.branch(repo, "next", source="main", store=store)
    data.write(f"lakefs://{repo}/next/edit", frame(2), "edit v2", store=store)
    data.write(f"lakefs://{repo}/next/new", frame(3), "new", store=store)
    changes = {(c.path, c.type) for c in data.diff(repo, "main", "next", store=store)}
    assert changes == {("edit/part-00000.parquet", "changed"), ("new/part-00000.parquet", "added")}
    backwards = {(c.path, c.type) for c in data.diff(repo, "next", "main", store=store)}
    assert ("new/part-00000.parquet", "removed") in backwards


def test_merge_without_conflict_brings_both_sides(store, repo):
    data.write(f"lakefs://{repo}/main/shared", frame(1), "shared", store=store)
    data.branch(repo, "feature", source="main", store=store)
    data.write(f"lakefs://{repo}/feature/only_feature", frame(2), "feature work", store=store)
    data.write(f"lakefs://{repo}/main/only_main", frame(3), "main work", store=store)
    merged = data.merge(repo, "feature", into="main", store=store)
    assert data.resolve(f"lakefs://{repo}/main", store=store) == merged
    files = store.list_files(repo, "main", "")
    assert {"only_feature/part-00000.parquet", "only_main/part-00000.parquet", "shared/part-00000.parquet"} <= set(
        files
    )
    pd.testing.assert_frame_equal(data.head(f"lakefs://{repo}/main/only_feature", n=20, store=store), frame(2))


def test_merge_with_conflict_fails_naming_paths_and_changes_nothing(store, repo):
    data.write(f"lakefs://{repo}/main/table", frame(1), "base", store=store)
    data.branch(repo, "feature", source="main", store=store)
    data.write(f"lakefs://{repo}/feature/table", frame(2), "feature edit", store=store)
    data.write(f"lakefs://{repo}/main/table", frame(3), "main edit", store=store)
    before = store.list_branches(repo)
    with pytest.raises(MergeConflictError) as err:
        data.merge(repo, "feature", into="main", store=store)
    assert err.value.paths == ["table/part-00000.parquet"]
    assert "table/part-00000.parquet" in str(err.value)
    assert store.list_branches(repo) == before
    pd.testing.assert_frame_equal(data.head(f"lakefs://{repo}/main/table", n=20, store=store), frame(3))


def test_write_that_fails_halfway_leaves_no_trace(store, repo, monkeypatch, tmp_path):
    head = data.resolve(f"lakefs://{repo}/main", store=store)
    history = [c.id for c in data.log(f"lakefs://{repo}/main", store=store)]
    source = tmp_path / "two-files"
    source.mkdir()
    frame(1).to_parquet(source / "part-00000.parquet")
    frame(2).to_parquet(source / "part-00001.parquet")
    fail_after_first_file(store, monkeypatch)
    with pytest.raises(RuntimeError, match="injected"):
        store.commit_files(repo, "main", "table", source, "doomed", {})
    monkeypatch.undo()
    assert data.resolve(f"lakefs://{repo}/main", store=store) == head
    assert [c.id for c in data.log(f"lakefs://{repo}/main", store=store)] == history
    assert set(store.list_branches(repo)) == {"main"}
    assert store.list_files(repo, "main", "table") == []
    assert_no_orphans(store, repo)


def fail_after_first_file(store, monkeypatch) -> None:
    """Makes the backend's per-file step raise on the second file."""
    calls = {"n": 0}
    if type(store).__name__ == "LocalStore":
        target, method = type(store), "_store_object"
    else:
        from tests.fabric.data.lakefs_standin import upload_hook

        target, method = upload_hook()
    original = getattr(target, method)

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected failure after the first file")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, method, flaky)


def assert_no_orphans(store, repo) -> None:
    if type(store).__name__ != "LocalStore":
        return
    root = store.root / repo
    reachable = {c.id for b in store.list_branches(repo) for c in store.log(repo, b)}
    assert {p.stem for p in (root / "commits").glob("*.json")} == reachable
    assert list((root / "objects").rglob("*.parquet")) == []
    assert list(root.rglob("*.tmp")) == []


def test_concurrent_writers_to_one_branch_lose_no_commit(store, repo):
    ids: list[str] = []
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            ids.append(data.write(f"lakefs://{repo}/main/part{n}", frame(n), f"writer {n}", store=store))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    logged = {c.id for c in data.log(f"lakefs://{repo}/main", store=store)}
    assert set(ids) <= logged and len(set(ids)) == 4
    assert {f"part{n}/part-00000.parquet" for n in range(4)} <= set(store.list_files(repo, "main", ""))


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("lakefs://", "missing the repository"),
        ("lakefs://somerepo", "missing the ref"),
        ("lakefs://somerepo/main", "missing the path"),
        ("s3://bucket/key", "must look like lakefs://REPO/REF/PATH"),
    ],
)
def test_malformed_uris_name_the_missing_part(uri, message, store):
    with pytest.raises(DataError, match=message):
        data.head(uri, store=store)


def test_unknown_repo_and_ref_are_named(store, repo):
    with pytest.raises(NotFoundError, match="repository 'no-such-repo'"):
        data.resolve("lakefs://no-such-repo/main", store=store)
    with pytest.raises(NotFoundError, match="'no-such-branch'"):
        data.head(f"lakefs://{repo}/no-such-branch/table", store=store)
    with pytest.raises(NotFoundError, match="no files under 'missing'"):
        data.head(f"lakefs://{repo}/main/missing", store=store)


def test_gc_of_a_healthy_repository_removes_nothing(store, repo, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # no other test's writers in sight
    data.write(f"lakefs://{repo}/main/table", frame(1), "v1", store=store)
    data.branch(repo, "side", source="main", store=store)
    report = data.gc(repo, grace_s=0, store=store)
    assert report.removed == [] and not report.dry_run
    pd.testing.assert_frame_equal(data.head(f"lakefs://{repo}/side/table", n=20, store=store), frame(1))
    with pytest.raises(NotFoundError, match="repository 'no-such-repo'"):
        data.gc("no-such-repo", store=store)
