"""`fabric demo --quick`, as CI runs it: the closed loop from data to a retrained champion, told as a story."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import last_json

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_quick_retrains_on_drift_and_promotes_the_challenger(tmp_path, cli_env):
    env = {**cli_env, "FABRIC_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "fabric", "demo", "--quick", "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    result = last_json(out.stdout, "champion_after")
    assert int(result["champion_after"]) > int(result["champion_before"])  # the retrained version serves now
    assert result["pipeline_status"] == "promoted"
    assert result["drift_share"] >= 0.25 and "mean_area" in result["drifted_columns"]
    scores = result["scores"]
    assert scores["challenger"] > scores["champion"], scores  # better on the same recent held-out rows
    report = Path(result["report_html"])
    assert report.is_file() and report.stat().st_size > 10_000 and report.read_text().lstrip().startswith("<")
    assert Path(result["report_json"]).is_file()
    # The story, not the machinery: the table of steps is there and the libraries' INFO lines are not.
    for step in ("champion", "monitor", "alert", "ct.snapshot", "ct.canary", "ct.finish"):
        assert step in out.stdout, step
    assert " INFO " not in out.stdout and "INFO" not in out.stderr
    assert Path(result["log"]).is_file()
