"""Ray Datasets over the Parquet files of one commit: read at once when they fit, else streamed.

A commit's file list never changes, so there is nothing to discover: this module reads each file's footer here
(row counts, sizes, schema) and reads one block per file. ``ray.data.read_parquet`` instead lists the paths and
samples footers with a pool of actors on every call, which on a small cluster costs seconds before the first row
arrives (measured in ``bench/data_read.py``).

Two ways to run the same reads, picked by :func:`read_commit`:

* eager: one plain Ray task per file, started at once, wrapped in a materialised Dataset. Ray Data's streaming
  executor costs about 0.3 s before the first batch, and on 2 CPUs its read tasks often ran one at a time (its
  backpressure policies held the second back), so a full pass through the lazy path took about 2.2x as long as
  ``pyarrow.parquet.read_table``; plain tasks run on every CPU from the first moment and overlap that start-up
  (1.2x to 1.4x). The Dataset holds every block in the object store while it lives, so this path is taken only
  when the data fits there comfortably. Like any ``from_arrow`` Dataset it reports no ``input_files()``.
* lazy: :class:`CommitFiles`, a Ray Datasource streamed by Ray Data, for anything larger.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ray
from ray.data.block import BlockMetadata, BlockMetadataWithSchema
from ray.data.datasource import Datasource, ReadTask

__all__ = ["EAGER_OBJECT_STORE_FRACTION", "CommitFiles", "read_commit"]

# Read eagerly while the footers' (uncompressed) size is at most this share of the cluster's object store.
# Arrow's in-memory size runs up to about 1.5x that estimate (strings), and Ray Data streams within half the store.
EAGER_OBJECT_STORE_FRACTION = 0.2


def read_commit(fs: Any, paths: list[str], columns: list[str] | None = None, eager: bool | None = None) -> Any:
    """A Ray Dataset of the Parquet ``paths`` on ``fs`` (optionally only ``columns``), one block per file.

    ``eager=None`` reads eagerly when the data fits in the object store comfortably (see the module docstring);
    ``True`` or ``False`` forces either way. Both give the same rows and schema; the eager Dataset keeps the
    files' order.

    Example:
        >>> fs, paths = open_store().read_paths("iris", "main", "raw")
        >>> read_commit(fs, paths, columns=["sepal_length"]).count()
    """
    import ray.data

    source = CommitFiles(fs, paths, columns)
    if eager is None:
        eager = _fits_object_store(source.estimate_inmemory_data_size())
    if eager:
        return source.read_eagerly()
    return ray.data.read_datasource(source, override_num_blocks=len(paths))


class CommitFiles(Datasource):
    """The Parquet files ``paths`` on filesystem ``fs``, optionally only some ``columns``, one block per file."""

    def __init__(self, fs: Any, paths: list[str], columns: list[str] | None = None):
        import pyarrow.parquet as pq

        super().__init__()
        self.fs, self.paths, self.columns = fs, paths, columns
        self.footers = []
        for path in paths:
            with fs.open(path, "rb") as handle:
                self.footers.append(pq.read_metadata(handle))

    def estimate_inmemory_data_size(self) -> int:
        return sum(_size(footer) for footer in self.footers)

    def schema(self) -> Any:
        """The Arrow schema of the blocks (the first file's, narrowed to ``columns``); None without files."""
        schema = self.footers[0].schema.to_arrow_schema() if self.footers else None
        if schema is not None and self.columns:
            schema = _select(schema, self.columns)
        return schema

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
                       ) -> list[ReadTask]:
        schema = self.schema()
        return [
            ReadTask(
                _reader(self.fs, path, self.columns),
                BlockMetadata(num_rows=footer.num_rows, size_bytes=_size(footer), exec_stats=None,
                              input_files=[path]),
                schema=schema,
                per_task_row_limit=per_task_row_limit,
            )
            for path, footer in zip(self.paths, self.footers, strict=True)
        ]

    def read_eagerly(self) -> Any:
        """Starts one Ray task per file now; returns a materialised Dataset of their (maybe pending) blocks.

        Does not wait for the reads: the blocks' metadata comes from the footers, so the caller gets the Dataset
        at once and its first batch as soon as the first file is read. A failed read raises when its block is
        consumed, as in the lazy path.

        ``ray.data.from_arrow_refs`` would do the wrapping with public API, but it first runs one more task per
        block to compute metadata and waits for all of them (about 0.2 s on 6 files in the benchmark), so the
        Dataset is built here as it builds it, from Ray Data's own logical plan (ray is pinned; the tests cover
        this path).
        """
        from ray.data._internal.logical.interfaces import LogicalPlan
        from ray.data._internal.logical.operators.from_operators import FromArrow
        from ray.data._internal.stats import DatasetStats
        from ray.data.context import DataContext
        from ray.data.dataset import MaterializedDataset

        schema = self.schema()
        blocks = [_read_file.remote(self.fs, path, self.columns) for path in self.paths]
        metadata = [
            BlockMetadataWithSchema(num_rows=footer.num_rows, size_bytes=_size(footer), exec_stats=None,
                                    input_files=[path], schema=schema)
            for path, footer in zip(self.paths, self.footers, strict=True)
        ]
        context = DataContext.get_current().copy()
        stats = DatasetStats(metadata={"ReadCommitFiles": metadata}, parent=None)
        return MaterializedDataset(LogicalPlan(FromArrow(blocks, metadata), context), context, stats)


@ray.remote(scheduling_strategy="SPREAD")  # as Ray Data schedules its read tasks: across the cluster's nodes
def _read_file(fs: Any, path: str, columns: list[str] | None) -> Any:
    """One file as an Arrow table: a Ray task of the eager path."""
    return _read_table(fs, path, columns)


def _reader(fs: Any, path: str, columns: list[str] | None) -> Any:
    def read() -> Iterator[Any]:
        yield _read_table(fs, path, columns)

    return read


def _read_table(fs: Any, path: str, columns: list[str] | None) -> Any:
    """One file as an Arrow table (the same call for both paths)."""
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as handle:
        return pq.read_table(handle, columns=columns)


def _fits_object_store(size_bytes: int) -> bool:
    """Whether ``size_bytes`` is at most EAGER_OBJECT_STORE_FRACTION of the cluster's object store (starts Ray)."""
    if not ray.is_initialized():
        ray.init()  # what Ray Data does on first use too
    capacity = ray.cluster_resources().get("object_store_memory", 0)
    return size_bytes <= EAGER_OBJECT_STORE_FRACTION * capacity


def _size(footer: Any) -> int:
    return sum(footer.row_group(i).total_byte_size for i in range(footer.num_row_groups))


def _select(schema: Any, columns: list[str]) -> Any:
    import pyarrow as pa

    return pa.schema([schema.field(name) for name in columns])
