"""Runs every benchmark in bench/ and prints one table of their figures (`make bench`).

Each benchmark prints, as its last line, one JSON object with its figures and ratios.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    rows, failed = [], []
    for script in sorted(HERE.glob("*.py")):
        if script.name == Path(__file__).name or script.name.startswith("_"):
            continue
        print(f"== {script.name}", flush=True)
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=HERE.parent)
        lines = out.stdout.strip().splitlines()
        try:
            figures = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            failed.append(script.name)
            print(out.stdout[-2000:], out.stderr[-2000:], sep="\n")
            continue
        print(lines[-1], flush=True)
        rows += [(script.stem, key, value) for key, value in figures.items() if key != "bench"]
    width = max((len(f"{b}.{k}") for b, k, _ in rows), default=10)
    print(f"\n{'figure':<{width}}  value")
    for bench, key, value in rows:
        print(f"{bench + '.' + key:<{width}}  {value}")
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
