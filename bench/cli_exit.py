"""Runs `fabric data head` 200 times on a small committed table and counts the exits that were not 0.

`fabric data head` used to abort now and then with SIGABRT ("terminate called without an active exception") after
printing the right rows: `pq.read_table` on the store's Python file object left buffers of the file on Arrow's
thread pool, and a pool thread that freed the last one while the interpreter exited took the GIL of a finalised
interpreter. `--control N` runs N heads the old way, in the same process shape, to show the loop catches it.

    python bench/cli_exit.py [--runs 200] [--control 0]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# `fabric data head` with head's reader swapped back to the pre-fix one (pq.read_table on the file object).
OLD_HEAD = """
import sys
import pyarrow.parquet as pq
from fabric.cli import app
from fabric.data import api

def old_first_rows(fs, path, n):
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle).slice(0, n)

api._first_rows = old_first_rows
app(["data", "head", sys.argv[1], "--json"], prog_name="fabric")
"""


def exits(argv: list[str], runs: int, env: dict[str, str]) -> tuple[collections.Counter, float, str]:
    """Exit codes of ``runs`` runs of ``argv``, the seconds they took, and the stderr of the first failure."""
    codes, first_error, start = collections.Counter(), "", time.perf_counter()
    for _ in range(runs):
        out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        codes[out.returncode] += 1
        if out.returncode and not first_error:
            first_error = out.stderr.strip()[-300:]
    return codes, time.perf_counter() - start, first_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--control", type=int, default=0, help="Also run the pre-fix head this many times.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cli-exit-") as home:
        env = {**os.environ, "FABRIC_HOME": home}
        fabric = [sys.executable, "-m", "fabric", "data"]
        table = Path(home) / "scores.csv"
        table.write_text("id,score,kind\n" + "".join(f"{i},{i / 100},{'ab'[i % 2]}\n" for i in range(100)))
        subprocess.run([*fabric, "init", "bench-exit"], check=True, capture_output=True, env=env)
        subprocess.run([*fabric, "put", "lakefs://bench-exit/main/scores", str(table), "-m", "bench"], check=True,
                       capture_output=True, env=env)
        uri = "lakefs://bench-exit/main/scores"
        codes, seconds, error = exits([*fabric, "head", uri, "--json"], args.runs, env)
        control = exits([sys.executable, "-c", OLD_HEAD, uri], args.control, env) if args.control else None
    nonzero = sum(n for code, n in codes.items() if code)
    print(f"fabric data head: {args.runs} runs in {seconds:.0f} s, exit codes {dict(codes)}")
    if error:
        print(f"first failure: {error}")
    if control:
        print(f"pre-fix head:     {args.control} runs in {control[1]:.0f} s, exit codes {dict(control[0])}")
    print(json.dumps({
        "bench": "cli_exit",
        "runs": args.runs,
        "nonzero_exits": nonzero,
        "sigabrt_exits": codes.get(-6, 0) + codes.get(134, 0),
        "seconds_per_run": round(seconds / max(args.runs, 1), 3),
        "control_runs": args.control,
        "control_nonzero_exits": sum(n for code, n in control[0].items() if code) if control else None,
        "meets_target": nonzero == 0,
    }))


if __name__ == "__main__":
    main()
