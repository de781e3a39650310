"""Human-labelled (claim, evidence, supported?) pairs from six public datasets, for training and judging a
groundedness scorer.

The raw files ship under ``rag/data/groundedness/<source>/`` exactly as fetched (each with its licence and a
``SOURCE.md``; the folder's README gives every label mapping and count). :func:`load_source` reads one source
into the pairs table, :data:`COLUMNS`; :func:`build_pairs` joins them with a ``split`` column that keeps every
document on one side; :func:`commit_pairs` writes that table to the versioned data store and :func:`load_pairs`
reads it back at one commit.

Example:
    >>> pairs = build_pairs(["begin", "wice"])
    >>> pairs.groupby(["source", "split"]).size()
    >>> result = commit_pairs()   # fabric run prepare_groundedness --config configs/rag/groundedness_data.yaml
    >>> uri, commit, pairs = load_pairs()
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sys
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "DEFAULT_URI", "RAW_DIR", "SOURCES", "Source", "build_pairs", "commit_pairs", "load_pairs",
           "load_source", "split_of"]

DEFAULT_URI = "lakefs://groundedness/main/pairs.parquet"
RAW_DIR = Path(__file__).resolve().parent / "data" / "groundedness"
COLUMNS = ["source", "domain", "doc_id", "claim", "context", "label", "original_label"]
SPLITS = (("train", 0.7), ("calibration", 0.8), ("held_out", 1.0))  # upper bounds of each split's hash range
_Row = tuple[str, str, str, int, str]  # (document id within the source, claim, context, label, original label)


@dataclass(frozen=True)
class Source:
    """One dataset: its domain, licence, repository and the reader that yields its rows from its raw folder."""

    domain: str
    licence: str
    repository: str
    reader: Callable[[Path], Iterator[_Row]]


def _knowledge_id(text: str) -> str:
    """Dialogue passages have no id: a hash of the case- and punctuation-folded text, the same in BEGIN and
    FaithDial (70 passages occur in both), so one passage never lands on two sides of the split."""
    folded = re.sub(r"\W+", " ", text.lower()).strip()
    return "k" + hashlib.sha1(folded.encode()).hexdigest()[:16]


def _read_summedits(folder: Path) -> Iterator[_Row]:
    """Per-sentence labels: a sentence of a consistent summary (the seed included) is 1; of an inconsistent
    summary, the one sentence found in no consistent summary of the document is 0. Inconsistent summaries with
    two or more such sentences are dropped: which of them is wrong is not recorded."""
    from rag.groundedness import split_sentences

    def sentences(text: str) -> list[str]:
        return [text[a:b] for a, b in split_sentences(text)]

    for path in sorted((folder / "data" / "summedits").glob("summedits_*.json")):
        subset = path.stem.removeprefix("summedits_")
        documents: dict[str, list[dict]] = defaultdict(list)
        for item in json.loads(path.read_text(encoding="utf-8")):
            documents[item["id"].rsplit("_", 1)[0]].append(item)
        for doc, items in documents.items():
            items.sort(key=lambda x: (x["label"] != 1, not x["id"].endswith("_og")))  # seed, consistent, rest
            known = {s for x in items if x["label"] == 1 for s in sentences(x["summary"])}
            for x in items:
                seed = set(sentences(x["original_summary"]))
                summary = sentences(x["summary"])
                changed = [s for s in summary if s not in seed]
                if x["label"] == 1:
                    for s in summary:
                        yield f"{subset}/{doc}", s, x["doc"], 1, "consistent:" + ("edited" if s in changed else "seed")
                    continue
                wrong = [s for s in summary if s not in known]
                if len(wrong) == 1:
                    yield f"{subset}/{doc}", wrong[0], x["doc"], 0, "inconsistent:edited"


def _read_vitaminc(folder: Path) -> Iterator[_Row]:
    """SUPPORTS is 1, REFUTES and NOT ENOUGH INFO are 0; the unit is the Wikipedia page, its FEVER-style name
    (``-LRB-``, underscores) folded so a page of the synthetic set meets the same page of the real one."""
    for path in sorted((folder / "static").glob("vitaminc_*.zip")):
        with zipfile.ZipFile(path) as archive:
            lines = archive.read(f"{path.stem}/test.jsonl").decode("utf-8").splitlines()
        for line in filter(str.strip, lines):
            row = json.loads(line)
            page = row["page"].replace("-LRB-", "(").replace("-RRB-", ")").replace("_", " ").strip()
            yield page, row["claim"], row["evidence"], int(row["label"] == "SUPPORTS"), row["label"]


_BEGIN_LABELS = {"fully attributable": 1, "not fully attributable": 0}  # "generic" makes no claim: dropped


def _read_begin(folder: Path) -> Iterator[_Row]:
    for path in sorted(folder.glob("*/begin_*.tsv")):
        with path.open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                label = _BEGIN_LABELS.get(row["begin_label"].strip().lower())
                if label is not None:
                    yield (_knowledge_id(row["knowledge"]), row["response"], row["knowledge"], label,
                           row["begin_label"])


# The BEGIN part of the audit's labels decides; "uncooperative" next to "entailment" says the response ignores
# the conversation, not that it strays from the knowledge. Generic, uncooperative alone and unlabelled: dropped.
_FAITHDIAL_LABELS = {"entailment": 1, "entailment,uncooperative": 1, "hallucination": 0, "hallucinated": 0,
                     "partial hallucination": 0, "entailment,hallucination": 0}


def _read_faithdial(folder: Path) -> Iterator[_Row]:
    for path in sorted((folder / "data-audit").glob("*/*.csv")):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader)  # knowledge|evidence, history, response|<model>, BEGIN|begin_label, VRM...
            for row in reader:
                knowledge, response, written = row[0], row[2], row[3]
                folded = re.sub(r"\s*[,.]\s*", ",", written.strip().lower()).replace("entailmentt", "entailment")
                label = _FAITHDIAL_LABELS.get(folded)
                if label is not None and len(row) == len(header):
                    yield _knowledge_id(knowledge), response, knowledge, label, written


def _read_factcheck_gpt(folder: Path) -> Iterator[_Row]:
    """completely-support is 1; partially-support, refute and irrelevant are 0. The file names no source
    document, so the unit is the claim (all its evidence passages stay together)."""
    path = folder / "subtasks" / "subtask3_claim_evidence_stance.jsonl"
    for line in filter(str.strip, path.read_text(encoding="utf-8").splitlines()):
        row = json.loads(line)
        doc = "c" + hashlib.sha1(row["claim"].strip().encode()).hexdigest()[:16]
        yield doc, row["claim"], row["evidence"], int(row["stance"] == "completely-support"), row["stance"]


def _read_wice(folder: Path) -> Iterator[_Row]:
    """The dev split only (the test split is in LLM-AggreFact): supported is 1, partially_supported and
    not_supported are 0; the unit is the claim's Wikipedia article, the context its oracle evidence sentences."""
    path = folder / "code_and_resources" / "entailment_inputs" / "oracle_chunks" / "claim" / "dev.jsonl"
    for line in filter(str.strip, path.read_text(encoding="utf-8").splitlines()):
        row = json.loads(line)
        yield (row["meta"]["claim_title"], row["claim"], " ".join(row["evidence"]), int(row["label"] == "supported"),
               row["label"])


