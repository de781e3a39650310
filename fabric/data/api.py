"""Versioned datasets by URI: write, read, resolve, branch, tag, diff, merge, log.

Python, with the CLI equivalent under each line::

    commit = data.write("lakefs://iris/main/raw", df, "first cut")
    #   fabric data put lakefs://iris/main/raw iris.csv -m "first cut"
    data.branch("iris", "clean", source="main")
    #   fabric data branch iris clean --from main
    ds = data.read("lakefs://iris/clean/raw")  # a ray.data.Dataset
    #   fabric data head lakefs://iris/clean/raw
    data.merge("iris", "clean", into="main")
    #   fabric data merge iris clean --into main
    data.gc("iris", dry_run=True)  # what killed writers left behind, older than an hour
    #   fabric data gc iris --dry-run

Every function takes an optional ``store``; by default the runtime picks it (lakeFS when configured, else the
local store under ``$FABRIC_HOME/data``).
"""

from __future__ import annotations

import contextlib
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fabric.data.backends import open_store
from fabric.data.store import Change, Commit, DataError, GCReport, NotFoundError, VersionStore
from fabric.data.uri import DataURI

__all__ = ["branch", "create_if_missing", "diff", "gc", "head", "init", "log", "merge", "pin", "read", "resolve",
           "tag", "write"]

ROWS_PER_FILE = 1_000_000


def init(repo: str, default_branch: str = "main", exist_ok: bool = True, store: VersionStore | None = None) -> str:
    """Creates a repository (a no-op when it exists and ``exist_ok``); returns its default branch's commit id."""
    return (store or open_store()).create_repo(repo, default_branch=default_branch, exist_ok=exist_ok)


def write(
    uri: str, data: Any, message: str, metadata: dict[str, str] | None = None, store: VersionStore | None = None
) -> str:
    """Writes a pandas DataFrame, Arrow table or Ray Dataset as Parquet under the URI's path on its branch.

    Replaces whatever was under the path, in one commit; returns the new commit id. On any error the branch
    does not move and no commit is left behind. The files are staged in a temp folder that is removed on every
    way out, SIGTERM and SIGINT included; after ``kill -9`` only :func:`gc` can remove it.
    """
    from fabric.data.garbage import write_prefix

    target = DataURI.parse(uri)
    if not message or not message.strip():
        raise DataError("a commit needs a message")
    store = store or open_store()
    with _signals_unwind(), tempfile.TemporaryDirectory(prefix=write_prefix(target.repo)) as tmp:
        _write_parquet(data, Path(tmp))
        return store.commit_files(target.repo, target.ref, target.path, Path(tmp), message, metadata or {})


def gc(repo: str, grace_s: float | None = None, dry_run: bool = False, store: VersionStore | None = None
       ) -> GCReport:
    """Deletes what writers killed mid-write left behind, once it is older than ``grace_s`` seconds (an hour).

    That is objects no branch or tag reaches, commits no branch or tag reaches, partial temp files, and the temp
    folders of this repository's writers that are gone (``$TMPDIR/fabric-write-*``), as lakeFS's garbage
    collection does. Holds the store's lock, so it never races a writer. ``dry_run`` lists and deletes nothing.

    Example:
        >>> data.gc("iris", dry_run=True).summary()  # fabric data gc iris --dry-run
        'iris: would remove 3 objects, 1 commits, 2 temp files or folders: 41.2 MB would be freed'
    """
    from fabric.data import garbage

    grace_s = garbage.DEFAULT_GRACE_S if grace_s is None else grace_s
    if grace_s < 0:
        raise DataError(f"the grace period must be 0 seconds or more, got {grace_s}")
    report = (store or open_store()).collect_garbage(repo, grace_s, dry_run=dry_run)
    folders = garbage.stale_write_folders(repo, grace_s)
    if not dry_run:
        garbage.remove(folders)
    return GCReport(repo, dry_run, report.removed + folders, report.note)


def read(uri: str, store: VersionStore | None = None, columns: list[str] | None = None, **ray_kwargs: Any) -> Any:
    """Reads the Parquet files under the URI's path at its ref (branch, tag or commit id) into a Ray Dataset.

    One block per file, by :func:`~fabric.data.reader.read_commit`: read at once with one Ray task per file (a
    materialised Dataset, in file order) when the data fits comfortably in the object store, else streamed by
    Ray Data. Any other keyword argument goes to ``ray.data.read_parquet`` instead (``filter=``,
    ``override_num_blocks=``, ...).
    """
    import ray.data

    fs, paths = _files(uri, store)
    if ray_kwargs:
        return ray.data.read_parquet(paths, filesystem=fs, columns=columns, **ray_kwargs)
    from fabric.data.reader import read_commit

    return read_commit(fs, paths, columns)


def head(uri: str, n: int = 5, store: VersionStore | None = None) -> Any:
    """The first ``n`` rows as a pandas DataFrame, read with pyarrow in this thread (no Ray needed)."""
    import pyarrow as pa

    fs, paths = _files(uri, store)
    tables, rows = [], 0
    for path in paths:
        tables.append(_first_rows(fs, path, n - rows))
        rows += tables[-1].num_rows
        if rows >= n:
            break
    return pa.concat_tables(tables, promote_options="default").to_pandas()


