"""rag/nli.py and workloads/train_groundedness.py: the trained cross-encoder registers with its held-out comparison,
becomes the default only when it beats lexical, loads from the registry, and ranks a supported answer above the
same answer with a changed number, date or entity on every case of a fixed set."""

from __future__ import annotations

import time
from pathlib import Path
from pydoc_data.topics import topics

import pytest

from fabric.config import ConfigError
from fabric.workload import load_workload
from rag import nli

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "rag" / "train_groundedness.yaml"
# The CI variant of the shipped config: a few pages, a few hundred pairs, one epoch (see the module's report).
TINY = ["data.uri=lakefs://ci-nli/main/python/pages.parquet", "data.max_docs=30", "data.train_pairs=320",
        "data.calibration_pairs=120", "data.held_out_pairs=160", "train.epochs=1", "train.log_every_steps=5",
        "model.layers=2"]


def _page(doc_id: str, first: str, last: str | None = None) -> str:
    """A retrieval-sized excerpt of a documentation page, from the sentence starting ``first``."""
    text = " ".join(topics[doc_id].split())
    start = text.index(first)
    end = text.index(last, start) + len(last) if last else start + 1200
    return text[start:end]


# (contexts, supported answer, {kind: the same answer with one fact changed})
CASES = [
    ([_page("integers", "Underscores are ignored"), _page("floating", "Floating point literals are")],
     "Leading zeros in a non-zero decimal number are not allowed. Python used C-style octal literals before "
     "version 3.0.",
     {"date": "Leading zeros in a non-zero decimal number are not allowed. Python used C-style octal literals "
              "before version 2.6.",
      "number": "Leading zeros in a non-zero decimal number are not allowed. Two underscores can occur between "
                "digits."}),
    ([_page("floating", "Note that the integer"), _page("imaginary", "An imaginary literal")],
     "The integer and exponent parts of a floating point literal are always interpreted using radix 10.",
     {"number": "The integer and exponent parts of a floating point literal are always interpreted using radix 8.",
      "date": "Since version 3.4, underscores are allowed for grouping digits in floating point literals."}),
    ([_page("imaginary", "An imaginary literal"), _page("integers", "There is no limit")],
     "An imaginary literal yields a complex number with a real part of 0.0.",
     {"number": "An imaginary literal yields a complex number with a real part of 1.0."}),
    ([_page("dict", "A double asterisk"), _page("typesmapping", "A *mapping* object")],
     'A double asterisk "**" denotes dictionary unpacking. Unpacking into dictionary displays was new in '
     "version 3.5, originally proposed by PEP 448.",
     {"date": 'A double asterisk "**" denotes dictionary unpacking. Unpacking into dictionary displays was new in '
              "version 3.8, originally proposed by PEP 448.",
      "number": 'A double asterisk "**" denotes dictionary unpacking. Unpacking into dictionary displays was new '
                "in version 3.5, originally proposed by PEP 484.",
      "entity": 'A double asterisk "**" denotes dictionary unpacking. Its operand must be a *sequence*.'}),
    ([_page("return", "When \"return\" passes"), _page("raise", "If no expressions are present")],
     'In a generator function, the "return" statement indicates that the generator is done and will cause '
     '"StopIteration" to be raised.',
     {"entity": 'In a generator function, the "return" statement indicates that the generator is done and will '
                'cause "KeyError" to be raised.'}),
    ([_page("raise", "If no expressions are present"), _page("exceptions", "Exceptions are a means")],
     'If there isn’t currently an active exception, a "RuntimeError" exception is raised indicating that this is '
     "an error.",
     {"entity": 'If there isn’t currently an active exception, a "TypeError" exception is raised indicating that '
                "this is an error."}),
    ([_page("context-managers", "object.__exit__(self"), _page("with", "The execution of the \"with\"")],
     'If the context was exited without an exception, all three arguments will be "None".',
     {"number": 'If the context was exited without an exception, all two arguments will be "None".'}),
    ([_page("assert", "These equivalences assume"), _page("lambda", "Lambda expressions")],
     'In the current implementation, the built-in variable "__debug__" is "True" under normal circumstances.',
     {"entity": 'In the current implementation, the built-in variable "__name__" is "True" under normal '
                "circumstances."}),
]


def test_the_config_loads_and_refuses_contradictions():
    workload = load_workload("train_groundedness")
    cfg = workload.load_config(CONFIG)
    assert cfg.data.uri == "lakefs://docs/main/python/pages.parquet" and cfg.registry.model_name == nli.MODEL_NAME
    assert workload.load_config(CONFIG, TINY).data.train_pairs == 320
    with pytest.raises(ConfigError, match="max_words"):
        workload.load_config(CONFIG, ["data.min_words=300"])