SOURCES: dict[str, Source] = {
    "summedits": Source("summary", "Apache-2.0", "salesforce/factualNLG", _read_summedits),
    "vitaminc": Source("claim", "CC-BY-SA-3.0", "TalSchuster/talschuster.github.io", _read_vitaminc),
    "begin": Source("qa_dialogue", "CC-BY-4.0 (topicalchat: CDLA-Sharing-1.0)", "google/BEGIN-dataset", _read_begin),
    "faithdial": Source("qa_dialogue", "MIT", "McGill-NLP/FaithDial", _read_faithdial),
    "factcheck_gpt": Source("claim", "Apache-2.0", "yuxiaw/Factcheck-GPT", _read_factcheck_gpt),
    "wice": Source("claim", "ODC-BY-1.0 (text: CC-BY-SA)", "ryokamoi/wice", _read_wice),
}


def _check_sources(sources: list[str] | tuple[str, ...] | None) -> list[str]:
    names = list(SOURCES) if sources is None else list(sources)
    unknown = [n for n in names if n not in SOURCES]
    if unknown or not names:
        raise ValueError(f"unknown sources {unknown or names}; choose from: {', '.join(SOURCES)}")
    return names


def _dedupe(frame: Any) -> Any:
    """Keeps the first of rows repeating (claim, context) with one label; drops every copy when labels differ."""
    keys = ["claim", "context"]
    labels = frame.groupby(keys, sort=False)["label"].transform("nunique")
    return frame[labels == 1].drop_duplicates(keys, keep="first").reset_index(drop=True)


