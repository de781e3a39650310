r"""Ingest workload: commits one of scikit-learn's bundled tables to a versioned dataset.

    python -m workloads.ingest_sklearn --config configs/data/ingest_breast_cancer.yaml
    fabric run ingest_sklearn --config configs/data/ingest_breast_cancer.yaml
    RAY_AUTH_MODE=token ray job submit --working-dir . \
        --runtime-env-json "{\"env_vars\": {\"FABRIC_HOME\": \"$FABRIC_HOME\"}}" \
        -- python -m workloads.ingest_sklearn --config configs/data/ingest_breast_cancer.yaml

Steps: create the repository if it is new, load the table (feature names with spaces become snake_case, the
target becomes ``label``), write it as Parquet in one commit, and print the commit id.
"""

from __future__ import annotations

from typing import Any, Literal

from fabric.config import Field
from fabric.tabular.tables import load_frame
from fabric.workload import WorkloadConfig, run_module


class Config(WorkloadConfig):
    dataset: Literal["breast_cancer", "wine", "iris", "digits"] = Field(
        "breast_cancer", description="scikit-learn bundled dataset to ingest."
    )
    uri: str = Field(..., description="Where to write it: lakefs://REPO/BRANCH/PATH.")
    message: str = Field("Ingest from scikit-learn", min_length=1, description="Commit message.")


def main(cfg: Config) -> dict[str, Any]:
    from fabric import data

    store = data.open_store(cfg.runtime)
    data.init(data.DataURI.parse(cfg.uri).repo, store=store)
    frame = load_frame(cfg.dataset)
    commit = data.write(cfg.uri, frame, cfg.message, metadata={"source": f"sklearn.{cfg.dataset}"}, store=store)
    print(f"[ingest] {len(frame)} rows of {cfg.dataset} committed to {cfg.uri} as {commit}", flush=True)
    return {"uri": cfg.uri, "commit": commit, "rows": len(frame), "columns": len(frame.columns)}


if __name__ == "__main__":
    run_module(__name__)
