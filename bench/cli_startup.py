"""How long `fabric --help` takes, next to a bare Python start in the same run. Target: under 2 s.

    python bench/cli_startup.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

REPEATS = 7


def median_seconds(argv: list[str]) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    bare = median_seconds([sys.executable, "-c", "pass"])
    help_s = median_seconds([sys.executable, "-m", "fabric", "--help"])
    doctor_s = median_seconds([sys.executable, "-m", "fabric", "doctor", "--json"])
    print(f"{'command':<28}{'median s':>10}")
    for name, value in (("python -c pass", bare), ("fabric --help", help_s), ("fabric doctor --json", doctor_s)):
        print(f"{name:<28}{value:>10.3f}")
    print(json.dumps({
        "bench": "cli_startup",
        "python_startup_s": round(bare, 3),
        "fabric_help_s": round(help_s, 3),
        "fabric_doctor_s": round(doctor_s, 3),
        "help_over_python": round(help_s / bare, 2),
        "target_help_s": 2.0,
        "meets_target": help_s < 2.0,
    }))


if __name__ == "__main__":
    main()
