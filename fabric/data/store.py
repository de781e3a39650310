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
    "MergeConflictError",
    "NotFoundError",
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
