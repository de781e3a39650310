"""`fabric monitor check|report|ui`: drift and quality checks of a served model, and Evidently's UI over them.

Each command is a thin skin over :func:`fabric.monitor.check`::

    fabric monitor check breast-cancer --last 1000         # check(model, last=1000)
    fabric monitor check breast-cancer --since 1h --json   # check(model, since="1h").to_dict()
    fabric monitor report breast-cancer --out reports/     # check(model, out_dir="reports/")
    fabric monitor ui --port 8000                          # Evidently's UI on fabric.monitor.workspace_dir()

A RAG app's name (its log holds groundedness scores) gets :func:`rag.monitoring.check` instead: the mean
groundedness and the share of unsupported answers of its newest data commit, and the lowest-scored answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from fabric.cli._output import JSON_OPTION, emit, fail

app = typer.Typer(help="Drift and quality checks of served models (Evidently) and their UI.", no_args_is_help=True)

VERSION_OPTION = typer.Option(None, "--version", help="Model version to check. Default: its champion.")
LAST_OPTION = typer.Option(None, "--last", help="Window: the last N logged rows of the version (default 1000).")
SINCE_OPTION = typer.Option(None, "--since", help="Window: the rows logged in this span up to now, e.g. 30m, 1h, 2d.")
CONFIG_OPTION = typer.Option(None, "--config", "-c", help="YAML with the check's settings (MonitorConfig), or a "
                             "monitor spec (configs/monitor/*.yaml): its `check:` section, and `check` then fires "
                             "its alert rules.")
LOG_OPTION = typer.Option(None, "--log-root", help="Inference log root. Default: $FABRIC_HOME/inference.")


@app.command()
def check(
    model: str = typer.Argument(..., help="Registered model name."),
    version: Optional[str] = VERSION_OPTION,
    last: Optional[int] = LAST_OPTION,
    since: Optional[str] = SINCE_OPTION,
    config: Optional[Path] = CONFIG_OPTION,
    log_root: Optional[str] = LOG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Check a model version's logged traffic for drift and quality against its training data commit; with a
    monitor spec as --config, also evaluate its alert rules and run the actions of those that fire."""
    spec = _spec(config, model)
    result = _run(model, version, last, since, config, log_root, None)
    if spec is None or not spec.rules:
        emit(result.to_dict(), as_json, lambda _: describe(result))
        return
    from fabric.monitor.alerts import run_spec

    outcome = run_spec(spec, result=result)
    emit({**result.to_dict(), "alerts": outcome["alerts"], "suppressed": outcome["suppressed"]}, as_json,
         lambda _: describe(result) + "\n" + _alerts(outcome))