def load_source(name: str, raw_dir: Path = RAW_DIR) -> Any:
    """One source's pairs as a DataFrame with :data:`COLUMNS`, in the order its files hold them.

    ``doc_id`` is ``"<source>:<document id>"``; claims and contexts are stripped, empty ones dropped, and exact
    (claim, context) repeats dropped (every copy where their labels disagree).

    Example:
        >>> load_source("begin").label.value_counts()
    """
    import pandas as pd

    source = SOURCES[_check_sources([name])[0]]
    rows = [(f"{name}:{doc}", claim.strip(), context.strip(), label, written)
            for doc, claim, context, label, written in source.reader(raw_dir / name)]
    frame = pd.DataFrame(rows, columns=["doc_id", "claim", "context", "label", "original_label"])
    frame = frame[(frame["claim"] != "") & (frame["context"] != "")]
    frame = _dedupe(frame).assign(source=name, domain=source.domain, label=lambda f: f["label"].astype("int64"))
    return frame[COLUMNS]


def split_of(doc_id: str, seed: int = 0) -> str:
    """``"train"`` (70%), ``"calibration"`` (10%) or ``"held_out"`` (20%), from a hash of (seed, document id).

    The ``"<source>:"`` prefix is left out of the hash, so a passage both BEGIN and FaithDial hold (same knowledge
    hash) falls on the same side in both.

    Example:
        >>> split_of("wice:Roger Hedgecock")
    """
    key = doc_id.split(":", 1)[-1]
    value = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64
    return next(name for name, upper in SPLITS if value < upper)


def build_pairs(sources: list[str] | None = None, seed: int = 0, raw_dir: Path = RAW_DIR) -> Any:
    """Every source's pairs (:func:`load_source`) with a ``split`` column; a (claim, context) that two sources
    share is kept once (dropped where they disagree).

    CLI: ``fabric run prepare_groundedness --config configs/rag/groundedness_data.yaml`` commits this table.
    """
    import pandas as pd

    frames = [load_source(name, raw_dir) for name in _check_sources(sources)]
    pairs = _dedupe(pd.concat(frames, ignore_index=True))
    return pairs.assign(split=[split_of(d, seed) for d in pairs["doc_id"]])


def _content_hash(frame: Any) -> str:
    import pandas as pd

    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).values.tobytes()).hexdigest()


def commit_pairs(uri: str = DEFAULT_URI, store: Any = None, sources: list[str] | None = None, seed: int = 0,
                 message: str | None = None) -> dict[str, Any]:
    """Writes :func:`build_pairs` as one Parquet file at ``uri`` (creating its repository) in one commit.

    Returns ``{"uri", "commit", "rows", "committed"}``; when the branch's last commit already holds the same
    table at this path, nothing is written and ``committed`` is False.

    CLI: ``fabric run prepare_groundedness --config configs/rag/groundedness_data.yaml``.
    """
    from fabric import data

    target = data.DataURI.parse(uri)
    store = store or data.open_store()
    data.init(target.repo, store=store)
    pairs = build_pairs(sources, seed)
    digest = _content_hash(pairs)
    last = data.log(uri, limit=1, store=store)[0]
    if last.metadata.get("content_sha256") == digest and last.metadata.get("path") == target.path:
        return {"uri": uri, "commit": last.id, "rows": len(pairs), "committed": False}
    names = sorted(pairs["source"].unique())
    metadata = {"content_sha256": digest, "path": target.path, "sources": ",".join(names), "seed": str(seed),
                "rows": str(len(pairs)), "python": f"{sys.version_info.major}.{sys.version_info.minor}"}
    commit = data.write(uri, pairs, message or f"Labelled groundedness pairs from {', '.join(names)}",
                        metadata=metadata, store=store)
    return {"uri": uri, "commit": commit, "rows": len(pairs), "committed": True}


def load_pairs(uri: str = DEFAULT_URI, store: Any = None) -> tuple[str, str, Any]:
    """Reads a pairs table at the commit its ref resolves to now: (pinned URI, commit id, DataFrame).

    Read with pyarrow in this process, no Ray needed. Raises ValueError when a column of :data:`COLUMNS` or
    ``split`` is missing.
    """
    from fabric import data

    pinned = data.pin(uri, store=store)
    commit = data.DataURI.parse(pinned).ref
    pairs = data.head(pinned, n=sys.maxsize, store=store)
    missing = [c for c in [*COLUMNS, "split"] if c not in pairs.columns]
    if missing:
        raise ValueError(f"pairs at {uri} need columns {', '.join(COLUMNS)}, split; missing: {', '.join(missing)}")
    return pinned, commit, pairs.assign(label=pairs["label"].astype("int64"))[[*COLUMNS, "split"]]
