"""fabric/serve/inference_log.py: no row is lost; a failed write is kept, retried and reported; writing never
happens on the caller's thread; close (replica drain, shutdown) writes what is left."""

from __future__ import annotations

import threading
import time

import numpy as np

from fabric.serve import inference_log
from fabric.serve.inference_log import InferenceLog, read_log


def _add(log: InferenceLog, request_id: str, rows: int = 2) -> None:
    matrix = np.arange(rows * 2, dtype="float64").reshape(rows, 2)
    log.add(request_id, "m", "1", "invocations", ["a", "b"], matrix, {"prediction": matrix.sum(1)})


def test_a_failed_write_keeps_its_rows_is_reported_and_retried(tmp_path, monkeypatch):
    real, failures = inference_log._write, [1]

    def flaky(*args, **kwargs):
        if failures:
            failures.pop()
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(inference_log, "_write", flaky)
    log = InferenceLog(str(tmp_path), flush_rows=10**9, flush_s=10**6)
    _add(log, "r1")
    try:
        log.flush()
        raise AssertionError("the failed write was not raised")
    except OSError:
        pass
    assert log.failed_writes == 1 and "disk full" in log.last_error and log.pending == 2
    _add(log, "r2")
    log.flush()
    assert sorted(read_log("m", root=str(tmp_path))["request_id"]) == ["r1", "r1", "r2", "r2"]


def test_add_never_writes_on_the_callers_thread_and_the_timer_retries(tmp_path, monkeypatch):
    real, writers, failures = inference_log._write, [], [1]

    def watched(*args, **kwargs):
        writers.append(threading.current_thread().name)
        if failures:
            failures.pop()
            raise OSError("object store down")
        return real(*args, **kwargs)

    monkeypatch.setattr(inference_log, "_write", watched)
    log = InferenceLog(str(tmp_path), flush_rows=4, flush_s=10**6)
    for i in range(4):
        _add(log, f"r{i}")  # 8 rows: full, so the log's thread is woken, the caller goes on
    assert threading.current_thread().name not in writers
    deadline = time.monotonic() + 20
    while log.written < 8:
        assert time.monotonic() < deadline, (log.written, log.last_error)
        time.sleep(0.05)
    assert set(writers) == {"inference-log"} and log.failed_writes == 1
    assert len(read_log("m", root=str(tmp_path))) == 8


def test_close_writes_the_rows_left_in_the_buffer(tmp_path):
    log = InferenceLog(str(tmp_path), flush_rows=10**9, flush_s=10**6)
    _add(log, "last", rows=3)
    log.close()
    assert len(read_log("m", root=str(tmp_path))) == 3


def test_the_gateway_closes_its_log_when_serve_drains_the_replica(tmp_path):
    from tests.serve.test_gateway import gateway

    g = gateway()
    g.inference_log = InferenceLog(str(tmp_path), flush_rows=10**9, flush_s=10**6)
    _add(g.inference_log, "drained")
    g.__del__()
    assert list(read_log("m", root=str(tmp_path))["request_id"]) == ["drained", "drained"]
