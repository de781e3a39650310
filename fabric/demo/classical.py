"""The classical act of ``fabric demo``: a served model notices its world changed, retrains and replaces itself.

1. ``data``: scikit-learn's breast cancer table becomes the versioned dataset ``lakefs://demo/main/breast_cancer``.
2. ``champion``: ``train_tabular`` trains an MLP on that commit with Ray Train and registers it as champion.
3. ``serve``: the champion is served (``fabric serve``'s app, API keys, inference log).
4. ``traffic``: patients from the usual devices; their biopsy results (labels) arrive later.
5. ``shift``: a partner clinic's new device reports sizes on another scale (see :mod:`fabric.demo.traffic`).
6. ``monitor``: the Evidently check of ``configs/monitor/breast_cancer.yaml`` finds the drift; its rule fires.
7. ``ct``: the alert starts the continuous-training pipeline of ``configs/ct/breast_cancer.yaml``: snapshot,
   validate, train, evaluate, register, gate, canary through the serving app, observe, finish.
"""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Any

from fabric.demo.report import Story

__all__ = ["SIZES", "run"]

ROOT = Path(__file__).resolve().parents[2]
MODEL = "breast-cancer"
#: (epochs, original rows, shifted rows, canary observation seconds) per size
SIZES = {"full": (8, 300, 600, 20), "quick": (3, 100, 300, 5)}


def run(story: Story, quick: bool) -> dict[str, Any]:
    """Plays the act, adding each step to ``story``; returns the figures of ``fabric demo --json``."""
    from fabric import registry

    epochs, n_before, n_after, observe_s = SIZES["quick" if quick else "full"]
    frame, commit = story.step("data", "versioned dataset", _data)
    champion = story.step("champion", "train and register the champion", _champion, epochs)
    keys = {role: secrets.token_urlsafe(16) for role in ("predict", "label", "admin")}
    url = story.step("serve", "serve the champion", _serve, keys)
    _traffic(story, url, keys, frame, n_before, n_after)
    monitor_spec, check = story.step("monitor", "drift check on the new device's window", _monitor, n_after)
    alive = threading.Event()
    feeder = threading.Thread(target=_keep_sending, args=(url, keys["predict"], frame, alive), daemon=True)
    feeder.start()  # the canary needs live traffic to judge the challenger on
    try:
        outcome = story.step("alert", "alert rules -> continuous training", _alert, monitor_spec, check, url,
                             keys["admin"], epochs, observe_s)
    finally:
        alive.set()
        feeder.join()
    pipeline = next((a["actions"]["ct"].get("pipeline") for a in outcome["alerts"] if "ct" in a["actions"]), None)
    if pipeline:
        story.add_pipeline(pipeline)
    after = registry.show(MODEL)["aliases"].get("champion")
    story.note(f"champion of {MODEL}: version {champion['version']} -> {after}")
    return {"model": MODEL, "data_commit": commit, "champion_before": champion["version"], "champion_after": after,
            "drift_share": check.drift_share, "drifted_columns": check.drifted_columns,
            "scores": (pipeline or {}).get("scores"), "pipeline_status": (pipeline or {}).get("status"),
            "report_html": check.html_path, "report_json": check.json_path, "serving_url": url}


def _data(story: Story) -> tuple[Any, str]:
    from fabric import data
    from fabric.tabular.tables import load_frame

    uri = "lakefs://demo/main/breast_cancer"
    frame = load_frame("breast_cancer")
    story.quietly(data.create_if_missing, uri, lambda: frame, "Ingest scikit-learn's breast cancer table",
                  {"source": "sklearn.breast_cancer"})
    commit = data.resolve(uri)
    story.evidence(f"{uri} @ {commit[:12]}, {len(frame)} rows x {len(frame.columns) - 1} features")
    return frame, commit


def _champion(story: Story, epochs: int) -> dict[str, Any]:
    from fabric import registry
    from fabric.tabular import train_model
    from fabric.tabular.config import TabularConfig

    cfg = TabularConfig.from_yaml(ROOT / "configs" / "tabular" / "train.yaml", _train_overrides(epochs))
    summary = story.quietly(train_model, cfg)
    version = summary["version"]
    if registry.show(MODEL)["aliases"].get("champion") != version:  # an earlier demo left a retrained champion
        registry.set_champion(MODEL, version, action="demo_reset", reason="fabric demo starts from a model "
                              "trained on the original devices' data")
    metrics = summary["test_metrics"]
    story.evidence(f"version {version}, run {summary['mlflow_run_id'][:12]}, holdout accuracy "
                   f"{metrics['accuracy']:.3f}, roc_auc {metrics['roc_auc']:.3f}")
    return summary


