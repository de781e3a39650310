"""A Ray Data source for the Parquet files of one commit.

A commit's file list never changes, so there is nothing to discover: this source reads each file's footer here
(row counts, sizes, schema) and hands Ray one read task per file. ``ray.data.read_parquet`` instead lists the
paths and samples footers with a pool of actors on every call, which on a small cluster costs seconds before the
first row arrives (measured in ``bench/data_read.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

__all__ = ["CommitFiles"]


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

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
                       ) -> list[ReadTask]:
        schema = self.footers[0].schema.to_arrow_schema() if self.footers else None
        if schema is not None and self.columns:
            schema = _select(schema, self.columns)
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


def _reader(fs: Any, path: str, columns: list[str] | None) -> Any:
    def read() -> Iterator[Any]:
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as handle:
            yield pq.read_table(handle, columns=columns)

    return read


def _size(footer: Any) -> int:
    return sum(footer.row_group(i).total_byte_size for i in range(footer.num_row_groups))


def _select(schema: Any, columns: list[str]) -> Any:
    import pyarrow as pa

    return pa.schema([schema.field(name) for name in columns])
