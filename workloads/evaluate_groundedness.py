r"""Evaluate the groundedness scorers on held-out labelled pairs by domain, against a naive overlap baseline.

Run it so (the figures and the table go to one MLflow run):

    fabric run prepare_groundedness --config configs/rag/groundedness_data.yaml     # once: the labelled pairs
    fabric run evaluate_groundedness --config configs/rag/evaluate_groundedness.yaml
    python -m workloads.evaluate_groundedness --config configs/rag/evaluate_groundedness.yaml \
        data.max_per_source=300 'scorers=[lexical,overlap]'
    RAY_AUTH_MODE=token ray job submit --working-dir . \
        --runtime-env-json "{\"env_vars\": {\"FABRIC_HOME\": \"$FABRIC_HOME\"}}" \
        -- python -m workloads.evaluate_groundedness --config configs/rag/evaluate_groundedness.yaml

Steps: pin ``data.uri`` (rag.labelled's pairs) to its commit; fit the ``overlap`` baseline's calibration on the
``calibration`` split (rows of held-out documents left out); take the ``held_out`` split by domain, at most
``data.max_per_source`` rows per source, plus the project's hand-written RAG answers in ``qa_dialogue``; score
every set with each scorer that loads (``default`` is recorded with the scorer it resolves to; one that cannot
load is skipped with its reason); log each scorer's per-domain and per-source balanced accuracy, ROC-AUC, F1 of
the unsupported class and answers/s, the mean and minimum over domains, and the table as an artifact; print the
table and return the metrics.
"""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from fabric.config import FabricConfig, Field
from fabric.data.uri import DatasetURI
from fabric.workload import WorkloadConfig, run_module

PAIRS_URI = "lakefs://groundedness/main/pairs.parquet"
PREPARE = "fabric run prepare_groundedness --config configs/rag/groundedness_data.yaml"


class PairsNotReady(RuntimeError):
    """The labelled pairs are not in the data store. The message names the command that commits them."""


class DataConfig(FabricConfig):
    """The labelled pairs and how many of them are scored."""

    uri: DatasetURI = Field(PAIRS_URI, description="Versioned labelled pairs (rag.labelled's columns); the run "
                            "records the commit id it resolves to.")
    max_per_source: int | None = Field(2000, ge=1, description="At most this many rows per source, in the "
                                       "calibration fit and in each held-out set (a seeded sample stratified by "
                                       "label). Empty: every row.")
    seed: int = Field(0, description="Seed of those samples.")


class Config(WorkloadConfig):
    """Held-out evaluation of groundedness scorers."""

    data: DataConfig = Field(default_factory=DataConfig, description="Labelled pairs.")
    scorers: list[str] = Field(["default", "lexical", "overlap"], min_length=1,
                               description="Scorers to evaluate: rag.groundedness names, and 'overlap' (the naive "
                                           "baseline, calibrated here on the calibration split).")
    include_rag_answers: bool = Field(True, description="Add the hand-written RAG answers (rag.evaluation."
                                      "load_answers, never trained on) to the qa_dialogue domain.")
    batch_size: int = Field(64, ge=1, description="Answers per detail_batch call.")

    @field_validator("scorers")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        from rag.groundedness import available_scorers

        known = [*available_scorers(), "overlap"]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown scorer(s) {', '.join(unknown)}; choose from {', '.join(known)}")
        return list(dict.fromkeys(names))


def load(cfg: Config) -> tuple[str, str, Any]:
    """(pinned URI, commit, pairs); PairsNotReady naming the prepare command when they were never committed."""
    from fabric import data
    from rag.labelled import load_pairs

    try:
        return load_pairs(cfg.data.uri, store=data.open_store(cfg.runtime))
    except data.NotFoundError as exc:
        raise PairsNotReady(f"no labelled pairs at {cfg.data.uri}: {exc}. Commit them first: `{PREPARE}`") from exc


def build_scorers(cfg: Config, pairs: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The scorers that load (``overlap`` fitted on the calibration split), and why the others did not."""
    from rag.groundedness import get_scorer
    from rag.heldout import fit_overlap

    scorers, skipped = {}, {}
    for name in cfg.scorers:
        try:
            scorers[name] = (fit_overlap(pairs, cfg.data.max_per_source, cfg.data.seed) if name == "overlap"
                             else get_scorer(name))
        except Exception as exc:  # nli without a registered champion, judge without an endpoint
            skipped[name] = f"{type(exc).__name__}: {exc}"
            print(f"[evaluate_groundedness] scorer {name!r} skipped: {skipped[name]}", flush=True)
    return scorers, skipped


def flatten(results: dict[str, Any]) -> dict[str, float]:
    """``SCORER.DOMAIN.METRIC``, ``SCORER.source.SOURCE.METRIC``, ``SCORER.mean_balanced_accuracy``, ... (numbers
    only)."""
    flat: dict[str, float] = {}
    for name, r in results.items():
        for group, prefix in (("domains", name), ("sources", f"{name}.source")):
            for key, metrics in r[group].items():
                flat.update({f"{prefix}.{key}.{m}": float(v) for m, v in metrics.items()
                             if isinstance(v, int | float) and not isinstance(v, bool)})
        flat.update({f"{name}.{k}": float(r[k]) for k in ("mean_balanced_accuracy", "min_domain_balanced_accuracy")
                     if r[k] is not None})
    return flat


def main(cfg: Config) -> dict[str, Any]:
    import mlflow

    from fabric.tracking import start_run
    from rag.evaluation import load_answers
    from rag.heldout import evaluate, format_table, heldout_sets, sets_hash

    uri, commit, pairs = load(cfg)
    with start_run(cfg, run_name="evaluate_groundedness") as run:
        mlflow.set_tags({"fabric.data.uri": uri, "fabric.data.commit": commit})
        scorers, skipped = build_scorers(cfg, pairs)
        answers = load_answers() if cfg.include_rag_answers else None
        sets = heldout_sets(pairs, answers, "held_out", cfg.data.max_per_source, cfg.data.seed)
        rows = sets_hash(sets)
        mlflow.set_tag("fabric.groundedness.heldout_hash", rows)
        results = evaluate(scorers, sets, cfg.batch_size)
        flat = flatten(results)
        table = format_table(results)
        mlflow.log_metrics(flat)
        mlflow.set_tags({f"fabric.groundedness.{n}.scorer": r["scorer"] for n, r in results.items()})
        mlflow.log_text(table, "groundedness_table.txt")
        mlflow.log_dict(results, "groundedness_results.json")
        if "overlap" in scorers:
            mlflow.log_dict({"slope": scorers["overlap"].calibration[0],
                             "intercept": scorers["overlap"].calibration[1]}, "overlap_calibration.json")
        if skipped:
            mlflow.log_dict(skipped, "skipped_scorers.json")
    print(f"\n{table}\n", flush=True)
    return {**flat, "resolved": {n: r["scorer"] for n, r in results.items()}, "skipped_scorers": skipped,
            "heldout_hash": rows, "uri": uri, "commit": commit, "mlflow_run_id": run.info.run_id}


if __name__ == "__main__":
    run_module(__name__)
