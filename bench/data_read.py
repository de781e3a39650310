"""Rows/s of `fabric.data.read(uri)` iterated to the end, next to `ray.data.read_parquet` and `pyarrow` on the same
files.

    python bench/data_read.py [--rows 6000000] [--repeats 5]

Writes a versioned Parquet dataset (several numeric and string columns, numpy with a fixed seed) with
`fabric.data.write("lakefs://bench/main/table", ...)` into a throw-away FABRIC_HOME, starts Ray once (not timed),
warms both readers up once, then times alternating repetitions of

* pyarrow: `pyarrow.parquet.read_table` on each physical file of the commit, in turn, counting rows (the ceiling);
* ray_data: `ray.data.read_parquet(paths)` on the commit's physical files with its defaults, what a user without
  fabric reaches for (the baseline);
* fabric:  `fabric.data.read(uri)` with its defaults.

Both Ray Datasets are iterated to the end the same way, with `ds.iter_batches(batch_size=None,
batch_format="pyarrow")`, counting rows. `batch_size=None` hands over Ray's blocks as they are (no re-batching) and
`pyarrow` is the zero-conversion format, so this is the cheapest full pass a Ray Data user can write; what it
measures is the read itself.

Each timing starts before the read call (planning, and for fabric resolving the ref, included) and stops after the
last batch. Prints the median of each, rows/s, the ratios and the first batch's time, and as its last line one JSON
object. Targets: fabric at least 1.0x of `ray.data.read_parquet` (versioning costs nothing) with its first batch no
later; and at least 0.8x of plain pyarrow.

A second, diagnostic phase repeats the pairs with `gc.collect()` (untimed) before every pass of either reader.
Ray Data 2.60's streaming executor sits in reference cycles that hold a finished execution's input blocks until
Python's cyclic GC runs, so without it each pass writes its blocks into object-store memory no pass has touched
yet, and first touches of shared memory are what the fabric reader loses most of its time to. Its ratio,
`ratio_gc_between_passes`, shows what the same read costs once the store's memory is reused; the headline ratio
is the first phase's.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

HOME = tempfile.mkdtemp(prefix="fabric-bench-data-read-")
os.environ["FABRIC_HOME"] = HOME  # before fabric is imported: never touch the user's data
for _name in ("LAKEFS_ENDPOINT", "LAKECTL_SERVER_ENDPOINT_URL"):  # the embedded local store, never a lakeFS server
    os.environ.pop(_name, None)

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402
import ray.data  # noqa: E402

from fabric import data  # noqa: E402

REPO = "bench"
URI = f"lakefs://{REPO}/main/table"
TARGET_RATIO = 0.8  # of pyarrow
TARGET_RATIO_RAY = 1.0  # of ray.data.read_parquet
CITIES = ["Berlin", "Lagos", "Lima", "Osaka", "Austin", "Pune", "Oslo", "Quito", "Perth", "Montreal", "Seoul", "Cairo"]
STATUSES = ["new", "paid", "shipped", "delivered", "returned", "cancelled"]


def make_table(rows: int, seed: int = 0) -> pa.Table:
    """An orders-like table: int64/int32/float64/bool columns plus low- and high-cardinality strings."""
    rng = np.random.default_rng(seed)
    sku = pc.binary_join_element_wise("SKU-", pc.cast(pa.array(rng.integers(0, 200_000, rows)), pa.string()), "")
    return pa.table({
        "order_id": np.arange(rows, dtype=np.int64),
        "customer_id": rng.integers(0, 1_000_000, rows, dtype=np.int64),
        "ts": pa.array(rng.integers(1_600_000_000, 1_700_000_000, rows), pa.int64()).cast(pa.timestamp("s")),
        "quantity": rng.integers(1, 50, rows, dtype=np.int32),
        "price": np.round(rng.gamma(2.0, 25.0, rows), 2),
        "discount": rng.random(rows),
        "score": rng.standard_normal(rows),
        "is_member": rng.random(rows) < 0.3,
        "city": pa.array(np.array(CITIES)[rng.integers(0, len(CITIES), rows)]),
        "status": pa.array(np.array(STATUSES)[rng.integers(0, len(STATUSES), rows)]),
        "sku": sku,
    })


def read_pyarrow(paths: list[str]) -> int:
    return sum(pq.read_table(path).num_rows for path in paths)


class RayRead:
    """A Ray Dataset made by ``make()`` iterated to the end; remembers when the first batch arrived."""

    def __init__(self, make: Callable[[], ray.data.Dataset]) -> None:
        self.make = make
        self.first_batch_s: list[float] = []

    def __call__(self) -> int:
        start = time.perf_counter()
        ds = self.make()
        rows = 0
        for i, batch in enumerate(ds.iter_batches(batch_size=None, batch_format="pyarrow")):
            if i == 0:
                self.first_batch_s.append(time.perf_counter() - start)
            rows += batch.num_rows
        return rows


def timed(name: str, fn: Callable[[], int], expected_rows: int) -> float:
    start = time.perf_counter()
    rows = fn()
    seconds = time.perf_counter() - start
    assert rows == expected_rows, f"{name} counted {rows} rows, not {expected_rows}"
    return seconds


def interleaved(readers: dict[str, Callable[[], int]], repeats: int, expected_rows: int,
                collect_first: bool = False) -> dict[str, list[float]]:
    """Seconds of each reader's passes, alternated, each reader going first every other time; with
    ``collect_first``, ``gc.collect()`` (untimed) before every pass, so no blocks are left over from earlier ones."""
    times: dict[str, list[float]] = {name: [] for name in readers}
    for repeat in range(repeats):
        for name in list(readers) if repeat % 2 == 0 else list(reversed(readers)):
            if collect_first:
                gc.collect()
            times[name].append(timed(name, readers[name], expected_rows))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6_000_000, help="rows in the dataset (at least 2,000,000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions of each reader")
    args = parser.parse_args()
    if args.rows < 2_000_000:
        parser.error("--rows must be at least 2,000,000")

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)

    try:
        table = make_table(args.rows)
        ray.init(address="local", num_cpus=2, include_dashboard=False)  # started once, outside every timing
        data.init(REPO)
        # A Ray Dataset is written one Parquet file per up to 1,000,000 rows, so the commit holds several files.
        commit = data.write(URI, ray.data.from_arrow(table), "bench dataset", metadata={"seed": "0"})
        del table
        _, paths = data.open_store().read_paths(REPO, commit, "table")
        row_groups = sum(pq.ParquetFile(path).metadata.num_row_groups for path in paths)
        size_mb = sum(os.path.getsize(path) for path in paths) / 1e6

        fabric_read, ray_read = RayRead(lambda: data.read(URI)), RayRead(lambda: ray.data.read_parquet(paths))
        readers: dict[str, Callable[[], int]] = {"pyarrow": lambda: read_pyarrow(paths), "ray_data": ray_read,
                                                 "fabric": fabric_read}
        for name, fn in readers.items():  # warm-up: page cache, Ray worker processes, imports
            timed(name, fn, args.rows)
        fabric_read.first_batch_s.clear()
        ray_read.first_batch_s.clear()
        times = interleaved(readers, args.repeats, args.rows)
        first_batch = statistics.median(fabric_read.first_batch_s)
        ray_first_batch = statistics.median(ray_read.first_batch_s)
        collected = interleaved(readers, args.repeats, args.rows, collect_first=True)  # the diagnostic phase
    finally:
        ray.shutdown()
        shutil.rmtree(HOME, ignore_errors=True)

    median = {name: statistics.median(values) for name, values in times.items()}
    rate = {name: args.rows / seconds for name, seconds in median.items()}
    ratio = rate["fabric"] / rate["pyarrow"]
    ratio_ray = rate["fabric"] / rate["ray_data"]
    median_gc = {name: statistics.median(values) for name, values in collected.items()}
    ratio_gc = median_gc["pyarrow"] / median_gc["fabric"]
    meets_ray = ratio_ray >= TARGET_RATIO_RAY and first_batch <= ray_first_batch

    print(f"{args.rows:,} rows, {len(paths)} files, {row_groups} row groups, {size_mb:.0f} MB; "
          f"median of {args.repeats} interleaved runs")
    print(f"{'reader':<44}{'median s':>10}{'min s':>8}{'max s':>8}{'Mrows/s':>9}{'ratio':>7}")
    labels = {"pyarrow": "pyarrow.parquet.read_table, file by file",
              "ray_data": "ray.data.read_parquet(paths).iter_batches", "fabric": "fabric.data.read(uri).iter_batches"}
    for name in readers:
        print(f"{labels[name]:<44}{median[name]:>10.3f}{min(times[name]):>8.3f}{max(times[name]):>8.3f}"
              f"{rate[name] / 1e6:>9.2f}{rate[name] / rate['pyarrow']:>7.2f}")
    print(f"first batch (median): fabric {first_batch:.3f} s, ray.data.read_parquet {ray_first_batch:.3f} s")
    print(f"fabric / ray.data.read_parquet {ratio_ray:.3f} (target {TARGET_RATIO_RAY}, first batch no later); "
          f"fabric / pyarrow {ratio:.3f} (target {TARGET_RATIO})")
    print(f"with gc.collect() before every pass: pyarrow {median_gc['pyarrow']:.3f} s, ray_data "
          f"{median_gc['ray_data']:.3f} s, fabric {median_gc['fabric']:.3f} s (medians), fabric / pyarrow "
          f"{ratio_gc:.2f}")
    print(json.dumps({
        "bench": "data_read",
        "rows": args.rows,
        "files": len(paths),
        "row_groups": row_groups,
        "repeats": args.repeats,
        "pyarrow_median_s": round(median["pyarrow"], 3),
        "ray_data_median_s": round(median["ray_data"], 3),
        "fabric_median_s": round(median["fabric"], 3),
        "fabric_first_batch_s": round(first_batch, 3),
        "ray_data_first_batch_s": round(ray_first_batch, 3),
        "pyarrow_rows_per_s": round(rate["pyarrow"]),
        "ray_data_rows_per_s": round(rate["ray_data"]),
        "fabric_rows_per_s": round(rate["fabric"]),
        "ratio": round(ratio, 3),
        "ratio_vs_ray_data": round(ratio_ray, 3),
        "target_ratio_vs_ray_data": TARGET_RATIO_RAY,
        "meets_target_vs_ray_data": meets_ray,
        "pyarrow_gc_median_s": round(median_gc["pyarrow"], 3),
        "fabric_gc_median_s": round(median_gc["fabric"], 3),
        "ratio_gc_between_passes": round(ratio_gc, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO and meets_ray,
    }))


if __name__ == "__main__":
    main()
