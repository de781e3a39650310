"""Tests of fabric/data/lakefs_store.py against the lakeFS stand-in (and a real lakeFS when LAKEFS_ENDPOINT is set)."""

from __future__ import annotations

import pickle
import threading
import uuid
from pathlib import Path

import lakefs
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fabric.data.lakefs_store import LakeFSStore
from fabric.data.store import DataError, MergeConflictError, NotFoundError
from tests.fabric.data.lakefs_standin import upload_hook


def new_repo(store: LakeFSStore) -> tuple[str, str]:
    """A fresh repository and the id of its initial commit."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    return name, store.create_repo(name)


def table(version: int, rows: int = 5) -> pa.Table:
    return pa.table({"id": list(range(rows)), "value": [version * 100 + i for i in range(rows)]})


def folder(root: Path, name: str, files: dict[str, pa.Table]) -> Path:
    """A local folder holding each table as a Parquet file at its relative name."""
    out = root / name
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(data, out / rel)
    return out


def read_all(store: LakeFSStore, repo: str, ref: str, prefix: str) -> dict[str, pa.Table]:
    fs, paths = store.read_paths(repo, ref, prefix)
    return {path.split("/", 2)[2]: pq.read_table(path, filesystem=fs) for path in paths}


def hidden_branches(store: LakeFSStore, repo: str) -> list[str]:
    refs = store._client.sdk_client.branches_api.list_branches(repo, show_hidden=True).results
    return [ref.id for ref in refs]


def test_create_repo_makes_an_initial_commit(lakefs_store):
    repo, head = new_repo(lakefs_store)
    assert len(head) == 64 and int(head, 16) >= 0
    assert lakefs_store.list_branches(repo) == {"main": head}
    assert [c.id for c in lakefs_store.log(repo, "main")] == [head]
    assert lakefs_store.create_repo(repo, exist_ok=True) == head
    with pytest.raises(DataError, match=f"repository '{repo}' already exists"):
        lakefs_store.create_repo(repo)


def test_commit_v1_then_v2_and_read_v1_by_commit_id(lakefs_store, tmp_path):
    repo, _ = new_repo(lakefs_store)
    v1_files = {"part-0.parquet": table(1), "part-1.parquet": table(2)}
    v1 = lakefs_store.commit_files(repo, "main", "train", folder(tmp_path, "v1", v1_files), "v1", {"rows": "10"})
    v2 = lakefs_store.commit_files(
        repo, "main", "train/", folder(tmp_path, "v2", {"part-0.parquet": table(3)}), "v2", {}
    )
    assert v1 != v2 and len(v2) == 64
    assert read_all(lakefs_store, repo, v1, "train") == {f"train/{k}": v for k, v in v1_files.items()}
    assert read_all(lakefs_store, repo, "main", "train") == {"train/part-0.parquet": table(3)}
    assert lakefs_store.list_files(repo, v1, "train") == ["train/part-0.parquet", "train/part-1.parquet"]
    commit = lakefs_store.get_commit(repo, v1)
    assert (commit.message, commit.metadata, commit.time > 0) == ("v1", {"rows": "10"}, True)
    history = lakefs_store.log(repo, "main")
    assert [c.id for c in history[:2]] == [v2, v1] and history[0].parents == [v1] and len(history) == 3
    assert [c.id for c in lakefs_store.log(repo, "main", limit=1)] == [v2]


def test_commit_files_replaces_only_its_prefix(lakefs_store, tmp_path):
    repo, _ = new_repo(lakefs_store)
    lakefs_store.commit_files(repo, "main", "a", folder(tmp_path, "a", {"x.parquet": table(1)}), "a", {})
    nested = {"x.parquet": table(2), "sub/y.parquet": table(3)}
    lakefs_store.commit_files(repo, "main", "b", folder(tmp_path, "b", nested), "b", {})
    lakefs_store.commit_files(repo, "main", "b", folder(tmp_path, "b2", {"z.parquet": table(4)}), "b2", {})
    assert lakefs_store.list_files(repo, "main", "") == ["a/x.parquet", "b/z.parquet"]
    assert lakefs_store.list_files(repo, "main", "b") == ["b/z.parquet"]


def test_read_paths_gives_a_pickleable_filesystem(lakefs_store, tmp_path):
    repo, _ = new_repo(lakefs_store)
    commit = lakefs_store.commit_files(repo, "main", "t", folder(tmp_path, "t", {"p.parquet": table(1)}), "m", {})
    fs, paths = lakefs_store.read_paths(repo, "main", "t")
    assert paths == [f"{repo}/{commit}/t/p.parquet"]
    clone = pickle.loads(pickle.dumps(fs))
    assert pq.read_table(paths[0], filesystem=clone) == table(1)
    with clone.open(paths[0], "rb") as handle:  # ranged reads, as pyarrow does them
        handle.seek(-4, 2)
        assert handle.read() == b"PAR1"


def test_branches_and_tags_resolve_to_commit_ids(lakefs_store, tmp_path):
    repo, head = new_repo(lakefs_store)
    assert lakefs_store.create_branch(repo, "dev", "main") == head
    commit = lakefs_store.commit_files(repo, "dev", "t", folder(tmp_path, "t", {"p.parquet": table(1)}), "m", {})
    assert lakefs_store.create_tag(repo, "v1", "dev") == commit
    lakefs_store.commit_files(repo, "dev", "t", folder(tmp_path, "t2", {"p.parquet": table(2)}), "m2", {})
    assert lakefs_store.resolve(repo, "v1") == commit
    assert lakefs_store.resolve(repo, commit) == commit
    assert lakefs_store.resolve(repo, "main") == head
    assert set(lakefs_store.list_branches(repo)) == {"main", "dev"}
    with pytest.raises(DataError, match="branch 'dev' already exists"):
        lakefs_store.create_branch(repo, "dev", "main")
    with pytest.raises(DataError, match="tag 'v1' already exists"):
        lakefs_store.create_tag(repo, "v1", "main")


def test_unknown_repository_and_ref_are_named(lakefs_store, tmp_path):
    repo, _ = new_repo(lakefs_store)
    with pytest.raises(NotFoundError, match="repository 'no-such-repo' does not exist"):
        lakefs_store.resolve("no-such-repo", "main")
    with pytest.raises(NotFoundError, match="repository 'no-such-repo' does not exist"):
        lakefs_store.list_branches("no-such-repo")
    with pytest.raises(NotFoundError, match=f"'nope' does not exist in repository '{repo}'"):
        lakefs_store.resolve(repo, "nope")
    with pytest.raises(NotFoundError, match=f"'nope' does not exist in repository '{repo}'"):
        lakefs_store.log(repo, "nope")
    with pytest.raises(NotFoundError, match=f"'nope' does not exist in repository '{repo}'"):
        lakefs_store.create_branch(repo, "dev", "nope")
    with pytest.raises(NotFoundError, match=f"branch 'nope' does not exist in repository '{repo}'"):
        lakefs_store.commit_files(repo, "nope", "t", folder(tmp_path, "t", {"p.parquet": table(1)}), "m", {})


def test_diff_reports_added_removed_and_changed(lakefs_store, tmp_path):
    repo, _ = new_repo(lakefs_store)
    left = lakefs_store.commit_files(
        repo,
        "main",
        "d",
        folder(tmp_path, "l", {"keep.parquet": table(1), "edit.parquet": table(1), "gone.parquet": table(1)}),
        "left",
        {},
    )
    right = lakefs_store.commit_files(
        repo,
        "main",
        "d",
        folder(tmp_path, "r", {"keep.parquet": table(1), "edit.parquet": table(2), "new.parquet": table(3)}),
        "right",
        {},
    )
    changes = {(c.path, c.type) for c in lakefs_store.diff(repo, left, right)}
    assert changes == {("d/edit.parquet", "changed"), ("d/gone.parquet", "removed"), ("d/new.parquet", "added")}
    backwards = {(c.path, c.type) for c in lakefs_store.diff(repo, right, left, prefix="d")}
    assert backwards == {("d/edit.parquet", "changed"), ("d/gone.parquet", "added"), ("d/new.parquet", "removed")}
    assert lakefs_store.diff(repo, left, right, prefix="other") == []


def test_merge_without_conflict_brings_both_sides(lakefs_store, tmp_path):
    repo, _ = new_repo(lakefs_store)
    lakefs_store.create_branch(repo, "feature", "main")
    ours = lakefs_store.commit_files(repo, "feature", "f", folder(tmp_path, "f", {"p.parquet": table(1)}), "f", {})
    theirs = lakefs_store.commit_files(repo, "main", "m", folder(tmp_path, "m", {"p.parquet": table(2)}), "m", {})
    merged = lakefs_store.merge(repo, "feature", "main", message="bring feature in")
    assert lakefs_store.resolve(repo, "main") == merged
    commit = lakefs_store.get_commit(repo, merged)
    assert commit.message == "bring feature in" and set(commit.parents) == {ours, theirs}
    assert lakefs_store.list_files(repo, "main", "") == ["f/p.parquet", "m/p.parquet"]
    assert lakefs_store.merge(repo, "feature", "main") == merged  # nothing left to merge


def test_merge_conflict_names_the_paths_and_changes_nothing(lakefs_store, tmp_path):
    repo, _ = new_repo(lakefs_store)
    lakefs_store.commit_files(
        repo, "main", "t", folder(tmp_path, "base", {"p.parquet": table(1), "q.parquet": table(1)}), "base", {}
    )
    lakefs_store.create_branch(repo, "feature", "main")
    lakefs_store.commit_files(
        repo, "feature", "t", folder(tmp_path, "f", {"p.parquet": table(2), "q.parquet": table(1)}), "f", {}
    )
    head = lakefs_store.commit_files(
        repo, "main", "t", folder(tmp_path, "m", {"p.parquet": table(3), "q.parquet": table(1)}), "m", {}
    )
    history = [c.id for c in lakefs_store.log(repo, "main")]
    with pytest.raises(MergeConflictError, match="t/p.parquet") as err:
        lakefs_store.merge(repo, "feature", "main")
    assert err.value.paths == ["t/p.parquet"]
    assert lakefs_store.resolve(repo, "main") == head
    assert [c.id for c in lakefs_store.log(repo, "main")] == history


def test_failed_upload_leaves_no_commit_no_staging_and_no_temp_branch(lakefs_store, tmp_path, monkeypatch):
    repo, _ = new_repo(lakefs_store)
    head = lakefs_store.commit_files(repo, "main", "t", folder(tmp_path, "v1", {"old.parquet": table(1)}), "v1", {})
    history = [c.id for c in lakefs_store.log(repo, "main")]
    target, method = upload_hook()
    original, calls = getattr(target, method), []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("injected failure after the first file")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, method, flaky)
    source = folder(tmp_path, "v2", {"a.parquet": table(2), "b.parquet": table(3)})
    with pytest.raises(RuntimeError, match="injected"):
        lakefs_store.commit_files(repo, "main", "t", source, "doomed", {})
    monkeypatch.undo()
    assert lakefs_store.resolve(repo, "main") == head
    assert [c.id for c in lakefs_store.log(repo, "main")] == history
    assert lakefs_store.list_files(repo, "main", "t") == ["t/old.parquet"]
    assert list(lakefs.repository(repo, client=lakefs_store._client).branch("main").uncommitted()) == []
    assert hidden_branches(lakefs_store, repo) == ["main"]


@pytest.mark.parametrize("same_prefix", [False, True], ids=["two-prefixes", "one-prefix"])
def test_concurrent_commit_files_on_one_branch_both_land(lakefs_store, tmp_path, same_prefix):
    repo, _ = new_repo(lakefs_store)
    sources = [folder(tmp_path, f"w{n}", {f"w{n}-{i}.parquet": table(n) for i in range(3)}) for n in range(2)]
    start, ids, errors = threading.Barrier(2), {}, []

    def writer(n: int) -> None:
        start.wait()
        try:
            prefix = "shared" if same_prefix else f"p{n}"
            ids[n] = lakefs_store.commit_files(repo, "main", prefix, sources[n], f"writer {n}", {"n": str(n)})
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    history = lakefs_store.log(repo, "main")
    assert set(ids.values()) <= {c.id for c in history} and len(history) == 3
    files = lakefs_store.list_files(repo, "main", "")
    if same_prefix:  # serialised replacements: the later one's files, exactly
        last = 0 if history[0].id == ids[0] else 1
        assert files == [f"shared/w{last}-{i}.parquet" for i in range(3)]
    else:
        assert files == [f"p{n}/w{n}-{i}.parquet" for n in range(2) for i in range(3)]
    assert hidden_branches(lakefs_store, repo) == ["main"]


def test_commit_files_rejects_a_missing_source_dir(lakefs_store, tmp_path):
    repo, _ = new_repo(lakefs_store)
    with pytest.raises(DataError, match="is not a directory"):
        lakefs_store.commit_files(repo, "main", "t", tmp_path / "absent", "m", {})


def test_constructor_needs_credentials(monkeypatch):
    monkeypatch.delenv("LAKECTL_CREDENTIALS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(DataError, match="LAKECTL_CREDENTIALS_ACCESS_KEY_ID"):
        LakeFSStore("http://127.0.0.1:1", None, None)


def test_wrong_credentials_are_reported(lakefs_standin):
    store = LakeFSStore(lakefs_standin.endpoint, "AKIAWRONG", "wrong")
    with pytest.raises(DataError, match="rejected the credentials"):
        store.list_branches("any-repo")


@pytest.mark.slow
def test_ray_data_reads_the_paths(lakefs_store, tmp_path, ray_session):
    import ray.data

    repo, _ = new_repo(lakefs_store)
    files = {"part-0.parquet": table(1), "part-1.parquet": table(2)}
    commit = lakefs_store.commit_files(repo, "main", "t", folder(tmp_path, "t", files), "m", {})
    fs, paths = lakefs_store.read_paths(repo, commit, "t")
    rows = ray.data.read_parquet(paths, filesystem=fs).take_all()
    assert sorted(row["value"] for row in rows) == sorted(table(1)["value"].to_pylist() + table(2)["value"].to_pylist())
