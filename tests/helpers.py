"""Helpers shared by tests that start servers or run workloads in other processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any


def last_json(output: str, key: str) -> dict[str, Any]:
    """The last line of ``output`` that is a JSON object holding ``key`` (Ray may log after the result)."""
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            if key in data:
                return data
    raise AssertionError(f"no JSON result with {key!r} in output:\n{output[-3000:]}")


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct free ports: the sockets stay open until all are picked, so no port comes back twice."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_until_answers(url: str, process: subprocess.Popen, log: str, timeout: float = 120) -> None:
    """Polls ``url`` each second until the server there answers; any HTTP status counts (e.g. 401 without a token).

    Raises:
        RuntimeError: ``process`` exited or ``timeout`` seconds passed first; the message points at its ``log``.

    Example::

        wait_until_answers(f"http://127.0.0.1:{port}/health", server, log.name)
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:  # answering, if only with an error status: it is up
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                name = os.path.basename(process.args[0])
                raise RuntimeError(f"{name} did not answer at {url}; see {log}") from None
            time.sleep(1)


def run_serve_app(build: Callable[[Any], Any], cfg: Any, api_keys: str) -> str:
    """Runs ``build(cfg)`` with Ray Serve on loopback at ``cfg.port`` as application ``cfg.name``; returns its URL.

    ``FABRIC_API_KEYS`` is ``api_keys`` only while the app is built (it reads the keys then), so other tests do not
    see it. Ray must be up; the caller shuts Serve down. (:func:`fabric.serve.app.run_app`, on loopback.)

    Example::

        url = run_serve_app(build_app, ServeConfig.from_dict({...}), "key:predict,admin-key:admin")
    """
    from fabric.serve.app import run_app

    return run_app(build, cfg.model_copy(update={"host": "127.0.0.1"}), api_keys)


def stop_group(process: subprocess.Popen, term_wait: float = 10) -> None:
    """Stops a process started with ``start_new_session=True`` (a `ray start --block`, say) and its children:
    TERM to its process group, then KILL if it is still there after ``term_wait`` seconds."""
    for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue
