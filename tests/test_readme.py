"""The README's "write your own workload" example, run exactly as written there."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import last_json

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def example(name: str) -> str:
    """The fenced block right after ``<!-- example: NAME -->``."""
    match = re.search(rf"<!-- example: {re.escape(name)} -->\s*```\w*\n(.*?)```", README, re.S)
    assert match, f"README has no example block {name}"
    return match.group(1)


def commands() -> list[tuple[list[str], dict | None]]:
    """The example's shell lines that run locally, each with the result its comment promises."""
    block = README.split("<!-- example: my.yaml -->", 1)[1]
    shell = re.search(r"```bash\n(.*?)```", block, re.S).group(1)
    runs, previous = [], None
    for line in shell.splitlines():
        command, _, comment = line.partition("#")
        argv = shlex.split(command)
        if not argv or argv[:2] == ["fabric", "submit"]:
            continue
        comment = comment.strip()
        expected = json.loads(comment) if comment.startswith("{") else previous
        runs.append((argv, expected))
        previous = expected
    return runs


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "expected"), commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_readme_workload_example_runs_as_documented(argv, expected, tmp_path, cli_env):
    (tmp_path / "my_job.py").write_text(example("my_job.py"))
    (tmp_path / "my.yaml").write_text(example("my.yaml"))
    if argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    elif argv[0] == "fabric":
        argv = [sys.executable, "-m", "fabric", *argv[1:]]
    out = subprocess.run(argv, cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert expected is not None
    assert last_json(out.stdout, "sum_of_squares") == expected


def test_readme_has_exactly_the_two_setup_commands():
    setup = README.split("## Set up", 1)[1].split("##", 1)[0]
    block = re.search(r"```bash\n(.*?)```", setup, re.S).group(1)
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == ["make demo", "make test"]
