r"""Evaluate RAG: retrieval hit@k and MRR on the labeled questions, and each groundedness scorer's balanced accuracy,
ROC-AUC and speed on the labeled answers, all logged to one MLflow run.

    fabric run ingest_docs --config configs/rag/python_docs.yaml      # once: the index this evaluates
    fabric run evaluate_rag --config configs/rag/evaluate.yaml
    python -m workloads.evaluate_rag --config configs/rag/evaluate.yaml 'groundedness.scorers=[lexical]'
    RAY_AUTH_MODE=token ray job submit --working-dir . \
        --runtime-env-json "{\"env_vars\": {\"FABRIC_HOME\": \"$FABRIC_HOME\"}}" \
        -- python -m workloads.evaluate_rag --config configs/rag/evaluate.yaml

Steps: open the collection the alias points at (an index that was never ingested stops here, naming the ingest
command); read the documents it was built from (its documents URI at its data commit) so chunk relevance uses
the same offsets; for each retrieval mode (dense, and hybrid when the collection has keyword vectors) ask every
question and rank the first relevant page and chunk; score every labeled answer with each scorer that loads
(``nli`` needs a registered champion: without one it is skipped and the reason recorded), on all answers and on
those whose pages the ``nli`` scorer's training held out. Metrics go to MLflow, the per-question and per-answer
results as artifact tables; a summary table is printed and the metrics returned.
"""

from __future__ import annotations

from typing import Any, Literal

from fabric.config import FabricConfig, Field
from fabric.workload import WorkloadConfig, run_module

INGEST = "fabric run ingest_docs --config configs/rag/python_docs.yaml"


class IndexNotReady(RuntimeError):
    """The index to evaluate cannot be used: never ingested, or Qdrant unreachable. The message says what to run."""


class IndexConfig(FabricConfig):
    alias: str = Field("python-docs", description="Index alias to evaluate (the one ingest_docs publishes).")
    modes: list[Literal["dense", "hybrid"]] = Field(
        ["dense", "hybrid"], min_length=1,
        description="Retrieval modes to compare; hybrid is skipped (and said so) when the live collection was "
                    "ingested without keyword vectors.")
    documents_uri: str | None = Field(
        None, description="Documents the passages are located in (lakefs://REPO/REF/PATH). Empty: the URI and "
                          "data commit the live collection was built from.")


class RetrievalConfig(FabricConfig):
    enabled: bool = Field(True, description="Evaluate retrieval.")
    questions: str | None = Field(None, description="Labeled questions (JSONL). Empty: the packaged "
                                                    "rag/data/python_docs_questions.jsonl.")
    ks: list[int] = Field([1, 5, 10], min_length=1, description="Cut-offs for hit@k; MRR counts ranks up to max.")
    limit: int | None = Field(None, ge=1, description="Only the first N questions (quick runs).")


class GroundednessConfig(FabricConfig):
    enabled: bool = Field(True, description="Evaluate the groundedness scorers.")
    answers: str | None = Field(None, description="Labeled answers (JSONL). Empty: the packaged "
                                                  "rag/data/groundedness_eval.jsonl.")
    scorers: list[str] = Field(["lexical", "nli"], min_length=1,
                               description="Scorers to evaluate (rag.groundedness names); one that cannot load "
                                           "(nli without a registered champion) is skipped with its reason.")
    held_out_share: float = Field(0.2, gt=0, lt=1, description="The nli training's held-out share of pages "
                                                               "(rag.claims.split_docs), for the held-out subset.")
    held_out_seed: int = Field(0, description="The nli training's split seed.")
    limit: int | None = Field(None, ge=1, description="Only the first N answers (quick runs).")


class Config(WorkloadConfig):
    index: IndexConfig = Field(default_factory=IndexConfig, description="Which index to evaluate.")
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig, description="Retrieval evaluation.")
    groundedness: GroundednessConfig = Field(default_factory=GroundednessConfig,
                                             description="Groundedness scorer evaluation.")


def open_index(cfg: Config) -> tuple[Any, dict[str, str]]:
    """The dense retriever on the live collection, and doc_id -> text of the documents it was built from."""
    from fabric import data
    from rag.corpus import load_documents
    from rag.index import IndexUnavailable, Retriever

    retriever = Retriever(cfg.index.alias, runtime=cfg.runtime, hybrid=False, refresh_interval_s=0)
    try:
        info = retriever.info
    except IndexUnavailable as exc:
        raise IndexNotReady(f"cannot evaluate index {cfg.index.alias!r}: {exc}. Ingest the documents first: "
                            f"`{INGEST}` (with the same alias and runtime)") from exc
    uri = cfg.index.documents_uri or str(data.DataURI.parse(info.uri).at(info.commit))
    _, _, docs = load_documents(uri, store=data.open_store(cfg.runtime))
    return retriever, dict(zip(docs["doc_id"], docs["text"], strict=True))


def evaluate_retrieval(cfg: Config, retriever: Any, documents: dict[str, str]) -> dict[str, dict[str, Any]]:
    from rag.evaluation import load_questions, retrieval_metrics
    from rag.index import Retriever

    questions = load_questions(cfg.retrieval.questions)[:cfg.retrieval.limit]
    results = {}
    for mode in dict.fromkeys(cfg.index.modes):
        if mode == "hybrid" and not retriever.info.hybrid:
            print(f"[evaluate_rag] hybrid skipped: collection {retriever.collection} has no keyword vectors "
                  "(ingest with hybrid: true)", flush=True)
            continue
        searcher = retriever if mode == "dense" else Retriever(cfg.index.alias, runtime=cfg.runtime, hybrid=True,
                                                               refresh_interval_s=0)
        results[mode] = retrieval_metrics(searcher, questions, cfg.retrieval.ks, documents)
    return results


