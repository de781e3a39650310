"""The two ways `read_commit` reads a commit's files (eager tasks, streamed Datasource) give the same Dataset."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem
from ray.data.dataset import MaterializedDataset

from fabric import data
from fabric.data import reader
from fabric.data.local_store import LocalStore


@pytest.fixture
def files(tmp_path) -> list[str]:
    """Three Parquet files of 1,000 rows each (numbers, strings, a timestamp), the last in two row groups."""
    paths = []
    for n in range(3):
        start = n * 1_000
        table = pa.table({
            "id": pa.array(range(start, start + 1_000), pa.int64()),
            "label": [f"row-{i}" for i in range(start, start + 1_000)],
            "flag": [i % 3 == 0 for i in range(1_000)],
            "ts": pa.array(range(1_000), pa.int64()).cast(pa.timestamp("s")),
        })
        path = tmp_path / f"part-{n:05d}.parquet"
        pq.write_table(table, path, row_group_size=600 if n == 2 else None)
        paths.append(str(path))
    return paths


def expected(paths: list[str], columns: list[str] | None = None) -> pa.Table:
    return pa.concat_tables(pq.read_table(path, columns=columns) for path in paths)


def as_table(ds) -> pa.Table:
    return pa.concat_tables(ds.iter_batches(batch_size=None, batch_format="pyarrow"))


@pytest.mark.parametrize("columns", [None, ["label", "id"]])
def test_eager_and_lazy_reads_give_the_same_rows_and_schema(files, columns, ray_session):
    eager = reader.read_commit(LocalFileSystem(), files, columns, eager=True)
    lazy = reader.read_commit(LocalFileSystem(), files, columns, eager=False)
    want = expected(files, columns)
    assert isinstance(eager, MaterializedDataset)
    assert eager.schema().base_schema == lazy.schema().base_schema == want.schema
    assert eager.count() == lazy.count() == 3_000
    assert as_table(eager).equals(want)  # in file order
    assert as_table(lazy).sort_by("id").equals(want.sort_by("id"))


def test_an_eager_dataset_supports_the_usual_operations(files, ray_session):
    ds = reader.read_commit(LocalFileSystem(), files, eager=True)
    assert ds.num_blocks() == 3  # input_files() is empty, as for any from_arrow Dataset
    doubled = ds.map_batches(lambda batch: {"id": batch["id"] * 2}, batch_format="numpy")
    assert sorted(row["id"] for row in doubled.take_all()) == [2 * i for i in range(3_000)]
    assert ds.filter(expr="id < 10").count() == 10
    assert isinstance(ds.stats(), str)  # does not trip over the metadata built from footers


def test_read_is_eager_when_the_data_fits_the_object_store_else_streamed(tmp_path, ray_session, monkeypatch):
    store = LocalStore(tmp_path)
    data.init("fit", store=store)
    data.write("lakefs://fit/main/t", pa.table({"a": range(100), "b": [str(i) for i in range(100)]}), "t", store=store)
    eager = data.read("lakefs://fit/main/t", store=store, columns=["b"])
    assert isinstance(eager, MaterializedDataset)
    assert [row["b"] for row in eager.take_all()] == [str(i) for i in range(100)]
    monkeypatch.setattr(reader, "EAGER_OBJECT_STORE_FRACTION", 0.0)
    lazy = data.read("lakefs://fit/main/t", store=store, columns=["b"])
    assert not isinstance(lazy, MaterializedDataset)
    assert sorted(row["b"] for row in lazy.take_all()) == sorted(str(i) for i in range(100))


@pytest.mark.parametrize("eager", [True, False])
def test_an_unknown_column_fails_before_anything_is_read(files, eager, ray_session):
    with pytest.raises(KeyError, match="missing"):
        reader.read_commit(LocalFileSystem(), files, columns=["id", "missing"], eager=eager)
