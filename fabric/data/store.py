"""The interface every versioned data backend implements, with its value types and errors.

Two implementations: :mod:`fabric.data.local_store` (embedded, on the local disk) and
:mod:`fabric.data.lakefs_store` (a lakeFS server). Both have lakeFS semantics: a repository holds immutable
commits (id, parents, message, metadata, time), branches are movable refs, tags are fixed refs, and any ref
(branch, tag or commit id) can be read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = [
    "Change",
    "Commit",
    "DataError",
    "GCReport",
    "MergeConflictError",
    "NotFoundError",
    "Removed",
    "VersionStore",
]


class DataError(ValueError):
    """A data operation was refused; the message says what was wrong."""


class NotFoundError(DataError, LookupError):
    """A repository, ref or path does not exist. The message names the missing part."""


class MergeConflictError(DataError):
    """Both sides of a merge changed the same paths; nothing was changed."""

    def __init__(self, message: str, paths: list[str]):
        super().__init__(message)
        self.paths = paths


@dataclass(frozen=True)
class Commit:
    """An immutable commit."""

    id: str
    parents: list[str]
    message: str
    metadata: dict[str, str] = field(default_factory=dict)
    time: float = 0.0  # seconds since the epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Change:
    """One path that differs between two refs, as seen going from the left ref to the right one."""

    path: str
    type: Literal["added", "removed", "changed"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Removed:
    """One file or folder that garbage collection deletes (or, in a dry run, would delete)."""

    path: str
    kind: Literal["object", "commit", "temp"]
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GCReport:
    """What one garbage collection of a repository deleted, or would delete when ``dry_run``."""

    repo: str
    dry_run: bool
    removed: list[Removed] = field(default_factory=list)
    note: str = ""  # what this backend leaves to someone else (lakeFS collects its own objects)

    def count(self, kind: str) -> int:
        return sum(item.kind == kind for item in self.removed)

    @property
    def bytes(self) -> int:
        return sum(item.bytes for item in self.removed)

    def to_dict(self) -> dict[str, Any]:
        return {"repo": self.repo, "dry_run": self.dry_run, "objects": self.count("object"),
                "commits": self.count("commit"), "temp": self.count("temp"), "bytes": self.bytes,
                "removed": [item.to_dict() for item in self.removed], "note": self.note}

    def summary(self) -> str:
        """One line, e.g. ``removed 3 objects, 1 commits, 2 temp files or folders: 41.2 MB freed``."""
        verb, freed = ("would remove", "would be freed") if self.dry_run else ("removed", "freed")
        line = (f"{self.repo}: {verb} {self.count('object')} objects, {self.count('commit')} commits, "
                f"{self.count('temp')} temp files or folders: {self.bytes / 1e6:.1f} MB {freed}")
        return f"{line}\n{self.note}" if self.note else line


class VersionStore(Protocol):
    """What fabric needs from a versioned object store. Paths are ``/``-separated, relative to the repo root."""

    def create_repo(self, repo: str, default_branch: str = "main", exist_ok: bool = False) -> str:
        """Creates a repository with an initial empty commit on ``default_branch``; returns that commit's id."""

    def create_branch(self, repo: str, name: str, source: str) -> str:
        """Creates branch ``name`` at ref ``source`` (zero-copy); returns the commit id it points at."""

    def create_tag(self, repo: str, name: str, ref: str) -> str:
        """Creates tag ``name`` at ``ref``; returns the commit id it points at."""

    def resolve(self, repo: str, ref: str) -> str:
        """The commit id that ``ref`` (branch, tag or commit id) points at now."""

    def get_commit(self, repo: str, ref: str) -> Commit:
        """The commit that ``ref`` points at."""

    def commit_files(
        self, repo: str, branch: str, prefix: str, source_dir: Path, message: str, metadata: dict[str, str]
    ) -> str:
        """Atomically replaces everything under ``prefix`` on ``branch`` with the files in ``source_dir``.

        Files keep their names relative to ``source_dir``. Either a new commit is made and the branch moves to
        it, or (on any error) nothing changes. Concurrent calls on one branch are serialised; none is lost.
        Returns the new commit id.
        """

    def list_files(self, repo: str, ref: str, prefix: str) -> list[str]:
        """Paths of the files under ``prefix`` at ``ref``, sorted."""

    def read_paths(self, repo: str, ref: str, prefix: str) -> tuple[Any, list[str]]:
        """A pickleable fsspec filesystem and the paths on it of the files under ``prefix`` at ``ref``.

        ``ref`` is resolved to its commit id first, so the paths keep naming that commit's files.
        """

    def diff(self, repo: str, left: str, right: str, prefix: str = "") -> list[Change]:
        """Paths that differ between refs ``left`` and ``right``."""

    def merge(self, repo: str, source: str, dest: str, message: str | None = None) -> str:
        """Merges ref ``source`` into branch ``dest``; returns dest's new commit id.

        Raises :class:`MergeConflictError` naming the paths when both sides changed a path since their merge base;
        then nothing changes.
        """

    def log(self, repo: str, ref: str, limit: int | None = None) -> list[Commit]:
        """Commits reachable from ``ref``, newest first."""

    def list_branches(self, repo: str) -> dict[str, str]:
        """Branch names to the commit ids they point at."""

    def collect_garbage(self, repo: str, grace_s: float, dry_run: bool = False) -> GCReport:
        """Deletes what no branch or tag can reach (objects, orphan commits) and stale temp files, once older than
        ``grace_s`` seconds; never what a running writer may still need. ``dry_run`` only lists it."""