def held_out_pages(cfg: Config, doc_ids: list[str]) -> set[str] | None:
    try:
        from rag.claims import split_docs
    except ImportError:
        return None
    return set(split_docs(doc_ids, cfg.groundedness.held_out_share, cfg.groundedness.held_out_seed)[1])


def evaluate_scorers(cfg: Config, doc_ids: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    from rag.evaluation import classification_metrics, load_answers, scorer_metrics
    from rag.groundedness import get_scorer

    items = load_answers(cfg.groundedness.answers)[:cfg.groundedness.limit]
    held = held_out_pages(cfg, doc_ids)
    results, skipped = {}, {}
    for name in dict.fromkeys(cfg.groundedness.scorers):
        try:
            get_scorer(name)
        except Exception as exc:  # an unknown name, or nli without a registered champion
            skipped[name] = f"{type(exc).__name__}: {exc}"
            print(f"[evaluate_rag] scorer {name!r} skipped: {skipped[name]}", flush=True)
            continue
        metrics = scorer_metrics(name, items)
        if held:
            inside = [i for i, it in enumerate(items) if set(it.get("doc_ids") or [it["doc_id"]]) <= held]
            if inside:
                sub = classification_metrics([items[i]["label"] for i in inside],
                                             [metrics["per_item"][i]["score"] for i in inside])
                metrics.update({f"held_out_{k}": v for k, v in sub.items()})
        results[name] = metrics
    return results, skipped


def log_results(retrieval: dict[str, dict[str, Any]], scorers: dict[str, dict[str, Any]]) -> dict[str, float]:
    import mlflow
    import pandas as pd

    flat: dict[str, float] = {}
    for mode, m in retrieval.items():
        flat.update({f"{mode}.{k}": v for k, v in m.items() if isinstance(v, int | float)})
        mlflow.log_table(pd.DataFrame(m["per_question"]), f"retrieval_{mode}.json")
    for name, m in scorers.items():
        flat.update({f"{name}.{k}": v for k, v in m.items() if isinstance(v, int | float)})
        flat.update({f"{name}.kind.{k}": v for k, v in m["by_kind"].items()})
        mlflow.log_table(pd.DataFrame(m["per_item"]), f"groundedness_{name}.json")
    mlflow.log_metrics({k: float(v) for k, v in flat.items()})
    return flat


def print_summary(retrieval: dict[str, dict[str, Any]], scorers: dict[str, dict[str, Any]], ks: list[int]) -> None:
    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    if retrieval:
        cols = [f"page_hit_at_{k}" for k in sorted(ks)] + ["page_mrr"]
        cols += [c.replace("page", "chunk") for c in cols] + ["queries_per_s"]
        print("\nretrieval  " + "  ".join(f"{c:>16}" for c in cols))
        for mode, m in retrieval.items():
            print(f"{mode:<10} " + "  ".join(f"{cell(m.get(c)):>16}" for c in cols))
            misses = [r for r in m["per_question"] if r["page_rank"] is None or r["page_rank"] > 5]
            for r in misses[:5]:
                print(f"    miss@5 {r['id']} [{r['doc_id']}] {r['question']!r} -> {r['top_doc_ids'][:3]}")
    if scorers:
        cols = ["balanced_accuracy", "roc_auc", "answers_per_s", "held_out_balanced_accuracy", "held_out_n"]
        print("\nscorer     " + "  ".join(f"{c:>26}" for c in cols))
        for name, m in scorers.items():
            print(f"{name:<10} " + "  ".join(f"{cell(m.get(c)):>26}" for c in cols))
    print(flush=True)


def main(cfg: Config) -> dict[str, Any]:
    from fabric.tracking import start_run

    retriever, documents = (open_index(cfg) if cfg.retrieval.enabled else (None, None))
    with start_run(cfg, run_name="evaluate_rag") as run:
        retrieval = evaluate_retrieval(cfg, retriever, documents) if retriever is not None else {}
        if retriever is not None:
            import mlflow

            mlflow.set_tags({"fabric.index.alias": cfg.index.alias, "fabric.index.collection": retriever.collection,
                             "fabric.data.commit": retriever.commit})
        doc_ids = sorted(documents) if documents else _corpus_ids()
        scorers, skipped = evaluate_scorers(cfg, doc_ids) if cfg.groundedness.enabled else ({}, {})
        flat = log_results(retrieval, scorers)
        if skipped:
            import mlflow

            mlflow.log_dict(skipped, "skipped_scorers.json")
    print_summary(retrieval, scorers, cfg.retrieval.ks)
    return {**flat, "skipped_scorers": skipped, "mlflow_run_id": run.info.run_id,
            **({"collection": retriever.collection, "commit": retriever.commit} if retriever is not None else {})}


def _corpus_ids() -> list[str]:
    from rag.corpus import python_docs

    return sorted(python_docs()["doc_id"].astype(str))


if __name__ == "__main__":
    run_module(__name__)
