"""``fabric config check|show``: validate a config and print it resolved, defaults and overrides included.

Workload configs and every kind in :mod:`fabric.config_kinds` (``kind: serve``, ``kind: llm``, ``kind: monitor``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fabric.cli._output import JSON_OPTION, emit, fail

app = typer.Typer(help="Check and show configs: workloads' and serve configs.", no_args_is_help=True)

WORKLOAD_OPTION = typer.Option(
    None, "--workload", "-w", help="Workload whose schema applies. Default: the file's `workload:` key or name."
)


@app.command()
def check(
    file: Path = typer.Argument(..., help="YAML config file."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted key=value overrides.", show_default=False),
    workload: Optional[str] = WORKLOAD_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Validate a config against its schema (its workload's, or its kind's); exits 2 naming every bad field."""
    what, cfg = _load(file, overrides, workload, as_json)
    emit(
        {"ok": True, "file": str(file), **what, "config_class": type(cfg).__name__},
        as_json,
        lambda d: f"ok: {d['file']} is a valid {d['config_class']} "
        + (f"for workload {d['workload']}" if "workload" in d else f"(kind {d['kind']})"),
    )


@app.command()
def show(
    file: Path = typer.Argument(..., help="YAML config file."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted key=value overrides.", show_default=False),
    workload: Optional[str] = WORKLOAD_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Print the resolved config: the file, the overrides and every default."""
    _, cfg = _load(file, overrides, workload, as_json)
    if as_json:
        emit(cfg.model_dump(mode="json"), as_json=True)
    else:
        print(cfg.to_yaml(), end="")


def _load(file: Path, overrides: Optional[list[str]], workload: Optional[str], as_json: bool):
    """({"workload": NAME}, config) for a workload's config; ({"kind": KIND}, config) for any other kind."""
    from fabric.config import ConfigError
    from fabric.config_kinds import kind_of, load_kind
    from fabric.workload import WorkloadError, workload_for_config

    try:
        kind = None if workload or not file.is_file() else kind_of(file)
        if kind:
            return {"kind": kind}, load_kind(file, overrides or [], kind)
        loaded = workload_for_config(file, workload)
        return {"workload": loaded.name}, loaded.load_config(file, overrides or [])
    except (ConfigError, WorkloadError) as exc:
        if as_json:
            emit({"ok": False, "file": str(file), "error": str(exc)}, as_json=True)
            raise typer.Exit(2) from None
        fail(str(exc))