def test_without_a_registry_nli_is_not_the_default_and_says_how_to_train(monkeypatch, tmp_path):
    monkeypatch.setenv("FABRIC_HOME", str(tmp_path / "empty-home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    nli.clear_cache()
    try:
        started = time.perf_counter()
        assert nli.is_default() is False
        assert not (tmp_path / "empty-home" / "mlflow").exists()  # looking never creates the embedded store
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
        nli.clear_cache()
        assert nli.is_default() is False
        assert time.perf_counter() - started < 3
        with pytest.raises(nli.NoChampionError, match="fabric run train_groundedness"):
            nli.NLIScorer()
    finally:
        nli.clear_cache()


@pytest.fixture(scope="module")
def trained(ray_session):
    """One tiny training run for the module; afterwards the session's registry has no nli champion again."""
    from fabric.registry import CHAMPION, mlflow_client

    workload = load_workload("train_groundedness")
    result = workload.run(workload.load_config(CONFIG, TINY))
    yield result
    client = mlflow_client()
    if CHAMPION in client.get_registered_model(nli.MODEL_NAME).aliases:
        client.delete_registered_model_alias(nli.MODEL_NAME, CHAMPION)
    nli.clear_cache()


@pytest.mark.slow
def test_training_registers_the_scorer_with_its_comparison_to_lexical(trained):
    import mlflow

    from fabric.registry import mlflow_client

    assert trained["data_uri"].startswith("lakefs://ci-nli/") and trained["data_commit"] in trained["data_uri"]
    for name in ("heldout_balanced_accuracy", "lexical_heldout_balanced_accuracy", "heldout_roc_auc",
                 "lexical_heldout_roc_auc", "encoder_only_heldout_balanced_accuracy"):  # stacked: both recorded
        assert 0 <= trained[name] <= 1
    client = mlflow_client()
    version = client.get_model_version(nli.MODEL_NAME, trained["version"])
    assert version.tags["fabric.data.commit"] == trained["data_commit"]
    assert float(version.tags[nli.BA_TAG]) == pytest.approx(trained["heldout_balanced_accuracy"])
    beats = trained["heldout_balanced_accuracy"] > trained["lexical_heldout_balanced_accuracy"]
    assert version.tags[nli.BEATS_LEXICAL_TAG] == str(beats).lower() and trained["beats_lexical"] == beats
    aliases = {k: str(v) for k, v in client.get_registered_model(nli.MODEL_NAME).aliases.items()}
    assert (aliases.get("champion") == trained["version"]) == beats
    nli.clear_cache()
    assert nli.is_default() is beats
    run = mlflow.get_run(trained["mlflow_run_id"])
    assert run.data.metrics["lexical_heldout_balanced_accuracy"] == trained["lexical_heldout_balanced_accuracy"]
    assert "train_loss" in run.data.metrics and run.data.tags["fabric.data.commit"] == trained["data_commit"]


@pytest.fixture(scope="module")
def champion(trained):
    """The trained version as champion, whether or not it beat lexical: the ranking below is the model's own."""
    from fabric import registry

    if not trained["beats_lexical"]:
        registry.set_champion(nli.MODEL_NAME, trained["version"], reason="test: rank with the tiny model")
    nli.clear_cache()
    return trained["version"]


@pytest.mark.slow
def test_nli_ranks_a_supported_answer_above_one_with_a_changed_number_date_or_entity(champion):
    from rag import groundedness

    kinds, failures = set(), []
    for contexts, supported, changed in CASES:
        good = groundedness.score(supported, contexts, scorer="nli")
        for kind, answer in changed.items():
            kinds.add(kind)
            bad = groundedness.score(answer, contexts, scorer="nli")
            if not good > bad:
                failures.append(f"{kind}: {good:.3f} <= {bad:.3f} for {answer!r}")
    assert kinds == {"number", "date", "entity"}
    assert not failures, "\n".join(failures)
    detail = groundedness.detail(CASES[0][1], CASES[0][0], scorer="nli")
    assert detail.scorer == "nli" and all(s.context == 0 for s in detail.sentences if s.claim)


@pytest.mark.slow
def test_the_registered_pyfunc_scores_claims(champion):
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(f"models:/{nli.MODEL_NAME}@champion")
    contexts, supported, changed = CASES[2]
    out = model.predict(pd.DataFrame({"claim": [supported, changed["number"]], "context": [contexts[0]] * 2}))
    assert list(out.columns) == ["score"] and out["score"][0] > out["score"][1]
