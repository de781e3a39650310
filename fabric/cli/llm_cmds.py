"""``fabric llm ...``: LLM model sources, each command a thin call into :mod:`llm.models`."""

from __future__ import annotations

from typing import Optional

import typer

from fabric.cli._output import JSON_OPTION, emit, fail

app = typer.Typer(help="LLMs: base models in the local model cache (never fetched from a hub).", no_args_is_help=True)


@app.command()
def pull(
    source: Optional[str] = typer.Argument(
        None, help="smollm2-135m-instruct (default), a .gguf file, an MLflow URI (models:/NAME/VERSION, runs:/...) "
        "or a local Hugging Face folder.", show_default=False,
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Materialise a model in the model cache ($FABRIC_HOME/models) and print its folder."""
    import time

    from llm.models import DEFAULT_MODEL, ModelSourceError, resolve_model

    started = time.perf_counter()
    try:
        path = resolve_model(source)
    except ModelSourceError as exc:
        fail(str(exc))
    result = {"source": source or DEFAULT_MODEL, "path": str(path), "seconds": round(time.perf_counter() - started, 2)}
    emit(result, as_json, lambda d: d["path"])
