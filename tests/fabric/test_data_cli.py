"""`fabric data ...` against the embedded local store, through the real command line."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest


@pytest.fixture
def run(cli_env, tmp_path):
    env = {**cli_env, "FABRIC_HOME": str(tmp_path / "home")}

    def fabric(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, "-m", "fabric", "data", *args], capture_output=True, text=True,
                             env=env, cwd=tmp_path, timeout=300)
        if ok:
            assert out.returncode == 0, out.stderr
        return out

    return fabric


@pytest.fixture
def csv_v1(tmp_path) -> Path:
    path = tmp_path / "v1.csv"
    path.write_text("id,score,kind\n1,0.5,a\n2,0.7,b\n3,,a\n")
    return path


def test_put_branch_tag_log_head_diff_merge(run, csv_v1, tmp_path):
    repo = f"r{uuid.uuid4().hex[:8]}"
    created = json.loads(run("init", repo, "--json").stdout)
    put = json.loads(run("put", f"lakefs://{repo}/main/scores", str(csv_v1), "-m", "v1", "--meta", "source=unit",
                         "--json").stdout)
    assert put["rows"] == 3 and len(put["commit"]) == 64
    assert run("put", f"lakefs://{repo}/main/scores", str(csv_v1), "-m", "again").stdout.strip() != put["commit"]
    assert json.loads(run("branch", repo, "exp", "--from", put["commit"], "--json").stdout)["commit"] == put["commit"]
    assert json.loads(run("tag", repo, "v1", put["commit"], "--json").stdout)["commit"] == put["commit"]

    commits = json.loads(run("log", f"lakefs://{repo}/main", "--json").stdout)
    assert [c["message"] for c in commits] == ["again", "v1", "Repository created"]
    assert commits[1]["metadata"] == {"source": "unit"} and commits[-1]["id"] == created["commit"]

    rows = json.loads(run("head", f"lakefs://{repo}/v1/scores", "-n", "2", "--json").stdout)
    assert rows == [{"id": 1, "score": 0.5, "kind": "a"}, {"id": 2, "score": 0.7, "kind": "b"}]

    v2 = tmp_path / "v2.parquet"
    import pandas as pd

    pd.DataFrame({"id": [9], "score": [0.9], "kind": ["c"]}).to_parquet(v2)
    run("put", f"lakefs://{repo}/exp/extra", str(v2), "-m", "extra table")
    changes = json.loads(run("diff", repo, "main", "exp", "--json").stdout)
    assert {"path": "extra/part-00000.parquet", "type": "added"} in changes
    merged = json.loads(run("merge", repo, "exp", "--into", "main", "--json").stdout)
    assert json.loads(run("log", f"lakefs://{repo}/main", "-n", "1", "--json").stdout)[0]["id"] == merged["commit"]
    assert json.loads(run("head", f"lakefs://{repo}/main/extra", "--json").stdout) == [
        {"id": 9, "score": 0.9, "kind": "c"}
    ]


def test_merge_conflict_is_reported_and_changes_nothing(run, csv_v1, tmp_path):
    repo = f"r{uuid.uuid4().hex[:8]}"
    run("init", repo)
    run("put", f"lakefs://{repo}/main/t", str(csv_v1), "-m", "base")
    run("branch", repo, "other", "--from", "main")
    other = tmp_path / "other.csv"
    other.write_text("id,score,kind\n5,0.1,z\n")
    run("put", f"lakefs://{repo}/other/t", str(other), "-m", "theirs")
    mine = tmp_path / "mine.csv"
    mine.write_text("id,score,kind\n6,0.2,y\n")
    head = run("put", f"lakefs://{repo}/main/t", str(mine), "-m", "ours").stdout.strip()
    out = run("merge", repo, "other", "--into", "main", ok=False)
    assert out.returncode == 2 and "t/part-00000.parquet" in out.stderr
    assert json.loads(run("log", f"lakefs://{repo}/main", "-n", "1", "--json").stdout)[0]["id"] == head


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["head", "lakefs://nope"], "missing the ref"),
        (["head", "lakefs://nope/main/x"], "repository 'nope' does not exist"),
        (["log", "http://x/y"], "must look like lakefs://REPO/REF/PATH"),
        (["put", "lakefs://nope/main/x", "missing.csv", "-m", "m"], "file not found: missing.csv"),
    ],
)
def test_bad_input_is_a_clear_error(run, args, message):
    out = run(*args, ok=False)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "", "cannot read empty.csv as CSV: Empty CSV file"),
        ("ragged.csv", "a,b\n1,2\n3,4,5\n", "cannot read ragged.csv as CSV: CSV parse error: Expected 2 columns"),
        ("broken.parquet", "not parquet", "cannot read broken.parquet as PARQUET"),
    ],
)
def test_an_unreadable_file_is_an_error_naming_it(run, tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    out = run("put", "lakefs://unread/main/t", name, "-m", "m", ok=False)
    assert out.returncode == 2 and f"error: {message}" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_head_exits_zero_every_time(run, csv_v1):
    """`fabric data head` used to abort now and then (SIGABRT) after printing the right rows: Arrow freed a buffer
    of the file on its own thread while the interpreter exited. `python bench/cli_exit.py` runs it 200 times."""
    repo = f"r{uuid.uuid4().hex[:8]}"
    run("init", repo)
    run("put", f"lakefs://{repo}/main/scores", str(csv_v1), "-m", "v1")
    runs = [run("head", f"lakefs://{repo}/main/scores", "--json", ok=False) for _ in range(20)]
    assert [(out.returncode, out.stderr) for out in runs if out.returncode] == []
    assert all(json.loads(out.stdout)[0] == {"id": 1, "score": 0.5, "kind": "a"} for out in runs)
