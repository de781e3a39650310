"""fabric/home.py: the home is found as git finds .git."""

from __future__ import annotations

from fabric.home import locate_home
from fabric.runtime import resolve_stack


def test_home_is_found_in_an_enclosing_folder_as_git_finds_dot_git(tmp_path, monkeypatch):
    monkeypatch.delenv("FABRIC_HOME")
    (tmp_path / "project" / ".fabric").mkdir(parents=True)
    (tmp_path / "project" / "src" / "deep").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "project" / "src" / "deep")
    assert locate_home() == (tmp_path / "project" / ".fabric", "found")
    monkeypatch.chdir(tmp_path)  # nothing here or above: a new home in the current folder
    assert locate_home() == (tmp_path / ".fabric", "new")
    monkeypatch.setenv("FABRIC_HOME", str(tmp_path / "elsewhere"))
    assert locate_home() == (tmp_path / "elsewhere", "env")


def test_the_stack_lives_in_the_home_found_above(tmp_path, monkeypatch):
    monkeypatch.delenv("FABRIC_HOME")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / ".fabric").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    stack = resolve_stack()
    assert stack.data_location == str(tmp_path / ".fabric" / "data")
    assert stack.mlflow_tracking_uri == f"sqlite:///{tmp_path}/.fabric/mlflow/mlflow.db"
