"""rag/labelled.py and workloads/prepare_groundedness.py: the six labelled sources read into one pairs table with
the documented label mappings, a document-level split, and a round trip through the versioned data store."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pandas as pd
import pytest

from rag.groundedness import split_sentences
from rag.labelled import COLUMNS, RAW_DIR, SOURCES, build_pairs, commit_pairs, load_pairs, load_source, split_of

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "rag" / "groundedness_data.yaml"
DOMAINS = {"summedits": "summary", "vitaminc": "claim", "begin": "qa_dialogue", "faithdial": "qa_dialogue",
           "factcheck_gpt": "claim", "wice": "claim"}
# One row of each source as its file holds it: (claim starts with, context starts with, label, original label).
KNOWN_ROWS = {
    "vitaminc": ("Westlife made under 23.5 million sales in the UK", "According to the British Phonographic Industry "
                 "( BPI ) , Westlife has been certified for 13 million albums , 1.3 million", 0, "REFUTES"),
    "begin": ("crayola shifted its focus to art products", "originally an industrial pigment supply company", 1,
              "Fully attributable"),
    "faithdial": ("They do it in many cities including Boston and Chicago", "These activities occur in peri-urban",
                  0, "Hallucination"),
    "factcheck_gpt": ("In 1980, the oldest justice on the United States Supreme Court was Justice William O. Douglas",
                      "August 3, 1994", 0, "irrelevant"),
    "wice": ("Arnold is currently the publisher and editorial director of Media Play News", "Media Play News Media "
             "Play News is the voice", 0, "partially_supported"),
}


@pytest.fixture(scope="module")
def sources() -> dict[str, pd.DataFrame]:
    return {name: load_source(name) for name in SOURCES}


def test_every_source_loads_with_the_columns_and_both_labels(sources):
    assert set(SOURCES) == set(DOMAINS)
    for name, frame in sources.items():
        assert list(frame.columns) == COLUMNS and len(frame) > 500, name
        assert set(frame["label"]) == {0, 1} and frame["label"].dtype == "int64", name
        assert (frame["source"] == name).all() and (frame["domain"] == DOMAINS[name]).all(), name
        assert frame["doc_id"].str.startswith(f"{name}:").all(), name
        assert (frame["claim"].str.strip() != "").all() and (frame["context"].str.strip() != "").all(), name
        assert not frame.duplicated(["claim", "context"]).any(), name


@pytest.mark.parametrize("name", sorted(KNOWN_ROWS))
def test_a_known_row_keeps_its_label(sources, name):
    claim, context, label, written = KNOWN_ROWS[name]
    frame = sources[name]
    row = frame[frame["claim"].str.startswith(claim) & frame["context"].str.startswith(context)]
    assert len(row) == 1, name
    assert row["label"].item() == label and row["original_label"].item() == written


def test_the_label_mappings(sources):
    def mapping(name: str) -> dict[str, set[int]]:
        return sources[name].groupby("original_label")["label"].agg(set).to_dict()

    assert mapping("vitaminc") == {"SUPPORTS": {1}, "REFUTES": {0}, "NOT ENOUGH INFO": {0}}
    assert mapping("begin") == {"Fully attributable": {1}, "Not fully attributable": {0}}  # Generic dropped
    assert mapping("factcheck_gpt") == {"completely-support": {1}, "partially-support": {0}, "refute": {0},
                                        "irrelevant": {0}}
    assert mapping("wice") == {"supported": {1}, "partially_supported": {0}, "not_supported": {0}}
    faithdial = {k.lower(): v for k, v in mapping("faithdial").items()}
    assert faithdial["entailment"] == {1} and faithdial["entailment,uncooperative"] == {1}
    assert faithdial["hallucination"] == faithdial["partial hallucination"] == {0}
    assert faithdial["entailment,hallucination"] == {0}
    assert not {"generic", "uncooperative", ""} & set(faithdial)


def test_summedits_labels_sentences_of_an_inconsistent_summary(sources):
    items = json.loads((RAW_DIR / "summedits" / "data" / "summedits" / "summedits_samsum.json").read_text())
    by_id = {x["id"]: x for x in items}
    edited = by_id["samsum_train_13731241_3"]
    summary = [edited["summary"][a:b] for a, b in split_sentences(edited["summary"])]
    seed = [edited["original_summary"][a:b] for a, b in split_sentences(edited["original_summary"])]
    assert edited["label"] == 0 and len(summary) == len(seed) == 2
    changed = [s for s in summary if s not in seed]
    unchanged = [s for s in summary if s in seed]
    assert len(changed) == 1 and len(unchanged) == 1
    frame = sources["summedits"]
    rows = frame[frame["doc_id"] == "summedits:samsum/samsum_train_13731241"].set_index("claim")
    assert rows.loc[changed[0], "label"] == 0 and rows.loc[changed[0], "original_label"] == "inconsistent:edited"
    assert rows.loc[unchanged[0], "label"] == 1
    assert (rows["context"] == edited["doc"].strip()).all()  # the context is the whole document
    assert frame["doc_id"].nunique() == 163


def test_the_split_is_deterministic_and_keeps_each_document_on_one_side():
    pairs = build_pairs(["begin", "faithdial", "wice"])
    assert list(pairs.columns) == [*COLUMNS, "split"]
    assert pairs.groupby("doc_id")["split"].nunique().max() == 1
    passage = pairs.assign(key=pairs["doc_id"].str.split(":", n=1).str[1])  # shared by BEGIN and FaithDial
    assert passage.groupby("key")["split"].nunique().max() == 1
    assert set(pairs["split"]) == {"train", "calibration", "held_out"}
    shares = pairs.drop_duplicates("doc_id")["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.05 and abs(shares["held_out"] - 0.2) < 0.05
    pd.testing.assert_frame_equal(pairs, build_pairs(["begin", "faithdial", "wice"]))
    ids = [f"x:{i}" for i in range(200)]
    assert [split_of(d) for d in ids] == [split_of(d, seed=0) for d in ids]
    assert [split_of(d) for d in ids] != [split_of(d, seed=1) for d in ids]
    with pytest.raises(ValueError, match="unknown sources"):
        build_pairs(["ragtruth"])


def test_pairs_round_trip_through_the_data_store():
    from fabric import data

    uri = "lakefs://labelled-test/main/pairs.parquet"
    first = commit_pairs(uri, sources=["wice", "begin"])
    pinned, commit, pairs = load_pairs(uri)
    assert first["committed"] and commit == first["commit"] and first["rows"] == len(pairs)
    assert pinned == f"lakefs://labelled-test/{commit}/pairs.parquet"
    pd.testing.assert_frame_equal(pairs, build_pairs(["wice", "begin"]))
    again = commit_pairs(uri, sources=["wice", "begin"])  # the same table: no new commit
    assert not again["committed"] and again["commit"] == commit and data.resolve(uri) == commit
    other = commit_pairs(uri, sources=["wice"])
    assert other["committed"] and other["commit"] != commit
    assert set(load_pairs(uri)[2]["source"]) == {"wice"}
    assert data.log(uri, limit=1)[0].metadata["sources"] == "wice"


def test_the_workload_config_loads_and_main_reports_counts():
    from fabric.workload import load_workload

    workload = load_workload("prepare_groundedness")
    cfg = workload.load_config(CONFIG)
    assert cfg.uri == "lakefs://groundedness/main/pairs.parquet" and set(cfg.sources) == set(SOURCES)
    assert set(typing.get_args(typing.get_args(workload.config_cls.model_fields["sources"].annotation)[0])) == set(
        SOURCES)  # the config's choices are rag.labelled's sources
    small = workload.load_config(CONFIG, ["uri=lakefs://labelled-workload/main/pairs.parquet", "sources=[wice]"])
    result = workload.main(small)  # main itself: no Ray is needed to commit a table
    assert result["committed"] and result["counts"]["wice"]["claim"]["train"] > 0
    assert sum(result["counts"]["wice"]["claim"].values()) == result["rows"]
    with pytest.raises(ValueError, match="sources"):
        workload.load_config(CONFIG, ["sources=[ragtruth]"])
