"""rag/nli.py, rag/nli_training.py and workloads/train_groundedness.py: the cross-encoder trains on human-labelled
pairs and registers with its held-out comparison per domain; the shipped weights are the default scorer; a
registered champion replaces them only when it beat them on the same held-out rows; the scorer ranks a supported
answer above the same answer with a changed number, date or entity on every case of a fixed set."""

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
# The CI variant of the shipped config: 40 rows a source for each split, ten pages of generated pairs, one epoch,
# two layers.
TINY = ["data.uri=lakefs://ci-nli/main/pairs.parquet", "data.max_train_per_source=40",
        "data.max_calibration_per_source=40", "data.max_heldout_per_source=40", "synthetic.max_docs=10",
        "synthetic.uri=lakefs://ci-nli-docs/main/python/pages.parquet", "train.epochs=1", "train.log_every_steps=5",
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
    assert cfg.data.uri == "lakefs://groundedness/main/pairs.parquet" and cfg.registry.model_name == nli.MODEL_NAME
    assert workload.load_config(CONFIG, TINY).data.max_train_per_source == 40
    with pytest.raises(ConfigError, match="synthetic.share"):  # generated pairs are at most a third of the mix
        workload.load_config(CONFIG, ["synthetic.share=0.5"])


class _Version:
    def __init__(self, **tags: str):
        self.tags = tags


def test_a_champion_replaces_the_shipped_weights_only_when_it_beat_them_on_the_same_rows():
    shipped = {"heldout": {"hash": "abc", "mean_balanced_accuracy": 0.7}}
    better = _Version(**{nli.HELDOUT_HASH_TAG: "abc", nli.HELDOUT_BA_TAG: "0.72"})
    worse = _Version(**{nli.HELDOUT_HASH_TAG: "abc", nli.HELDOUT_BA_TAG: "0.69"})
    other_rows = _Version(**{nli.HELDOUT_HASH_TAG: "xyz", nli.HELDOUT_BA_TAG: "0.99"})
    assert nli._champion_wins(better, shipped)
    assert not nli._champion_wins(worse, shipped) and not nli._champion_wins(other_rows, shipped)
    assert not nli._champion_wins(_Version(), shipped)  # trained before held-out hashes: not comparable
    # Without shipped weights the old rule: a champion that beat lexical on its held-out pairs.
    assert nli._champion_wins(_Version(**{nli.BA_TAG: "0.8", nli.LEXICAL_BA_TAG: "0.7"}), None)
    assert not nli._champion_wins(_Version(**{nli.BA_TAG: "0.6", nli.LEXICAL_BA_TAG: "0.7"}), None)


def test_without_a_registry_the_shipped_weights_are_the_default(monkeypatch, tmp_path):
    from rag import groundedness

    monkeypatch.setenv("FABRIC_HOME", str(tmp_path / "empty-home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    nli.clear_cache()
    try:
        card = nli.shipped_card()
        assert card is not None, "the package ships trained weights (rag/models/groundedness)"
        assert card["heldout"]["hash"] and card["data_commit"] and (nli.SHIPPED / "MODEL_CARD.md").is_file()
        started = time.perf_counter()
        assert nli.is_default() is True
        assert not (tmp_path / "empty-home" / "mlflow").exists()  # looking never creates the embedded store
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
        nli.clear_cache()
        assert nli.is_default() is True and nli.resolve().folder == nli.SHIPPED
        assert time.perf_counter() - started < 10
        assert groundedness.get_scorer("default").name == "nli"
        size = sum(f.stat().st_size for f in nli.SHIPPED.iterdir())
        assert size <= 50e6, f"the shipped scorer is {size / 1e6:.1f} MB; at most 50 MB"
    finally:
        nli.clear_cache()


def test_a_claim_is_read_with_the_sentence_before_it_and_scored_by_its_best_window():
    contexts = ["Nothing here. The walrus operator was introduced by PEP 572. It assigns a value to a variable "
                "inside an expression. Unrelated trailing words follow here.",
                "Assignment expressions are new in Python 3.8."]
    claim = "The walrus operator assigns a value to a variable inside an expression."
    pairs = nli.candidate_pairs(claim, contexts, k=2, window_words=25)
    assert pairs[0].context == 0 and "introduced by PEP 572. It assigns" in pairs[0].window  # the subject and "It"
    assert pairs[0].window == contexts[0][pairs[0].span[0]:pairs[0].span[1]]
    assert len(pairs[0].window.split()) <= 25
    assert [p.context for p in pairs] == [0, 1] and nli.candidate_pairs("Zebras gallop.", contexts) == []


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    """One tiny training run for the module, exported to a folder of its own; afterwards the session's registry
    has no nli champion again."""
    from fabric.registry import CHAMPION, mlflow_client

    exported = tmp_path_factory.mktemp("shipped") / "groundedness"
    workload = load_workload("train_groundedness")
    result = workload.run(workload.load_config(CONFIG, [*TINY, f"export.package_dir={exported}"]))
    yield result
    client = mlflow_client()
    if CHAMPION in client.get_registered_model(nli.MODEL_NAME).aliases:
        client.delete_registered_model_alias(nli.MODEL_NAME, CHAMPION)
    nli.clear_cache()


@pytest.mark.slow
def test_training_registers_the_scorer_with_its_comparison_per_domain(trained):
    import mlflow

    from fabric.registry import mlflow_client

    assert trained["data_uri"].startswith("lakefs://ci-nli/") and trained["data_commit"] in trained["data_uri"]
    for prefix in ("", "lexical_", "overlap_"):
        assert 0 <= trained[f"{prefix}heldout_balanced_accuracy"] <= 1
        for domain in ("qa_dialogue", "summary", "claim"):
            assert 0 <= trained[f"{prefix}heldout_{domain}_balanced_accuracy"] <= 1
    client = mlflow_client()
    version = client.get_model_version(nli.MODEL_NAME, trained["version"])
    assert version.tags["fabric.data.commit"] == trained["data_commit"]
    assert float(version.tags[nli.HELDOUT_BA_TAG]) == pytest.approx(trained["heldout_balanced_accuracy"])
    assert version.tags[nli.HELDOUT_HASH_TAG] == trained["heldout_hash"]
    # The shipped weights were judged on other rows (the full held-out split): a tiny run never replaces them.
    assert trained["beats_shipped"] is False and "stays challenger" in trained["champion"]
    assert CHAMPION_ALIAS not in client.get_registered_model(nli.MODEL_NAME).aliases
    run = mlflow.get_run(trained["mlflow_run_id"])
    assert run.data.params["rows.synthetic"] != "0" and int(run.data.params["rows.synthetic"]) * 3 <= int(
        run.data.params["rows.total"])  # generated pairs at most a third of the mix
    assert "train_loss" in run.data.metrics and run.data.tags["fabric.data.commit"] == trained["data_commit"]


CHAMPION_ALIAS = "champion"


@pytest.mark.slow
def test_the_exported_folder_is_a_scorer_with_its_model_card(trained):
    import json

    folder = Path(trained["exported"])
    card = json.loads((folder / nli.CALIBRATION_FILE).read_text())
    assert card["data_commit"] == trained["data_commit"] and card["heldout"]["hash"] == trained["heldout_hash"]
    assert set(card["sources"]) >= {"summedits", "vitaminc", "begin"}
    markdown = (folder / "MODEL_CARD.md").read_text()
    assert trained["data_commit"] in markdown and "CC BY-SA" in markdown and "qa_dialogue" in markdown
    encoder = nli.CrossEncoder(folder)
    assert str(encoder.model.dtype) == "torch.bfloat16" and encoder.window_words == card["window_words"]
    contexts, supported, _ = CASES[2]
    assert 0 <= nli.NLIScorer(encoder=encoder).detail_batch([supported], [contexts])[0].score <= 1


@pytest.fixture(scope="module")
def champion(trained):
    """The tiny trained version as champion (for the registered pyfunc)."""
    from fabric import registry

    registry.set_champion(nli.MODEL_NAME, trained["version"], reason="test: the pyfunc of the tiny model")
    nli.clear_cache()
    return trained["version"]


def test_nli_ranks_a_supported_answer_above_one_with_a_changed_number_date_or_entity():
    """The shipped weights (the default nli encoder), on hand-made edits of Python documentation answers."""
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
