"""Root commands: run, submit, doctor, and the command groups."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from fabric.cli import config_cmds, ct_cmds, data_cmds, llm_cmds, models_cmds, monitor_cmds, serve_cmds
from fabric.cli._output import JSON_OPTION, emit, fail

app = typer.Typer(
    name="fabric",
    help="A Ray-based compute fabric with LLMOps extensions: versioned data, training, registry, serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(config_cmds.app, name="config")
app.add_typer(data_cmds.app, name="data")
app.add_typer(models_cmds.app, name="models")
app.add_typer(llm_cmds.app, name="llm")
app.add_typer(serve_cmds.app, name="serve")
app.add_typer(monitor_cmds.app, name="monitor")
app.add_typer(ct_cmds.app, name="ct")

@app.callback()
def _root(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", help="Show the libraries' INFO logs (Ray, MLflow, ...) here "
                                 "instead of in a log file under the fabric home."),
) -> None:
    """A Ray-based compute fabric with LLMOps extensions: versioned data, training, registry, serving, monitoring."""
    ctx.obj = {"verbose": verbose}
    # `fabric demo` routes the logs itself: it has a --verbose of its own and prints where they go.
    if verbose or ctx.invoked_subcommand in (None, "demo"):
        return
    import atexit

    from fabric.logs import log_file, quiet

    if log_file() is not None:  # an earlier command in this process (a test) already chose the file
        return
    quiet(ctx.invoked_subcommand)

    def where() -> None:
        path = log_file()
        if path is not None and path.is_file() and path.stat().st_size:
            print(f"(libraries' logs: {path}; `fabric --verbose ...` shows them here)", file=sys.stderr)

    atexit.register(where)


CONFIG_OPTION = typer.Option(None, "--config", "-c", help="YAML config file; defaults apply when omitted.")
OVERRIDES_ARG = typer.Argument(None, help="Dotted key=value overrides, e.g. train.epochs=3.", show_default=False)


@app.command()
def run(
    workload: str = typer.Argument(..., help="A shipped workload (e.g. smoke) or a path to your own module (.py)."),
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    config: Optional[Path] = CONFIG_OPTION,
) -> None:
    """Run a workload in this process on the configured Ray (embedded local Ray unless RAY_ADDRESS is set)."""
    from fabric.cluster import SharedStorageError
    from fabric.config import ConfigError
    from fabric.runtime import resolve_stack
    from fabric.workload import WorkloadError, load_workload, print_result

    try:
        loaded = load_workload(workload)
        cfg = loaded.load_config(config, overrides or [])
        resolve_stack(getattr(cfg, "runtime", None))  # inside a Ray job: refuses a home in its upload folder
    except (ConfigError, WorkloadError) as exc:
        fail(str(exc))
    try:
        result = loaded.run(cfg)
    except SharedStorageError as exc:  # found once Ray is up, still before any work
        fail(str(exc))
    print_result(result)


@app.command()
def submit(
    workload: str = typer.Argument(..., help="A shipped workload (e.g. smoke) or a path to your own module (.py)."),
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    config: Optional[Path] = CONFIG_OPTION,
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray dashboard address, e.g. http://HEAD:8265. Default: RAY_ADDRESS."
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Stream the job's logs until it ends."),
    forward_secrets: bool = typer.Option(
        True, "--forward-secrets/--no-forward-secrets", help="Pass MLflow, Qdrant and lakeFS credentials set here "
        "to the job. Ray's dashboard shows a job's env vars: with --no-forward-secrets set them on the cluster."
    ),
) -> None:
    """Submit a workload as a Ray job (working_dir = this folder); exits 0 only when the job SUCCEEDED.

    With --no-wait it exits 0 once the job is submitted.
    """
    from fabric.config import ConfigError
    from fabric.jobs import submit as submit_job
    from fabric.workload import WorkloadError

    try:
        outcome = submit_job(workload, str(config) if config else None, overrides or [], address=address, wait=wait,
                             forward_secrets=forward_secrets)
    except (ConfigError, WorkloadError) as exc:
        fail(str(exc))
    except ConnectionError as exc:
        fail(f"cannot reach the Ray dashboard at {address or 'RAY_ADDRESS'}: {exc}")
    summary = (outcome.message or "").strip().splitlines()
    if wait and not outcome.ended:
        summary = [f"still {outcome.status.lower()} when the wait ended, which is not success; follow it with "
                   f"ray job logs --follow {outcome.submission_id}"]
    print(f"job {outcome.submission_id} {outcome.status}" + (f": {summary[0]}" if summary else ""))
    if wait and not outcome.ok:  # --no-wait succeeds once the job is submitted
        raise typer.Exit(1)


@app.command()
def doctor(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Read the runtime section of this config."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show the resolved stack: Ray, MLflow, data backend, Qdrant, cached models, vLLM."""
    from fabric.config import ConfigError
    from fabric.doctor import diagnose
    from fabric.runtime import RuntimeConfig

    try:
        runtime = RuntimeConfig.from_dict(_runtime_section(config), source=str(config)) if config else None
        report = diagnose(runtime)
    except ConfigError as exc:
        fail(str(exc))
    emit(report, as_json)


@app.command()
def demo(
    ctx: typer.Context,
    quick: bool = typer.Option(False, "--quick", help="The reduced size CI runs (fewer epochs and requests)."),
    act: str = typer.Option("classical", "--act", help="Which story: classical (drift -> retrain -> canary) or "
                            "rag (cited answers, groundedness, an alert when answers stop being supported)."),
    verbose: bool = typer.Option(False, "--verbose", help="Show the libraries' logs here instead of in a file "
                                 "(same as `fabric --verbose demo`)."),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON line of the demo's figures."),
) -> None:
    """The closed loop on the embedded stack: data, champion, serving, drift, alert, retraining, canary, promotion."""
    import json

    from fabric.demo import ACTS, run_demo

    if act not in ACTS:
        fail(f"unknown act {act!r}; acts: {', '.join(ACTS)}")
    result = run_demo(act, quick=quick, verbose=verbose or bool((ctx.obj or {}).get("verbose")))
    if as_json:
        print(json.dumps(result, default=str), flush=True)


def _runtime_section(path: Path) -> dict:
    from fabric.config import load_yaml

    return load_yaml(path).get("runtime") or {}
