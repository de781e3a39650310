"""``fabric data ...``: versioned datasets from the shell, each command a thin call into :mod:`fabric.data`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer

from fabric.cli._output import JSON_OPTION, emit, fail

app = typer.Typer(help="Versioned datasets: lakefs://REPO/REF/PATH on lakeFS or the local store.", no_args_is_help=True)
T = TypeVar("T")


def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Runs a fabric.data call, turning its errors into `error: ...` and exit code 2."""
    from fabric.config import ConfigError
    from fabric.data import DataError

    try:
        return fn(*args, **kwargs)
    except (DataError, ConfigError) as exc:
        fail(str(exc))


@app.command()
def init(
    repo: str = typer.Argument(..., help="Repository name."),
    default_branch: str = typer.Option("main", "--default-branch", help="Name of the first branch."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a repository (no-op if it exists)."""
    from fabric import data

    commit = _call(data.init, repo, default_branch=default_branch)
    emit({"repo": repo, "branch": default_branch, "commit": commit}, as_json,
         lambda d: f"repository {d['repo']} ready; {d['branch']} at {d['commit']}")


@app.command()
def put(
    uri: str = typer.Argument(..., help="lakefs://REPO/BRANCH/PATH to write under."),
    file: Path = typer.Argument(..., help="A CSV or Parquet file."),
    message: str = typer.Option(..., "--message", "-m", help="Commit message."),
    meta: Optional[list[str]] = typer.Option(None, "--meta", help="Commit metadata as key=value; repeatable."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Commit a CSV or Parquet file as Parquet under PATH on a branch; prints the commit id."""
    from fabric import data

    frame = _call(_load_table, file)
    metadata = _call(_parse_meta, meta or [])
    commit = _call(data.write, uri, frame, message, metadata=metadata)
    emit({"commit": commit, "uri": uri, "rows": frame.num_rows}, as_json, lambda d: d["commit"])


@app.command()
def branch(
    repo: str = typer.Argument(..., help="Repository."),
    name: str = typer.Argument(..., help="New branch name."),
    source: str = typer.Option("main", "--from", help="Branch, tag or commit id to start from."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a branch (zero-copy) from a ref."""
    from fabric import data

    commit = _call(data.branch, repo, name, source=source)
    emit({"repo": repo, "branch": name, "commit": commit}, as_json,
         lambda d: f"branch {d['branch']} at {d['commit']}")


@app.command()
def tag(
    repo: str = typer.Argument(..., help="Repository."),
    name: str = typer.Argument(..., help="Tag name."),
    ref: str = typer.Argument(..., help="Branch, tag or commit id to tag."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Tag a ref."""
    from fabric import data

    commit = _call(data.tag, repo, name, ref)
    emit({"repo": repo, "tag": name, "commit": commit}, as_json, lambda d: f"tag {d['tag']} at {d['commit']}")


@app.command()
def log(
    uri: str = typer.Argument(..., help="lakefs://REPO/REF"),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Newest N commits only."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Commits reachable from a ref, newest first."""
    from fabric import data

    commits = [c.to_dict() for c in _call(data.log, uri, limit=limit)]
    emit(commits, as_json, _log_text)


@app.command()
def diff(
    repo: str = typer.Argument(..., help="Repository."),
    left: str = typer.Argument(..., help="Ref to compare from."),
    right: str = typer.Argument(..., help="Ref to compare to."),
    prefix: str = typer.Option("", "--prefix", help="Only paths under this prefix."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Paths added, removed or changed going from LEFT to RIGHT."""
    from fabric import data

    changes = [c.to_dict() for c in _call(data.diff, repo, left, right, prefix=prefix)]
    emit(changes, as_json, lambda cs: "\n".join(f"{c['type']:<8} {c['path']}" for c in cs) or "no differences")


@app.command()
def merge(
    repo: str = typer.Argument(..., help="Repository."),
    source: str = typer.Argument(..., help="Branch or ref to merge."),
    into: str = typer.Option(..., "--into", help="Destination branch."),
    message: Optional[str] = typer.Option(None, "--message", "-m", help="Merge commit message."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Merge SOURCE into a branch; a conflict names the paths and changes nothing."""
    from fabric import data

    commit = _call(data.merge, repo, source, into=into, message=message)
    emit({"commit": commit, "repo": repo, "source": source, "into": into}, as_json,
         lambda d: f"merged {d['source']} into {d['into']}: {d['commit']}")


@app.command()
def head(
    uri: str = typer.Argument(..., help="lakefs://REPO/REF/PATH"),
    n: int = typer.Option(5, "-n", min=1, help="How many rows."),
    as_json: bool = JSON_OPTION,
) -> None:
    """The first rows of a dataset."""
    import json

    from fabric import data

    frame = _call(data.head, uri, n=n)
    if as_json:
        print(json.dumps(json.loads(frame.to_json(orient="records", date_format="iso")), indent=2))
    else:
        print(frame.to_string(index=False))


@app.command()
def gc(
    repo: str = typer.Argument(..., help="Repository."),
    grace: str = typer.Option("1h", "--grace", help="Keep anything younger than this: 90s, 30m, 1h, 2d or seconds."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be deleted, and its size; delete nothing."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Delete what writers killed mid-write left behind: unreferenced objects, orphan commits, temp files."""
    from fabric import data

    report = _call(data.gc, repo, grace_s=_call(_seconds, grace), dry_run=dry_run)
    emit(report.to_dict(), as_json, lambda _: _gc_text(report))


@app.command()
def validate(
    uri: str = typer.Argument(..., help="lakefs://REPO/REF/PATH"),
    schema: Path = typer.Option(..., "--schema", help="YAML schema: columns, types, nulls, ranges, categories."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Check a dataset against a schema over every row; exits 1 listing every violated rule."""
    from fabric import data
    from fabric.runtime import init_ray

    data_schema = _call(data.DataSchema.from_yaml, schema)
    pinned = _call(data.pin, uri)
    init_ray()
    report = data.validate(_call(data.read, pinned), data_schema, source=pinned, raise_on_error=False)
    emit(report.to_dict(), as_json, lambda _: report.summary())
    if not report.ok:
        raise typer.Exit(1)


def _load_table(file: Path) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from fabric.data import DataError

    if not file.is_file():
        raise DataError(f"file not found: {file}")
    suffix = file.suffix.lower()
    if suffix not in (".csv", ".tsv", ".parquet"):
        raise DataError(f"{file} must be a .csv, .tsv or .parquet file")
    try:
        if suffix == ".parquet":
            return pq.read_table(file)
        return pacsv.read_csv(file, parse_options=pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","))
    except (pa.ArrowException, OSError) as exc:  # empty, truncated or ragged files
        raise DataError(f"cannot read {file} as {suffix[1:].upper()}: {exc}") from exc


def _seconds(text: str) -> float:
    """``90s``, ``30m``, ``1h``, ``2d`` or a plain number of seconds."""
    from fabric.data import DataError

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    try:
        return float(number) * unit
    except ValueError:
        raise DataError(f"--grace takes a duration such as 90s, 30m, 1h or 2d, got {text!r}") from None


def _gc_text(report: Any) -> str:
    lines = [f"would delete {r.kind:<7} {r.bytes:>12,d} B  {r.path}" for r in report.removed] if report.dry_run else []
    return "\n".join([*lines, report.summary()])


def _parse_meta(items: list[str]) -> dict[str, str]:
    from fabric.data import DataError

    bad = [item for item in items if "=" not in item or item.startswith("=")]
    if bad:
        raise DataError(f"--meta takes key=value, got {', '.join(map(repr, bad))}")
    return dict(item.split("=", 1) for item in items)


def _log_text(commits: list[dict[str, Any]]) -> str:
    import datetime

    lines = []
    for commit in commits:
        when = datetime.datetime.fromtimestamp(commit["time"]).strftime("%Y-%m-%d %H:%M:%S")
        meta = " ".join(f"{k}={v}" for k, v in commit["metadata"].items())
        lines.append(f"{commit['id'][:12]}  {when}  {commit['message']}" + (f"  [{meta}]" if meta else ""))
    return "\n".join(lines)