@app.command()
def report(
    model: str = typer.Argument(..., help="Registered model name."),
    out: Path = typer.Option(..., "--out", help="Folder the HTML and JSON report are written to."),
    version: Optional[str] = VERSION_OPTION,
    last: Optional[int] = LAST_OPTION,
    since: Optional[str] = SINCE_OPTION,
    config: Optional[Path] = CONFIG_OPTION,
    log_root: Optional[str] = LOG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Run the same check and write its Evidently report (HTML and JSON) into --out."""
    result = _run(model, version, last, since, config, log_root, str(out))
    emit(result.to_dict(), as_json, lambda _: f"{_headline(result)}\nreport: {result.html_path}\n"
                                              f"        {result.json_path}")


@app.command()
def ui(
    port: int = typer.Option(8000, "--port", help="Port to serve on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 exposes it to the network)."),
) -> None:
    """Serve Evidently's UI on the monitoring workspace (a project per model) until Ctrl-C."""
    import os

    from fabric.monitor import workspace_dir

    os.environ.setdefault("DO_NOT_TRACK", "1")  # no usage telemetry from Evidently's service
    folder = workspace_dir()
    folder.mkdir(parents=True, exist_ok=True)
    from evidently.ui.service.app import get_config, run

    print(f"Evidently UI on http://{host}:{port} (workspace {folder}); Ctrl-C stops it", flush=True)
    run(get_config(host=host, port=port, workspace=str(folder)))


def _run(model: str, version: str | None, last: int | None, since: str | None, config: Path | None,
         log_root: str | None, out_dir: str | None) -> Any:
    from fabric.config import ConfigError, load_yaml
    from fabric.monitor import MonitorConfig, MonitorError, run_check

    try:
        cfg = None
        if config is not None:
            loaded = load_yaml(config)
            section = loaded["check"] if isinstance(loaded.get("check"), dict) else loaded
            cfg = MonitorConfig.from_dict(section, source=str(config))
        return run_check(model, version=version, last=last, since=since, cfg=cfg, log_root=log_root, out_dir=out_dir)
    except (ConfigError, MonitorError) as exc:
        fail(str(exc))


def _spec(config: Path | None, model: str) -> Any:
    """The monitor spec in ``config`` (a file with ``model:`` and ``rules:``), else None."""
    from fabric.config import ConfigError, load_yaml
    from fabric.monitor.alerts import MonitorSpec

    if config is None or "rules" not in load_yaml(config):
        return None
    try:
        spec = MonitorSpec.from_yaml(config)
    except ConfigError as exc:
        fail(str(exc))
    if spec.model != model:
        fail(f"{config} watches model {spec.model!r}, not {model!r}")
    return spec


def _alerts(outcome: dict[str, Any]) -> str:
    lines = [f"alert {a['rule']}: {a['message']} -> " + ", ".join(
        f"{name} {'ok' if done.get('ok') else 'failed: ' + str(done.get('error'))}" for name, done in
        a["actions"].items()) for a in outcome["alerts"]]
    if outcome["suppressed"]:
        lines.append(f"in cool-down (fired earlier): {', '.join(outcome['suppressed'])}")
    return "\n".join(lines) or "alerts: no rule fired"


def _headline(result: Any) -> str:
    if getattr(result, "kind", "model") == "rag":
        return (f"{result.model} at data commit {result.version[:12]}: {result.rows} answers in the window, "
                f"{result.answered} scored, {result.not_covered} not covered by the documents")
    window = f"last {result.window['last']} rows" if "last" in result.window else f"since {result.window['since']}"
    drifted = len(result.drifted_columns)
    return (f"{result.model} v{result.version}: {drifted} of {len(result.columns)} features drifted (share "
            f"{result.drift_share:.2f}; dataset drift: {'yes' if result.dataset_drift else 'no'})\n"
            f"window: {window}, {result.rows} rows ({result.labelled_rows} labelled) vs reference "
            f"{result.reference_uri} ({result.reference_rows} rows)")


def describe(result: Any) -> str:
    """The terminal summary of a check: what drifted first, then quality and where the report is."""
    if getattr(result, "kind", "model") == "rag":
        return _describe_rag(result)
    rows = sorted(result.columns.items(), key=lambda kv: (not kv[1]["drifted"], kv[0]))
    if result.prediction_drift:
        rows.insert(0 if result.prediction_drift["drifted"] else len(rows), ("(prediction)", result.prediction_drift))
    width = max([len(name) for name, _ in rows] + [6])
    lines = [_headline(result), "", f"{'column':<{width}}  {'method':<30}  {'score':>9}  {'threshold':>9}  drifted"]
    for name, entry in rows:
        score, threshold = (("-" if v is None else f"{v:.4g}") for v in (entry["score"], entry["threshold"]))
        lines.append(f"{name:<{width}}  {str(entry['method']):<30}  {score:>9}  {threshold:>9}  "
                     f"{'yes' if entry['drifted'] else 'no'}")
    lines.append("")
    if result.quality:
        lines.append(f"quality on {result.labelled_rows} labelled rows: " + ", ".join(
            f"{k} {v:.4f}" for k, v in result.quality.items() if v is not None))
    else:
        lines.append(f"quality: none ({result.quality_note})")
    lines += [f"report: {result.html_path}", f"        {result.json_path}"]
    if result.mlflow_run_id:
        lines.append(f"MLflow run: {result.mlflow_run_id} (experiment fabric-monitor)")
    return "\n".join(lines)


def _describe_rag(result: Any) -> str:
    """A RAG app's check: the figures the rules read, then the lowest-scored answers."""
    def share(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [_headline(result), f"mean groundedness {share(result.mean_groundedness)}, share under 0.5 "
             f"{share(result.ungrounded_share)} (scorers: {', '.join(f'{k} {v}' for k, v in result.scorers.items())})",
             f"guardrail acted on {share(result.guardrail_share)} "
             f"({', '.join(f'{n} {a}' for a, n in result.guardrail.items()) or 'none'})"]
    if result.worst:
        lines += ["", "lowest-scored answers:"]
        lines += [f"  {w['groundedness']:.3f}  {w['query'][:60]!r} -> {w['answer'][:80]!r}" for w in result.worst]
    lines += [f"report: {result.html_path}", f"        {result.json_path}"]
    if result.mlflow_run_id:
        lines.append(f"MLflow run: {result.mlflow_run_id} (experiment fabric-monitor)")
    return "\n".join(lines)
