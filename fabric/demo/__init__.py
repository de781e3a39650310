"""``fabric demo``: the product's main job on the embedded stack, in one command.

Acts (``--act``): ``classical`` (the default): a served model notices its world changed, retrains on the new
data, proves it is better on recent rows and replaces itself through a canary, every step on the record
(:mod:`fabric.demo.classical`). ``rag``: versioned documents into Qdrant, a served RAG chain answers with citations
and a groundedness score, and an LLM that gets numbers wrong sets off the groundedness alert (:mod:`fabric.demo.rag`).

Example:
    >>> result = run_demo(quick=True)          # fabric demo --quick --json
    >>> result["champion_after"] != result["champion_before"]
    True
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["ACTS", "run_demo"]

ACTS = ("classical", "rag")


def run_demo(act: str = "classical", quick: bool = False, verbose: bool = False, out: Any = None) -> dict[str, Any]:
    """Plays ``act`` on the embedded stack (or whatever RAY_ADDRESS / MLFLOW_TRACKING_URI name); returns its figures.

    Prints a progress line per step, then a table of steps with their evidence and where the report, the
    Evidently UI and the MLflow UI are. Without ``verbose`` the libraries' INFO logs go to a file it names.
    """
    import ray.data

    from fabric.demo import classical, rag
    from fabric.demo.report import Story
    from fabric.logs import log_file, quiet
    from fabric.runtime import RayConfig, init_ray, resolve_stack, setup_mlflow

    if act not in ACTS:
        raise ValueError(f"unknown act {act!r}; acts: {', '.join(ACTS)}")
    out = out or sys.stdout
    log_path = None if verbose else (log_file() or quiet("demo"))
    if log_path:
        print(f"fabric demo: libraries' logs go to {log_path} (--verbose shows them here)", file=out, flush=True)
    init_ray(RayConfig(), log_to_driver=verbose)
    ray.data.DataContext.get_current().enable_progress_bars = verbose
    setup_mlflow()
    story = Story(log_path, verbose, out)
    result = (classical if act == "classical" else rag).run(story, quick)
    stack = resolve_stack()
    if act == "classical":
        story.note(f"drift report (HTML): {result['report_html']}")
    tools = _tools_folder()
    story.note(f"Evidently UI: {tools}fabric monitor ui   (then open http://127.0.0.1:8000)")
    story.note(f"MLflow UI:    {tools}mlflow ui --backend-store-uri {stack.mlflow_tracking_uri}")
    print("\n" + story.table(), file=out, flush=True)
    return {"act": act, "quick": quick, **result, "log": str(log_path) if log_path else None}


def _tools_folder() -> str:
    """Where this environment's ``fabric`` and ``mlflow`` commands are (``.venv/bin/`` after ``make demo``), as a
    prefix for the commands the demo prints; empty when they are on PATH anyway."""
    import shutil
    from pathlib import Path

    folder = Path(sys.executable).parent
    if shutil.which("mlflow") == str(folder / "mlflow"):
        return ""
    try:
        return f"{folder.relative_to(Path.cwd())}/"
    except ValueError:
        return f"{folder}/"
