r"""Ingest workload: a versioned documents dataset → token chunks → embeddings on a Ray Data actor pool → a Qdrant
collection for its data commit, published under an alias once complete.

    python -m workloads.ingest_docs --config configs/rag/python_docs.yaml
    fabric run ingest_docs --config configs/rag/python_docs.yaml
    fabric run ingest_docs --config configs/rag/python_docs.yaml uri=lakefs://docs/v2/python/pages.parquet
    RAY_AUTH_MODE=token ray job submit --working-dir . \
        --runtime-env-json "{\"env_vars\": {\"FABRIC_HOME\": \"$FABRIC_HOME\"}}" \
        -- python -m workloads.ingest_docs --config configs/rag/python_docs.yaml

Steps (:func:`rag.ingest.ingest`): commit the demo corpus first when the URI is empty (``seed_corpus``), pin the
URI to its commit, stop there when that commit's collection is already live, else chunk, embed what the
collection lacks (a killed run is finished, not restarted), check it is complete, move the alias, drop
collections older than the previous one. A build is logged to MLflow (settings, data commit, collection, counts);
a run that had nothing to do is not.
"""

from __future__ import annotations

from typing import Any

from fabric.workload import WorkloadConfig, run_module
from rag.ingest import IngestSettings


class Config(IngestSettings, WorkloadConfig):
    """The ingestion settings (:class:`rag.ingest.IngestSettings`) plus where the work runs."""


def main(cfg: Config) -> dict[str, Any]:
    import mlflow

    from fabric.tracking import start_run
    from rag.ingest import ingest

    result = ingest(cfg, runtime=cfg.runtime)
    if result["skipped"]:
        return result
    tags = {"fabric.data.uri": result["uri"], "fabric.data.commit": result["commit"],
            "fabric.rag.collection": result["collection"], "fabric.rag.alias": result["alias"]}
    with start_run(cfg, run_name="ingest_docs", tags=tags) as run:
        mlflow.log_metrics({key: float(result[key]) for key in ("documents", "chunks", "embedded", "seconds")})
    return {**result, "mlflow_run_id": run.info.run_id}


if __name__ == "__main__":
    run_module(__name__)
