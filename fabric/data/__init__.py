"""Versioned datasets: ``lakefs://REPO/REF/PATH`` into Ray Data, on lakeFS or the embedded local store.

Example (the CLI equivalents are ``fabric data put|read|branch|merge ...``)::

    from fabric import data

    data.init("iris")
    v1 = data.write("lakefs://iris/main/raw", df, "first cut", metadata={"source": "sklearn"})
    data.branch("iris", "clean", source="main")
    ds = data.read("lakefs://iris/clean/raw")           # a ray.data.Dataset
    data.validate(ds, "configs/data/iris_schema.yaml")  # raises DataValidationError listing every broken rule
    data.merge("iris", "clean", into="main")
    data.gc("iris")                                     # what writers killed with kill -9 left behind
"""

from fabric.data.api import branch, create_if_missing, diff, gc, head, init, log, merge, pin, read, resolve, tag, write
from fabric.data.backends import open_store
from fabric.data.store import (
    Change,
    Commit,
    DataError,
    GCReport,
    MergeConflictError,
    NotFoundError,
    Removed,
    VersionStore,
)
from fabric.data.uri import DataURI
from fabric.data.validation import DataSchema, DataValidationError, ValidationReport, validate

__all__ = [
    "Change",
    "Commit",
    "DataError",
    "DataSchema",
    "DataURI",
    "DataValidationError",
    "GCReport",
    "MergeConflictError",
    "NotFoundError",
    "Removed",
    "ValidationReport",
    "VersionStore",
    "branch",
    "create_if_missing",
    "diff",
    "gc",
    "head",
    "init",
    "log",
    "merge",
    "open_store",
    "pin",
    "read",
    "resolve",
    "tag",
    "validate",
    "write",
]