def _train_overrides(epochs: int) -> list[str]:
    """The training recipe's overrides at this size: --quick skips the ONNX export and its parity check."""
    return [f"train.epochs={epochs}"] + ([] if epochs == SIZES["full"][0] else ["export_onnx=false"])


def _serve(story: Story, keys: dict[str, str]) -> str:
    from fabric.runtime import _free_port
    from fabric.serve.app import build_app, run_app
    from fabric.serve.config import ServeConfig

    port = _free_port()
    cfg = ServeConfig.from_yaml(ROOT / "configs" / "serve" / "tabular.yaml",
                                [f"port={port}", "inference_log.flush_s=0.5", "monitor=null"])
    # The demo runs the monitor itself, step by step, instead of the app's schedule (monitor=null above).
    url = story.quietly(run_app, build_app, cfg, ",".join(f"{key}:{role}" for role, key in keys.items()))
    story.evidence(f"{url} ({MODEL}@champion, API keys on, inference log on)")
    return url


def _traffic(story: Story, url: str, keys: dict[str, str], frame: Any, n_before: int, n_after: int) -> None:
    from fabric.demo.traffic import post_labels, production_rows, send, shifted_columns

    def batch(shifted: bool, n: int, seed: int, prefix: str) -> str:
        rows, labels = production_rows(frame, n, seed=seed, shifted=shifted)
        ids = send(url, keys["predict"], rows, MODEL, prefix)
        accepted = post_labels(url, keys["label"], MODEL, ids, labels)  # the lab's key: labels, no predictions
        return f"{len(ids)} requests answered; {accepted} biopsy results (labels) arrived later"

    story.step("traffic", "patients from the usual devices", lambda s: s.evidence(batch(False, n_before, 1, "usual")))
    factors = shifted_columns([c for c in frame.columns if c != "label"])
    story.step("shift", "a new device reports sizes on another scale",
               lambda s: s.evidence(f"{batch(True, n_after, 2, 'new-device')}; {len(factors)} features scaled "
                                    "(lengths x1.5, areas x2.25)"))
    time.sleep(1.5)  # the inference log flushes every 0.5 s


def _monitor(story: Story, window: int) -> tuple[Any, Any]:
    from fabric.monitor import check
    from fabric.monitor.alerts import MonitorSpec

    spec = MonitorSpec.from_yaml(ROOT / "configs" / "monitor" / "breast_cancer.yaml",
                                 [f"check.last={window}", "ct.mode=inline"])
    result = story.quietly(check, MODEL, cfg=spec.check)
    quality = result.quality or {}
    drifted = result.drifted_columns
    story.evidence(f"drift share {result.drift_share:.0%} ({len(drifted)} of {len(result.columns)} features: "
                   f"{', '.join(drifted[:4])}{'...' if len(drifted) > 4 else ''})"
                   + (f"; accuracy on labelled rows {quality['accuracy']:.3f}" if "accuracy" in quality else ""))
    story.evidence(f"report {result.html_path}")
    return spec, result


def _alert(story: Story, spec: Any, result: Any, url: str, admin_key: str, epochs: int, observe_s: int) -> dict:
    import os

    from fabric.monitor.alerts import run_spec

    os.environ["FABRIC_ADMIN_KEY"] = admin_key
    spec.ct.overrides = [*spec.ct.overrides, f"serving.url={url}", f"serving.observe_s={observe_s}",
                         f"train_overrides=[{','.join(_train_overrides(epochs))}]",
                         "serving.canary_percent=30", "serving.min_requests=15"]
    outcome = story.quietly(run_spec, spec, result=result)
    fired = [a["rule"] for a in outcome["alerts"]]
    story.evidence(f"fired: {', '.join(fired) or 'nothing'}"
                   + (f"; in cool-down: {', '.join(outcome['suppressed'])}" if outcome["suppressed"] else ""))
    return outcome


def _keep_sending(url: str, key: str, frame: Any, stop: threading.Event) -> None:
    """New-device patients keep arriving while the pipeline runs (the canary's live traffic)."""
    from fabric.demo.traffic import production_rows, send

    seed = 100
    while not stop.is_set():  # about 20 patients a second: enough for the canary, light beside the retraining
        rows, _ = production_rows(frame, 10, seed=seed, shifted=True)
        try:
            send(url, key, rows, MODEL, f"live-{seed}", concurrency=1)
        except Exception:  # the app reloading or a request refused: the next batch tries again
            pass
        seed += 1
        stop.wait(0.5)
