"""The embedded versioned store: lakeFS semantics on the local disk, no server.

Layout of one repository under the store's root::

    REPO/
      repo.json                    name, default branch, creation time
      objects/ab/abcd...ef.parquet content-addressed files, shared by every commit that holds them (zero-copy)
      commits/<id>.json            immutable: parents, message, metadata, time, tree {path: object}
      refs/branches/<name>         the commit id a branch points at (movable)
      refs/tags/<name>             the commit id a tag points at (fixed)
      lock                         serialises ref updates (fcntl)

A commit id is the SHA-256 of the commit's content. A write, holding the repository lock, copies new files into
``objects/``, writes the commit and moves the branch, each file synced to disk before the atomic rename that
names it, so no commit ever names an object that a crash lost. Any error undoes all of it: the branch stays where
it was and no commit or object is left behind. A writer killed with ``kill -9`` cannot undo anything: what it
leaves is removed by :meth:`LocalStore.collect_garbage` (``fabric data gc``).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import deque
from pathlib import Path
from typing import Any

from fabric.data.store import Change, Commit, DataError, GCReport, MergeConflictError, NotFoundError
from fabric.files import atomic_copy, atomic_write, locked

__all__ = ["LocalStore"]

NAME = re.compile(r"^[a-z0-9][a-z0-9\-]{2,62}$")  # lakeFS's rule for repository names
REF_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]{0,255}$")
COMMIT_ID = re.compile(r"^[0-9a-f]{64}$")
REF_KIND = {"branches": "branch", "tags": "tag"}


class LocalStore:
    """A :class:`~fabric.data.store.VersionStore` in a folder.

    Example:
        >>> store = LocalStore("/tmp/data")
        >>> store.create_repo("iris")  # doctest: +SKIP
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __reduce__(self) -> tuple[Any, ...]:
        return (LocalStore, (str(self.root),))

    # repositories and refs

    def create_repo(self, repo: str, default_branch: str = "main", exist_ok: bool = False) -> str:
        if not NAME.match(repo):
            raise DataError(f"repository name {repo!r} must be 3-63 lowercase letters, digits or '-'")
        path = self.root / repo
        if (path / "repo.json").exists():
            if exist_ok:
                return self.resolve(repo, json.loads((path / "repo.json").read_text())["default_branch"])
            raise DataError(f"repository {repo!r} already exists")
        for sub in ("objects", "commits", "refs/branches", "refs/tags"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        with self._locked(repo):
            commit_id = self._write_commit(repo, [], "Repository created", {}, {})
            if not REF_NAME.match(default_branch):
                raise DataError(f"branch name {default_branch!r} is not a valid ref name")
            atomic_write(path / "refs" / "branches" / default_branch, commit_id)
            atomic_write(path / "repo.json", json.dumps({"name": repo, "default_branch": default_branch,
                                                           "created": time.time()}))
        return commit_id

    def create_branch(self, repo: str, name: str, source: str) -> str:
        return self._create_ref(repo, "branches", name, source)

    def create_tag(self, repo: str, name: str, ref: str) -> str:
        return self._create_ref(repo, "tags", name, ref)

    def _create_ref(self, repo: str, kind: str, name: str, target: str) -> str:
        commit_id = self.resolve(repo, target)
        with self._locked(repo):
            if self._ref_file(repo, kind, name).exists():
                raise DataError(f"{REF_KIND[kind]} {name!r} already exists in repository {repo!r}")
            self._set_ref(repo, kind, name, commit_id)
        return commit_id

    def list_branches(self, repo: str) -> dict[str, str]:
        folder = self._repo(repo) / "refs" / "branches"
        return {p.name: p.read_text().strip() for p in sorted(folder.iterdir())}

    def resolve(self, repo: str, ref: str) -> str:
        path = self._repo(repo)
        for kind in ("branches", "tags"):
            if REF_NAME.match(ref) and (path / "refs" / kind / ref).is_file():
                return (path / "refs" / kind / ref).read_text().strip()
        if COMMIT_ID.match(ref) and (path / "commits" / f"{ref}.json").is_file():
            return ref
        raise NotFoundError(f"ref {ref!r} not found in repository {repo!r}: not a branch, tag or commit id")

    def get_commit(self, repo: str, ref: str) -> Commit:
        data = self._commit_data(repo, self.resolve(repo, ref))
        return Commit(id=data["id"], parents=data["parents"], message=data["message"], metadata=data["metadata"],
                      time=data["time"])

    # writing

    def commit_files(
        self, repo: str, branch: str, prefix: str, source_dir: Path, message: str, metadata: dict[str, str]
    ) -> str:
        prefix = prefix.strip("/")
        files = sorted(p for p in Path(source_dir).rglob("*") if p.is_file())
        if not files:
            raise DataError(f"nothing to commit under {prefix!r}: the data has no files")
        self._branch_file(repo, branch)
        names = {f"{prefix}/{f.relative_to(source_dir).as_posix()}": (f, _object_name(f)) for f in files}
        added: list[Path] = []
        with self._locked(repo):  # objects are added under the lock too, so a failure can remove its own safely
            try:
                entries = {path: self._store_object(repo, file, name, added) for path, (file, name) in names.items()}
                parent = self._branch_file(repo, branch).read_text().strip()
                tree = {p: o for p, o in self._tree(repo, parent).items() if not _under(p, prefix)}
                commit_id = self._write_commit(repo, [parent], message, metadata, {**tree, **entries})
                try:
                    self._set_ref(repo, "branches", branch, commit_id)
                except BaseException:
                    (self._repo(repo) / "commits" / f"{commit_id}.json").unlink(missing_ok=True)
                    raise
            except BaseException:
                for path in added:
                    path.unlink(missing_ok=True)
                raise
        return commit_id

    # reading

    def list_files(self, repo: str, ref: str, prefix: str) -> list[str]:
        prefix = prefix.strip("/")
        return sorted(p for p in self._tree(repo, self.resolve(repo, ref)) if _under(p, prefix))

    def read_paths(self, repo: str, ref: str, prefix: str) -> tuple[Any, list[str]]:
        from fsspec.implementations.local import LocalFileSystem

        tree = self._tree(repo, self.resolve(repo, ref))
        objects = self._repo(repo) / "objects"
        paths = [str(objects / tree[p][:2] / tree[p]) for p in sorted(tree) if _under(p, prefix.strip("/"))]
        return LocalFileSystem(), paths

    def diff(self, repo: str, left: str, right: str, prefix: str = "") -> list[Change]:
        before = self._tree(repo, self.resolve(repo, left))
        after = self._tree(repo, self.resolve(repo, right))
        return [c for c in _changes(before, after) if _under(c.path, prefix.strip("/"))]

    def log(self, repo: str, ref: str, limit: int | None = None) -> list[Commit]:
        seen, queue, commits = set(), deque([self.resolve(repo, ref)]), []
        while queue:
            commit_id = queue.popleft()
            if commit_id in seen:
                continue
            seen.add(commit_id)
            commit = self.get_commit(repo, commit_id)
            commits.append(commit)
            queue.extend(commit.parents)
        commits.sort(key=lambda c: c.time, reverse=True)
        return commits[:limit] if limit else commits

    # merging

    def merge(self, repo: str, source: str, dest: str, message: str | None = None) -> str:
        source_id = self.resolve(repo, source)
        with self._locked(repo):
            dest_id = self._branch_file(repo, dest).read_text().strip()
            base_id = self._merge_base(repo, source_id, dest_id)
            if base_id == source_id:
                return dest_id  # nothing on source that dest lacks
            base, theirs, ours = (self._tree(repo, c) for c in (base_id, source_id, dest_id))
            changed_theirs = {c.path for c in _changes(base, theirs)}
            changed_ours = {c.path for c in _changes(base, ours)}
            conflicts = sorted(p for p in changed_theirs & changed_ours if theirs.get(p) != ours.get(p))
            if conflicts:
                raise MergeConflictError(
                    f"cannot merge {source!r} into {dest!r} in {repo!r}: both changed {', '.join(conflicts)}", conflicts
                )
            merged = dict(ours)
            for path in changed_theirs:
                if path in theirs:
                    merged[path] = theirs[path]
                else:
                    merged.pop(path, None)
            commit_id = self._write_commit(
                repo, [dest_id, source_id], message or f"Merge {source!r} into {dest!r}", {}, merged
            )
            self._set_ref(repo, "branches", dest, commit_id)
        return commit_id

    def _merge_base(self, repo: str, left: str, right: str) -> str:
        left_ancestors = {c.id for c in self.log(repo, left)}
        for commit in self.log(repo, right):  # newest first: the first shared commit is the nearest
            if commit.id in left_ancestors:
                return commit.id
        raise DataError(f"refs {left!r} and {right!r} of {repo!r} share no history")

    # garbage collection

    def collect_garbage(self, repo: str, grace_s: float, dry_run: bool = False) -> GCReport:
        from fabric.data import garbage

        folder = self._repo(repo)
        with self._locked(repo):  # writers add objects, commits and ref moves under it: none is half-done now
            removed = garbage.collect_repo(folder, grace_s)
            if not dry_run:
                garbage.remove(removed)
        return GCReport(repo, dry_run, removed)

    # internals

    def _repo(self, repo: str) -> Path:
        path = self.root / repo
        if not (path / "repo.json").is_file():
            raise NotFoundError(f"repository {repo!r} does not exist (create it with `fabric data init {repo}`)")
        return path

    def _ref_file(self, repo: str, kind: str, name: str) -> Path:
        if not REF_NAME.match(name):
            raise DataError(f"{REF_KIND[kind]} name {name!r} is not a valid ref name")
        return self._repo(repo) / "refs" / kind / name

    def _branch_file(self, repo: str, branch: str) -> Path:
        path = self._ref_file(repo, "branches", branch)
        if not path.is_file():
            raise NotFoundError(f"branch {branch!r} not found in repository {repo!r}")
        return path

    def _set_ref(self, repo: str, kind: str, name: str, commit_id: str) -> None:
        atomic_write(self._ref_file(repo, kind, name), commit_id)

    def _commit_data(self, repo: str, commit_id: str) -> dict[str, Any]:
        return json.loads((self._repo(repo) / "commits" / f"{commit_id}.json").read_text())

    def _tree(self, repo: str, commit_id: str) -> dict[str, str]:
        return self._commit_data(repo, commit_id)["tree"]

    def _write_commit(
        self, repo: str, parents: list[str], message: str, metadata: dict[str, str], tree: dict[str, str]
    ) -> str:
        body = {"parents": parents, "message": message, "metadata": {str(k): str(v) for k, v in metadata.items()},
                "time": time.time(), "tree": dict(sorted(tree.items()))}
        commit_id = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        atomic_write(self.root / repo / "commits" / f"{commit_id}.json", json.dumps({"id": commit_id, **body}))
        return commit_id

    def _store_object(self, repo: str, file: Path, name: str, added: list[Path]) -> str:
        """Copies ``file`` into the object store unless an identical object is there; returns ``name``."""
        target = self._repo(repo) / "objects" / name[:2] / name
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            atomic_copy(file, target)
            added.append(target)
        return name

    def _locked(self, repo: str) -> Any:
        return locked(self.root / repo / "lock")


def _object_name(file: Path) -> str:
    """Content address of a file: its SHA-256, plus its suffix so readers can tell the format."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() + file.suffix


def _under(path: str, prefix: str) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + "/")


def _changes(before: dict[str, str], after: dict[str, str]) -> list[Change]:
    changes = [Change(p, "removed") for p in before if p not in after]
    changes += [Change(p, "added") for p in after if p not in before]
    changes += [Change(p, "changed") for p in after if p in before and before[p] != after[p]]
    return sorted(changes, key=lambda c: c.path)