def resolve(uri: str, store: VersionStore | None = None) -> str:
    """The commit id the URI's ref points at now. Record this, not the branch name, with every run."""
    target = DataURI.parse(uri, need_path=False)
    return (store or open_store()).resolve(target.repo, target.ref)


def pin(uri: str, store: VersionStore | None = None) -> str:
    """The same URI with its ref replaced by the commit id it points at now, so later reads see the same data."""
    target = DataURI.parse(uri, need_path=False)
    return str(target.at(resolve(uri, store)))


def create_if_missing(uri: str, make: Callable[[], Any], message: str, metadata: dict[str, str] | None = None,
                      store: VersionStore | None = None) -> str | None:
    """Embedded demos: writes ``make()`` to ``uri`` (creating its repository) when its ref or path is missing.

    Returns the new commit id, or None when the data was already there (``make`` is then not called).

    Example:
        >>> create_if_missing("lakefs://demo/main/iris", lambda: load_frame("iris"), "Create iris")
    """
    store = store or open_store()
    try:
        head(uri, n=1, store=store)
        return None
    except NotFoundError:
        pass
    target = DataURI.parse(uri)
    init(target.repo, store=store)
    commit = write(uri, make(), message, metadata=metadata, store=store)
    print(f"[data] {uri} did not exist: created it as commit {commit} ({message})", flush=True)
    return commit


def branch(repo: str, name: str, source: str = "main", store: VersionStore | None = None) -> str:
    """Creates branch ``name`` from ``source`` (zero-copy); returns the commit id it starts at."""
    return (store or open_store()).create_branch(repo, name, source)


def tag(repo: str, name: str, ref: str, store: VersionStore | None = None) -> str:
    """Creates tag ``name`` at ``ref``; returns the commit id."""
    return (store or open_store()).create_tag(repo, name, ref)


def diff(repo: str, left: str, right: str, prefix: str = "", store: VersionStore | None = None) -> list[Change]:
    """Paths that differ going from ref ``left`` to ref ``right``."""
    return (store or open_store()).diff(repo, left, right, prefix)


def merge(repo: str, source: str, into: str, message: str | None = None, store: VersionStore | None = None) -> str:
    """Merges ``source`` into branch ``into``; raises MergeConflictError naming the paths, changing nothing."""
    return (store or open_store()).merge(repo, source, into, message)


def log(uri: str, limit: int | None = None, store: VersionStore | None = None) -> list[Commit]:
    """Commits reachable from the URI's ref, newest first."""
    target = DataURI.parse(uri, need_path=False)
    return (store or open_store()).log(target.repo, target.ref, limit)


def _files(uri: str, store: VersionStore | None) -> tuple[Any, list[str]]:
    """The filesystem and paths of the files under the URI's path at its ref; none is an error naming them."""
    target = DataURI.parse(uri)
    fs, paths = (store or open_store()).read_paths(target.repo, target.ref, target.path)
    if not paths:
        raise NotFoundError(f"no files under {target.path!r} at {target.ref!r} in repository {target.repo!r}")
    return fs, paths


def _first_rows(fs: Any, path: str, n: int) -> Any:
    """Up to ``n`` rows of one Parquet file as an Arrow table, read and decoded in this thread only.

    Not ``pq.read_table(handle)``: on a Python file object its scanner leaves work on Arrow's thread pool after it
    returns, and a pool thread that frees the last buffer read from the file while the interpreter exits takes the
    GIL of a finalised interpreter, so the process aborts ("terminate called without an active exception") after
    printing the rows (apache/arrow#34314). Without pre-buffering or threads no pool thread ever holds such a
    buffer, and only the first ``n`` rows are decoded.
    """
    import contextlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as handle, pq.ParquetFile(handle, pre_buffer=False) as parquet:
        with contextlib.closing(parquet.iter_batches(batch_size=n, use_threads=False)) as batches:
            first = next(batches, None)
        return parquet.schema_arrow.empty_table() if first is None else pa.Table.from_batches([first])


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """Turns SIGTERM and SIGHUP into SystemExit for the block (SIGINT already raises), so ``finally`` clauses and
    context managers run: a terminated writer removes its temp folder. Only in the main thread, where Python runs
    signal handlers, and only for signals nobody else handles."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def unwind(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    for sig, handler in previous.items():
        if handler == signal.SIG_DFL:
            signal.signal(sig, unwind)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _write_parquet(data: Any, folder: Path) -> None:
    """Writes ``data`` as ``part-NNNNN.parquet`` files; a Ray Dataset is streamed through this process."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if _is_ray_dataset(data):
        batches = data.iter_batches(batch_size=ROWS_PER_FILE, batch_format="pyarrow")
    elif isinstance(data, pa.Table):
        batches = [data]
    elif _is_dataframe(data):
        batches = [pa.Table.from_pandas(data, preserve_index=False)]
    else:
        raise DataError(f"cannot write {type(data).__name__}: pass a pandas DataFrame, an Arrow table or a Ray Dataset")
    written = 0
    for table in batches:
        if table.num_rows or not written:
            pq.write_table(table, folder / f"part-{written:05d}.parquet")
            written += 1


def _is_ray_dataset(data: Any) -> bool:
    return type(data).__module__.startswith("ray.data") and hasattr(data, "iter_batches")


def _is_dataframe(data: Any) -> bool:
    return type(data).__name__ == "DataFrame" and type(data).__module__.startswith("pandas")
