"""Garbage collection: what killed writers leave behind, deleted once it is older than a grace period.

A writer killed with ``kill -9`` never corrupts a branch, but it leaves its temp folder (``fabric-write-*``
under the system temp folder), partial ``.*.tmp`` files, objects no commit names and commits no ref reaches.
Like lakeFS's garbage collection, :func:`collect_repo` deletes objects that no retained commit references, and
only once they are older than the grace period. It also deletes commits that no branch or tag reaches (only a
writer killed between writing its commit and moving its branch makes those), the stale temp files, and
:func:`stale_write_folders` finds the temp folders of writers that are gone.

What a running writer may still need is never touched: the store's lock is held for the whole collection (a
writer adds its objects, its commit and its branch move under that lock), anything younger than the grace period
stays with everything it references, and a temp folder whose writer process is alive stays at any age.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path

from fabric.data.store import Removed

__all__ = ["DEFAULT_GRACE_S", "collect_repo", "remove", "stale_write_folders", "write_prefix"]

DEFAULT_GRACE_S = 3600.0
WRITE_PREFIX = "fabric-write-"
# fabric-write-REPO.PID.RANDOM; before the repository and pid were in the name, fabric-write-RANDOM.
WRITE_FOLDER = re.compile(r"^fabric-write-(?:(?P<repo>[a-z0-9][a-z0-9\-]{2,62})\.(?P<pid>\d+)\.)?[a-z0-9_]+$")


def write_prefix(repo: str) -> str:
    """The name prefix of a writer's temp folder: it names the repository and the writing process."""
    return f"{WRITE_PREFIX}{repo}.{os.getpid()}."


def stale_write_folders(repo: str, grace_s: float, now: float | None = None) -> list[Removed]:
    """Writers' temp folders for ``repo`` (or from before folders named one) whose process is gone, older than
    ``grace_s`` seconds."""
    now = time.time() if now is None else now
    found = []
    for path in sorted(Path(tempfile.gettempdir()).glob(f"{WRITE_PREFIX}*")):
        match = WRITE_FOLDER.match(path.name)
        if not match or not path.is_dir() or match["repo"] not in (None, repo):
            continue
        if (match["pid"] and _alive(int(match["pid"]))) or not _older(path, now - grace_s):
            continue
        found.append(Removed(str(path), "temp", _size(path)))
    return found


def collect_repo(folder: Path, grace_s: float, now: float | None = None) -> list[Removed]:
    """What garbage collection would delete from the local store's repository ``folder``; call under its lock."""
    now = time.time() if now is None else now
    cutoff = now - grace_s
    commit_files = {p.name.removesuffix(".json"): p for p in (folder / "commits").glob("*.json")
                    if not p.name.startswith(".")}
    roots = [p.read_text().strip() for kind in ("branches", "tags") for p in (folder / "refs" / kind).iterdir()
             if not p.name.startswith(".")]
    roots += [commit for commit, path in commit_files.items() if not _older(path, cutoff)]
    retained, trees = _reachable(commit_files, roots)
    referenced = {name for tree in trees for name in tree.values()}
    found = [Removed(str(p), "commit", p.stat().st_size) for c, p in sorted(commit_files.items()) if c not in retained]
    for path in sorted((folder / "objects").glob("*/*")):
        if path.name.startswith(".") or path.name not in referenced:
            if _older(path, cutoff):
                found.append(Removed(str(path), "temp" if path.name.startswith(".") else "object", _size(path)))
    for sub in ("commits", "refs/branches", "refs/tags", "."):
        found += [Removed(str(p), "temp", _size(p)) for p in sorted((folder / sub).glob(".*"))
                  if p.is_file() and _older(p, cutoff)]
    return found


def remove(items: list[Removed]) -> None:
    """Deletes the files and folders ``items`` name (commits first, so no commit ever names a missing object)."""
    for item in sorted(items, key=lambda i: i.kind != "commit"):
        path = Path(item.path)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
            if item.kind == "object" and not any(path.parent.iterdir()):
                path.parent.rmdir()


def _reachable(commit_files: dict[str, Path], roots: list[str]) -> tuple[set[str], list[dict[str, str]]]:
    """Commit ids reachable from ``roots`` through parents, and their trees."""
    seen, trees, queue = set(), [], deque(roots)
    while queue:
        commit = queue.popleft()
        if commit in seen or commit not in commit_files:
            continue
        seen.add(commit)
        body = json.loads(commit_files[commit].read_text())
        trees.append(body["tree"])
        queue.extend(body["parents"])
    return seen, trees


def _older(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
