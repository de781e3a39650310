"""``fabric models ...``: the model registry from the shell, each command a thin call into :mod:`fabric.registry`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional, TypeVar

import typer

from fabric.cli._output import JSON_OPTION, emit, fail

app = typer.Typer(
    help="Registered models: versions, champion/challenger aliases, the promotion gate, rollback, audit trail.",
    no_args_is_help=True,
)
T = TypeVar("T")

REASON_OPTION = typer.Option(None, "--reason", help="Why; kept in the audit trail.")
ACTOR_OPTION = typer.Option(None, "--actor", help="Who; default: FABRIC_ACTOR, else the login name.")


def _call(fn: Callable[..., T], *args: Any, as_json: bool = False, **kwargs: Any) -> T:
    """Runs a fabric.registry call: a refused promotion prints why and exits 1; other errors exit 2."""
    from fabric.registry import PromotionRefused, RegistryError

    try:
        return fn(*args, **kwargs)
    except PromotionRefused as exc:
        emit(exc.result, as_json, lambda d: f"refused: {d['message']}")
        raise typer.Exit(1) from None
    except RegistryError as exc:
        fail(str(exc))


@app.command("list")
def list_(as_json: bool = JSON_OPTION) -> None:
    """Registered models with their champion, challenger and the champion's primary metric."""
    from fabric import registry

    emit(_call(registry.list_models), as_json, _list_text)


@app.command()
def show(name: str = typer.Argument(..., help="Registered model name."), as_json: bool = JSON_OPTION) -> None:
    """One model: versions (newest first) with aliases and metrics, the promotion policy and the audit trail."""
    from fabric import registry

    emit(_call(registry.show, name), as_json, _show_text)


@app.command()
def promote(
    name: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Argument(..., help="Version to promote."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Metric to compare. Default: the model's policy."),
    margin: Optional[float] = typer.Option(None, "--margin", help="Required improvement. Default: the policy's."),
    reason: Optional[str] = REASON_OPTION,
    actor: Optional[str] = ACTOR_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Make VERSION champion if it beats the champion on its holdout; exits 1 when refused."""
    from fabric import registry

    result = _call(registry.promote, name, version, metric=metric, margin=margin, reason=reason, actor=actor,
                   as_json=as_json)
    emit(result, as_json, _promotion_text)


@app.command()
def approve(
    name: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Argument(..., help="Version pending approval."),
    reason: Optional[str] = REASON_OPTION,
    actor: Optional[str] = ACTOR_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Make a version that passed the gate and awaits approval the champion."""
    from fabric import registry

    emit(_call(registry.approve, name, version, reason=reason, actor=actor, as_json=as_json), as_json,
         _promotion_text)


@app.command()
def rollback(
    name: str = typer.Argument(..., help="Registered model name."),
    reason: Optional[str] = REASON_OPTION,
    actor: Optional[str] = ACTOR_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Point the champion back at the previous champion."""
    from fabric import registry

    emit(_call(registry.rollback, name, reason=reason, actor=actor), as_json,
         lambda d: f"{d['name']}: champion rolled back from version {d['from_version']} to {d['version']}")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header, *[["-" if c is None or c == "" else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def _num(value: float | None) -> str | None:
    return None if value is None else f"{value:.4f}"


def _list_text(models: list[dict[str, Any]]) -> str:
    if not models:
        return "no registered models"
    return _table(["name", "versions", "champion", "challenger", "metric", "champion score"],
                  [[m["name"], m["versions"], m["champion"], m["challenger"], m["metric"], _num(m["champion_score"])]
                   for m in models])


def _show_text(model: dict[str, Any]) -> str:
    policy = model["policy"]
    metric = model["metric"] or "metric"
    lines = [
        f"model {model['name']}" + (f": {model['description']}" if model["description"] else ""),
        f"policy: metric={policy['metric'] or 'default'} margin={policy['margin']:g} "
        f"require_approval={'yes' if policy['require_approval'] else 'no'}",
        "", _table(["version", "aliases", metric, "approval", "created", "run"],
                   [[v["version"], ",".join(v["aliases"]), _num(v["metrics"].get(metric)), v["approval"],
                     _when(v["created"]), (v["run_id"] or "")[:12]] for v in model["versions"]]),
        "", "audit trail:",
    ]
    lines += [_audit_line(entry) for entry in model["audit"]] or ["  (empty)"]
    return "\n".join(lines)


def _audit_line(entry: dict[str, Any]) -> str:
    move = f"v{entry['version']}" + (f" (from v{entry['from_version']})" if entry.get("from_version") else "")
    scores = ""
    if entry.get("metric") and entry.get("challenger_score") is not None:
        scores = f" {entry['metric']} {entry['challenger_score']:.4f}"
        if entry.get("champion_score") is not None:
            scores += f" vs {entry['champion_score']:.4f}"
    why = f' "{entry["reason"]}"' if entry.get("reason") else ""
    when = _when(entry["time"])
    return f"  {entry['seq']:>4}  {when}  {entry['action']:<17} {move}  by {entry['actor']}{scores}{why}"


def _when(iso: str | None) -> str | None:
    """``2026-01-02T03:04:05+00:00`` as ``2026-01-02 03:04:05Z``: the registry keeps UTC."""
    return f"{iso[:19].replace('T', ' ')}Z" if iso else None


def _promotion_text(result: dict[str, Any]) -> str:
    scores = f"{result['metric']} {result['challenger_score']:.4f}"
    if result.get("champion_score") is not None:
        scores += f" vs champion {result['from_version']} {result['champion_score']:.4f}"
    if result["status"] == "pending_approval":
        return (f"{result['name']} version {result['version']} passed the gate ({scores}) and awaits approval: "
                f"fabric models approve {result['name']} {result['version']}")
    previous = f" (was {result['from_version']})" if result.get("from_version") else ""
    return f"{result['name']} version {result['version']} is now champion{previous}: {scores}"
