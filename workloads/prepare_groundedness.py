r"""Prepare workload: commits the human-labelled groundedness pairs (``rag.labelled``) to a versioned dataset.

    python -m workloads.prepare_groundedness --config configs/rag/groundedness_data.yaml
    fabric run prepare_groundedness --config configs/rag/groundedness_data.yaml
    fabric run prepare_groundedness --config configs/rag/groundedness_data.yaml 'sources=[begin,wice]'
    RAY_AUTH_MODE=token ray job submit --working-dir . \
        --runtime-env-json "{\"env_vars\": {\"FABRIC_HOME\": \"$FABRIC_HOME\"}}" \
        -- python -m workloads.prepare_groundedness --config configs/rag/groundedness_data.yaml

Steps: read the chosen sources' raw files shipped under ``rag/data/groundedness/`` into (claim, context, label)
pairs, split them by document (70% train, 10% calibration, 20% held out), write them as one Parquet file in one
commit (none when the branch already holds the same table), and print the rows per source, domain and split.
"""

from __future__ import annotations

from typing import Any, Literal

from fabric.config import Field
from fabric.data.uri import DatasetURI
from fabric.workload import WorkloadConfig, run_module

SourceName = Literal["summedits", "vitaminc", "begin", "faithdial", "factcheck_gpt", "wice"]


class Config(WorkloadConfig):
    uri: DatasetURI = Field("lakefs://groundedness/main/pairs.parquet",
                            description="Where the pairs go: lakefs://REPO/BRANCH/PATH (one Parquet file).")
    sources: list[SourceName] = Field(
        ["summedits", "vitaminc", "begin", "faithdial", "factcheck_gpt", "wice"], min_length=1,
        description="Datasets to include (rag.labelled.SOURCES); see rag/data/groundedness/README.md.")
    seed: int = Field(0, description="Seed of the document-level split; another seed gives another split.")


def main(cfg: Config) -> dict[str, Any]:
    from fabric import data
    from rag.labelled import commit_pairs, load_pairs

    store = data.open_store(cfg.runtime)
    result = commit_pairs(cfg.uri, store=store, sources=list(cfg.sources), seed=cfg.seed)
    _, _, pairs = load_pairs(str(data.DataURI.parse(cfg.uri).at(result["commit"])), store=store)
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for (source, domain, split), n in pairs.groupby(["source", "domain", "split"]).size().items():
        counts.setdefault(source, {}).setdefault(domain, {})[split] = int(n)
        print(f"[prepare] {source:14s} {domain:12s} {split:12s} {n:6d}", flush=True)
    verb = "committed" if result["committed"] else "unchanged at"
    print(f"[prepare] {result['rows']} pairs {verb} {cfg.uri} as {result['commit']}", flush=True)
    return {**result, "counts": counts}


if __name__ == "__main__":
    run_module(__name__)
