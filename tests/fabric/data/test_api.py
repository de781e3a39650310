"""What `fabric.data`'s functions do beyond the store contract: how head reads, how write cleans up after itself."""

from __future__ import annotations

import io
import multiprocessing
import signal
import threading
import time
from types import SimpleNamespace

import pandas as pd

from fabric import data
from fabric.data.local_store import LocalStore

FREED_BY: list[int] = []  # the thread that freed each buffer read from a file


class _TrackedBytes(bytes):
    def __del__(self) -> None:
        FREED_BY.append(threading.get_ident())


class _TrackedFile(io.RawIOBase):
    """A Python file object (as fsspec hands out) whose reads return buffers that record who frees them."""

    def __init__(self, path: str):
        self.file = open(path, "rb")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def read(self, size: int = -1) -> bytes:
        return _TrackedBytes(self.file.read(size))

    def close(self) -> None:
        self.file.close()
        super().close()


class _TrackedStore(LocalStore):
    def read_paths(self, repo, ref, prefix):
        _, paths = super().read_paths(repo, ref, prefix)
        return SimpleNamespace(open=lambda path, mode: _TrackedFile(path)), paths


def test_head_frees_every_buffer_it_read_in_the_calling_thread(tmp_path):
    # A buffer read from a Python file and freed later by one of Arrow's pool threads needs the GIL there; when
    # that happens as the interpreter exits, the process aborts after printing the rows ("terminate called
    # without an active exception", `fabric data head` exiting with SIGABRT now and then).
    store = _TrackedStore(tmp_path)
    data.init("heads", store=store)
    data.write("lakefs://heads/main/t", pd.DataFrame({"x": range(1000), "y": ["a"] * 1000}), "t", store=store)
    FREED_BY.clear()
    assert data.head("lakefs://heads/main/t", n=3, store=store)["x"].tolist() == [0, 1, 2]
    time.sleep(0.3)  # room for any pool thread still holding a buffer
    assert FREED_BY and set(FREED_BY) == {threading.get_ident()}


def _terminated_mid_write(root: str, ready) -> None:
    def commit_slowly(self, *args, **kwargs):
        ready.set()
        time.sleep(60)

    LocalStore.commit_files = commit_slowly
    data.write("lakefs://terms/main/t", pd.DataFrame({"x": range(1000)}), "never lands", store=LocalStore(root))


def test_a_terminated_writer_removes_its_temp_folder(tmp_path, monkeypatch):
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))  # the writer's temp folder goes here
    store = LocalStore(tmp_path / "store")
    data.init("terms", store=store)
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    process = context.Process(target=_terminated_mid_write, args=(str(store.root), ready))
    process.start()
    assert ready.wait(60)
    assert [p.name.startswith("fabric-write-") for p in folder.iterdir()] == [True]
    process.terminate()  # SIGTERM
    process.join(60)
    assert process.exitcode == 128 + signal.SIGTERM
    assert list(folder.iterdir()) == []
    assert [c.message for c in data.log("lakefs://terms/main", store=store)] == ["Repository created"]
