"""rag/ingest.py and workloads/ingest_docs.py with real Ray, Qdrant local mode and MiniLM: a few pages of the demo
corpus ingested once per module, then the same commit (a no-op), a new commit while queries run (old or new,
never a mix), and an ingestion killed midway (the alias stays; the next run finishes the collection)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rag.corpus import load_documents, python_docs
from rag.index import LocalStore, Retriever
from rag.ingest import IngestSettings, ingest

ROOT = Path(__file__).resolve().parents[2]
URI = "lakefs://ingest-test/main/python/pages.parquet"
ALIAS = "ingest-test"
PAGES = ["with", "for", "pass"]
QUESTION = "How does a with statement call __exit__?"
QUERIES = [QUESTION, "What does the pass statement do?", "Does a for loop have an else clause?"]


def settings(**changes) -> IngestSettings:
    return IngestSettings(**{"uri": URI, "alias": ALIAS, "doc_ids": PAGES, "actors": 1, "actor_cpus": 0.5,
                             "batch_size": 8, **changes})


def store() -> LocalStore:
    from fabric.runtime import resolve_stack

    return LocalStore(resolve_stack().qdrant)


def commit_version(note: str) -> str:
    """A new commit of the corpus on URI's branch: the pass page gets one more sentence."""
    from fabric import data

    docs = python_docs()
    docs.loc[docs["doc_id"] == "pass", "text"] += f"\n\n{note}"
    return data.write(URI, docs, f"pass page: {note}")


@pytest.fixture(scope="module")
def first(ray_session):
    """The corpus committed (seed_corpus: the URI was empty) and three of its pages ingested."""
    return ingest(settings())


def test_ingest_seeds_the_corpus_and_the_retriever_finds_the_page(first):
    from fabric import data

    assert first["skipped"] is False and first["documents"] == 3 and first["chunks"] == first["embedded"] > 3
    assert first["uri"] == f"lakefs://ingest-test/{first['commit']}/python/pages.parquet"
    assert data.resolve(URI) == first["commit"] and store().live(ALIAS) == first["collection"]
    retriever = Retriever(ALIAS)
    hits = retriever.search(QUESTION, top_k=3)
    assert hits[0].doc_id == "with" and retriever.collection == first["collection"]
    assert [h.doc_id for h in retriever.search("What does the pass statement do?", top_k=1)] == ["pass"]


def test_citations_exist_in_the_collection_and_quote_the_source_at_their_offsets(first):
    _, commit, docs = load_documents(first["uri"])
    texts = docs.set_index("doc_id")["text"]
    retriever = Retriever(ALIAS)
    for hits in retriever.search_batch(QUERIES, top_k=5):
        for hit in hits:
            assert hit.commit == commit and hit.text == texts[hit.doc_id][hit.start:hit.end]
            assert [h.chunk_id for h in retriever.search(QUESTION, filters={"chunk_id": hit.chunk_id})] == [
                hit.chunk_id]
    assert retriever.info.points == first["chunks"] and retriever.info.uri == first["uri"]


def test_the_same_commit_again_does_nothing(first, capsys):
    again = ingest(settings(actors=2, batch_size=4))  # pool settings do not change a collection
    assert again["skipped"] is True and again["collection"] == first["collection"] and again["seconds"] < 10
    assert "nothing to do" in capsys.readouterr().out


def test_a_new_commit_moves_the_alias_while_queries_see_old_or_new_never_a_mix(first):
    seen, errors, stop = [], [], threading.Event()

    def query() -> None:
        retriever = Retriever(ALIAS, refresh_interval_s=0)
        while not stop.is_set():
            try:
                retriever.refresh()
                batch = retriever.search_batch(QUERIES, top_k=3)
                seen.append({hit.commit for hits in batch for hit in hits})
            except Exception as exc:  # noqa: BLE001 - any failure is what this test looks for
                errors.append(exc)
            stop.wait(0.1)  # leave the CPUs to the ingestion between queries

    thread = threading.Thread(target=query, daemon=True)
    thread.start()
    new_commit = commit_version("The pass statement is sometimes called the platypus statement.")
    second = ingest(settings(actors=0))  # embedded in this process: the same collection, no actor start-up
    time.sleep(1.0)
    while not (seen and seen[-1] == {new_commit}) and thread.is_alive() and not errors:
        time.sleep(0.2)
    stop.set()
    thread.join(timeout=60)
    assert not errors, errors[:3]
    assert all(len(commits) == 1 for commits in seen)  # every batch from one collection
    assert {c for commits in seen for c in commits} <= {first["commit"], new_commit}
    assert seen[0] == {first["commit"]} and seen[-1] == {new_commit}
    assert second["commit"] == new_commit and second["collection"] != first["collection"]
    assert second["chunks"] == second["embedded"] == first["chunks"]
    assert store().live(ALIAS) == second["collection"]
    assert store().pointer(ALIAS)["history"] == [second["collection"], first["collection"]]  # kept for rollback
    hit = Retriever(ALIAS).search("platypus statement", top_k=1)[0]
    assert hit.doc_id == "pass" and "platypus" in hit.text


def test_the_ct_pipelines_ingest_step_builds_a_new_commit_once(first, tmp_path):
    """``ingest:`` in a continuous-training config: the run's first step re-ingests the documents' branch."""
    import yaml

    from fabric.config import ConfigError
    from fabric.ct.config import CTConfig
    from fabric.ct.state import Context, new_state
    from fabric.ct.steps import ingest as ingest_step

    path = tmp_path / "docs.yaml"
    path.write_text(yaml.safe_dump({"workload": "ingest_docs", "uri": URI, "alias": ALIAS, "doc_ids": PAGES,
                                    "actors": 0, "batch_size": 8}))
    cfg = CTConfig.from_dict({"name": "docs-ct", "model": "unused", "train_config": "configs/tabular/train.yaml",
                              "ingest": [str(path)]})
    state = new_state(cfg, "manual", None, None)
    assert [s["name"] for s in state["steps"]][:2] == ["ingest", "snapshot"]
    ctx = Context(cfg=cfg, state=state, folder=Path(state["folder"]))
    new_commit = commit_version("A version the pipeline ingests.")
    built = ingest_step(ctx).outputs["indexes"][ALIAS]
    assert built["built"] is True and built["commit"] == new_commit and store().live(ALIAS) == built["collection"]
    assert ctx.step("ingest")["inputs"]["uris"] == [URI]
    again = ingest_step(ctx)
    assert again.outputs["indexes"][ALIAS] == {**built, "built": False} and "already live" in again.evidence

    path.write_text(yaml.safe_dump({"uri": URI, "chunk_tokens": 64, "overlap_tokens": 40}))
    with pytest.raises(ConfigError, match=r"overlap_tokens(.|\n)*ingest of pipeline docs-ct"):
        cfg.ingest_configs()


def test_the_ct_watcher_is_due_on_a_new_commit_of_the_documents_branch(first, tmp_path):
    """``fabric ct watch``: the first look records the documents' head; a new commit makes a run due, once."""
    import yaml

    from fabric.ct.config import CTConfig
    from fabric.ct.watch import due, remember_docs

    path = tmp_path / "docs.yaml"
    path.write_text(yaml.safe_dump({"uri": URI, "alias": ALIAS, "doc_ids": PAGES}))
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"uri": "lakefs://not-yet/main/pages.parquet", "alias": "not-yet"}))
    cfg = CTConfig.from_dict({"name": "docs-watch", "model": "unused", "train_config": "configs/tabular/train.yaml",
                              "ingest": [str(path), str(missing)]})  # a branch with nothing yet is not watched
    assert due(cfg) is None and due(cfg) is None  # the first look only records the head
    head = commit_version("A version the watcher notices.")
    job = due(cfg)
    assert job == {"trigger": f"docs:{head[:12]}", "reference": None, "head": None, "docs": {URI: head}}
    remember_docs(cfg.name, job["docs"])  # what watch() does before it runs the pipeline
    assert due(cfg) is None


@pytest.mark.slow
def test_an_ingestion_killed_midway_leaves_the_alias_and_the_next_run_finishes_it(first, cli_env):
    """Through the CLI: killed (SIGKILL, the whole process group) after its first progress line; then the
    workload's Python API finds the unfinished collection, embeds only what it lacks, publishes it and logs the
    build to MLflow."""
    import mlflow

    from fabric.workload import load_workload

    live = store().live(ALIAS)
    commit_version("A third version.")
    pages = ["compound", "with"]  # about 85 chunks, upserted 4 at a time: the kill lands well before the end
    overrides = [f"uri={URI}", f"alias={ALIAS}", f"doc_ids=[{','.join(pages)}]", "actors=1", "actor_cpus=0.5",
                 "batch_size=4", "runtime.ray.num_cpus=2"]
    process = subprocess.Popen(
        [sys.executable, "-m", "fabric", "run", "ingest_docs", "--config", "configs/rag/python_docs.yaml",
         *overrides], cwd=ROOT, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    output = []
    try:
        for line in process.stdout:
            output.append(line)
            if "chunks embedded and upserted" in line:
                break
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert any("chunks embedded and upserted" in line for line in output), "".join(output)[-3000:]
    assert store().live(ALIAS) == live  # the alias did not move
    assert Retriever(ALIAS).search(QUESTION, top_k=1)[0].commit != data_commit()

    workload = load_workload("ingest_docs")  # the Python API of the workload: it also logs the build to MLflow
    finished = workload.run(workload.load_config(ROOT / "configs" / "rag" / "python_docs.yaml", [
        f"uri={URI}", f"alias={ALIAS}", f"doc_ids=[{','.join(pages)}]", "actors=0"]))
    assert finished["commit"] == data_commit() and 0 < finished["embedded"] < finished["chunks"]
    run = mlflow.get_run(finished["mlflow_run_id"])
    assert run.data.tags["fabric.data.commit"] == finished["commit"]
    assert run.data.tags["fabric.rag.collection"] == finished["collection"]
    assert run.data.metrics["chunks"] == finished["chunks"] and run.data.params["chunk_tokens"] == "200"
    assert store().live(ALIAS) == finished["collection"]
    retriever = Retriever(ALIAS)
    assert retriever.info.points == finished["chunks"] and retriever.search(QUESTION, top_k=1)[0].doc_id in pages
    assert finished["dropped"]  # only the live collection and the one before it are kept


def data_commit() -> str:
    from fabric import data

    return data.resolve(URI)


def test_bad_settings_are_refused_before_anything_runs():
    from fabric.config import ConfigError

    with pytest.raises(ConfigError, match="overlap_tokens"):
        IngestSettings.from_dict({"chunk_tokens": 64, "overlap_tokens": 40})
    with pytest.raises(ConfigError, match="alias"):
        IngestSettings.from_dict({"alias": "no spaces please"})
