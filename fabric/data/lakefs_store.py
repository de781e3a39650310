"""The lakeFS backend of fabric's versioned data: a thin layer over the ``lakefs`` SDK and ``lakefs-spec``.

Metadata (repositories, branches, tags, commits, diff, merge, log) goes through the high-level ``lakefs`` SDK; bytes
go through ``lakefs_spec.LakeFSFileSystem``, which is also the pickleable filesystem handed to Ray Data and pyarrow.

Example:
    >>> store = LakeFSStore("http://localhost:8000", "AKIA...", "secret", storage_namespace="s3://bucket/{repo}")
    >>> head = store.create_repo("tabular", exist_ok=True)
    >>> commit_id = store.commit_files("tabular", "main", "train", Path("out/"), "new data", {"source": "etl"})
    >>> fs, paths = store.read_paths("tabular", commit_id, "train")
    >>> ds = ray.data.read_parquet(paths, filesystem=fs)
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lakefs
import lakefs.exceptions as lx
import urllib3.exceptions
from lakefs.reference import generate_listing
from lakefs_spec import LakeFSFileSystem

from fabric.data.store import Change, Commit, DataError, GCReport, MergeConflictError, NotFoundError

__all__ = ["LakeFSStore"]

# commit_files stages on a short-lived branch with this prefix; list_branches hides them.
TX_BRANCH_PREFIX = "fabric-tx-"
# How often commit_files rebuilds its change when another writer moved the branch under the same prefix.
MAX_COMMIT_ATTEMPTS = 5
_DELETE_BATCH = 1000
_CHANGE_TYPES = {"added": "added", "removed": "removed", "changed": "changed", "conflict": "changed"}
_MERGE_LOCKS: dict[tuple[str, str, str], threading.Lock] = {}
_MERGE_LOCKS_GUARD = threading.Lock()


def _merge_lock(endpoint: str, repo: str, branch: str) -> threading.Lock:
    """The lock that makes commit_files' check-then-merge atomic within this process, per branch."""
    with _MERGE_LOCKS_GUARD:
        return _MERGE_LOCKS.setdefault((endpoint, repo, branch), threading.Lock())


class LakeFSStore:
    """A :class:`fabric.data.store.VersionStore` on a lakeFS server.

    Args:
        endpoint: The lakeFS server, e.g. ``http://localhost:8000`` (``/api/v1`` is added by the SDK).
        access_key_id: The lakeFS access key; ``None`` reads ``LAKECTL_CREDENTIALS_ACCESS_KEY_ID``.
        secret_access_key: The secret; ``None`` reads ``LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY``.
        storage_namespace: Where :meth:`create_repo` puts a repository's data; ``{repo}`` is its name.
    """

    def __init__(
        self,
        endpoint: str,
        access_key_id: str | None,
        secret_access_key: str | None,
        storage_namespace: str = "local://fabric/{repo}",
    ):
        key = access_key_id or os.environ.get("LAKECTL_CREDENTIALS_ACCESS_KEY_ID")
        secret = secret_access_key or os.environ.get("LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY")
        if not (key and secret):
            raise DataError(
                f"no lakeFS credentials for {endpoint}: pass access_key_id and secret_access_key or set "
                "LAKECTL_CREDENTIALS_ACCESS_KEY_ID and LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY"
            )
        self.endpoint = endpoint
        self.storage_namespace = storage_namespace
        self._fs_options = {"host": endpoint, "username": key, "password": secret, "create_branch_ok": False}
        self._client = lakefs.Client(host=endpoint, username=key, password=secret)

    # -- repositories, branches, tags ------------------------------------------------------------------------------
    def create_repo(self, repo: str, default_branch: str = "main", exist_ok: bool = False) -> str:
        """Creates ``repo`` (lakeFS makes the initial commit); returns the head of its default branch."""
        handle = self._repo(repo)
        with self._errors(repo):
            try:
                handle.create(
                    storage_namespace=self.storage_namespace.format(repo=repo),
                    default_branch=default_branch,
                    exist_ok=exist_ok,
                )
            except lx.ConflictException as exc:
                raise DataError(f"repository '{repo}' already exists; pass exist_ok=True to reuse it") from exc
            return self._branch_head(repo, handle.properties.default_branch)

    def create_branch(self, repo: str, name: str, source: str) -> str:
        """Creates branch ``name`` at ``source``; returns the commit id it points at."""
        with self._errors(repo, source):
            try:
                self._repo(repo).branch(name).create(source)
            except lx.ConflictException as exc:
                raise DataError(f"branch '{name}' already exists in repository '{repo}'") from exc
        return self._branch_head(repo, name)

    def create_tag(self, repo: str, name: str, ref: str) -> str:
        """Creates tag ``name`` at ``ref``; returns the commit id it points at."""
        with self._errors(repo, ref):
            try:
                self._repo(repo).tag(name).create(ref)
            except lx.ConflictException as exc:
                raise DataError(f"tag '{name}' already exists in repository '{repo}'") from exc
        return self.resolve(repo, name)

    def list_branches(self, repo: str) -> dict[str, str]:
        """Branch names to their head commit ids (commit_files' temporary branches left out)."""
        with self._errors(repo):
            refs = generate_listing(self._client.sdk_client.branches_api.list_branches, repo)
            return {ref.id: ref.commit_id for ref in refs if not ref.id.startswith(TX_BRANCH_PREFIX)}

    def collect_garbage(self, repo: str, grace_s: float, dry_run: bool = False) -> GCReport:
        """Removes nothing: lakeFS deletes unreferenced objects itself, by the repository's GC rules."""
        with self._errors(repo), lx.api_exception_handler():
            self._client.sdk_client.repositories_api.get_repository(repo)
        return GCReport(repo, dry_run, note=(
            f"lakeFS at {self.endpoint} collects this repository's objects itself: set retention rules with "
            f"`lakectl gc set-config lakefs://{repo}` and run its garbage collection job"))

    # -- commits ---------------------------------------------------------------------------------------------------
    def resolve(self, repo: str, ref: str) -> str:
        """The 64-hex commit id that branch, tag or commit id ``ref`` points at now."""
        return self.get_commit(repo, ref).id

    def get_commit(self, repo: str, ref: str) -> Commit:
        """The commit that ``ref`` points at."""
        with self._errors(repo, ref):
            return _to_commit(self._repo(repo).ref(ref).get_commit())

    def log(self, repo: str, ref: str, limit: int | None = None) -> list[Commit]:
        """Commits reachable from ``ref``, newest first, at most ``limit``."""
        if limit is not None and limit <= 0:
            return []
        with self._errors(repo, ref):
            return [_to_commit(c) for c in self._repo(repo).ref(ref).log(max_amount=limit)]

    def commit_files(
        self, repo: str, branch: str, prefix: str, source_dir: Path, message: str, metadata: dict[str, str]
    ) -> str:
        """Atomically replaces everything under ``prefix`` on ``branch`` with the files of ``source_dir``.

        Each try stages on a temporary branch made from the branch head, commits there and squash-merges into
        ``branch`` (one commit, carrying ``message`` and ``metadata``), so a failure leaves ``branch`` untouched.

        Concurrency: uploads run in parallel; just before merging, a try checks whether ``branch`` moved under
        ``prefix`` since it started and, if so, starts over from the new head (at most :data:`MAX_COMMIT_ATTEMPTS`
        times), which is what running the two calls one after the other gives. Changes elsewhere on the branch
        merge cleanly. The check and the merge hold a per-branch lock within this process; lakeFS has no
        compare-and-swap on a branch, so across processes a writer of the same prefix can still slip in between
        them: lakeFS then reports a conflict if the file names overlap (the try starts over), and otherwise the
        prefix ends up holding both writers' files.
        """
        files = _local_files(Path(source_dir))
        prefix = _dir_prefix(prefix)
        bad = sorted(str(k) for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str)))
        if bad:
            raise DataError(f"commit metadata must map str to str; fix the entries for {bad}")
        for _ in range(MAX_COMMIT_ATTEMPTS):
            base = self._branch_head(repo, branch)
            commit_id = self._commit_once(repo, branch, base, prefix, files, message, dict(metadata))
            if commit_id is not None:
                return commit_id
        raise DataError(
            f"branch '{branch}' of repository '{repo}' kept changing under '{prefix}' while committing; "
            f"gave up after {MAX_COMMIT_ATTEMPTS} tries, run it again"
        )

    def _commit_once(
        self, repo: str, branch: str, base: str, prefix: str, files: dict[str, Path], message: str, metadata: dict
    ) -> str | None:
        """One try from commit ``base``; the new head of ``branch``, or None if another writer got in the way."""
        tx = self._repo(repo).branch(f"{TX_BRANCH_PREFIX}{uuid.uuid4().hex}")
        with self._errors(repo, branch):
            tx.create(base, hidden=True)
        try:
            with self._errors(repo, branch):
                self._stage(repo, tx, prefix, files)
                tx.commit(message=message, metadata=metadata, allow_empty=True)
                with _merge_lock(self.endpoint, repo, branch):
                    if self._changed_since(repo, base, branch, prefix):
                        return None
                    try:
                        return tx.merge_into(
                            branch, message=message, metadata=metadata, squash_merge=True, allow_empty=True
                        )
                    except lx.ConflictException:
                        if self._branch_head(repo, branch) != base:
                            return None  # another process moved the branch between our check and the merge
                        raise
        finally:
            with contextlib.suppress(lx.LakeFSException, urllib3.exceptions.HTTPError):
                tx.delete()

    def _stage(self, repo: str, tx: lakefs.Branch, prefix: str, files: dict[str, Path]) -> None:
        """Uploads ``files`` under ``prefix`` on branch ``tx`` and deletes whatever else was there."""
        old = {obj.path for obj in tx.objects(prefix=prefix or None)}
        fs = self._fs()
        for name, local in files.items():
            remote = f"{repo}/{tx.id}/{prefix}{name}"
            try:
                fs.put_file(str(local), remote, precheck=False)
            except OSError as exc:
                raise DataError(f"uploading {local} to lakefs://{remote} failed: {exc}") from exc
        stale = sorted(old - {prefix + name for name in files})
        for start in range(0, len(stale), _DELETE_BATCH):
            tx.delete_objects(stale[start : start + _DELETE_BATCH])

    def _changed_since(self, repo: str, base: str, branch: str, prefix: str) -> bool:
        """Whether ``branch`` moved from ``base`` with changes under ``prefix``."""
        head = self._branch_head(repo, branch)
        if head == base:
            return False
        return any(True for _ in self._repo(repo).ref(base).diff(head, prefix=prefix or None, type="two_dot"))

    # -- reading ---------------------------------------------------------------------------------------------------
    def list_files(self, repo: str, ref: str, prefix: str) -> list[str]:
        """Paths of the objects under ``prefix`` at ``ref``, sorted."""
        with self._errors(repo, ref):
            objects = self._repo(repo).ref(ref).objects(prefix=_dir_prefix(prefix) or None)
            return sorted(obj.path for obj in objects)

    def read_paths(self, repo: str, ref: str, prefix: str) -> tuple[Any, list[str]]:
        """A ``LakeFSFileSystem`` and the ``repo/<commit id>/<path>`` paths of the files under ``prefix``."""
        commit_id = self.resolve(repo, ref)
        paths = [f"{repo}/{commit_id}/{path}" for path in self.list_files(repo, commit_id, prefix)]
        return self._fs(), paths

    def diff(self, repo: str, left: str, right: str, prefix: str = "") -> list[Change]:
        """Paths that differ going from ``left`` to ``right`` (a two-dot diff, not from the merge base)."""
        left_id, right_id = self.resolve(repo, left), self.resolve(repo, right)
        with self._errors(repo):
            changes = self._repo(repo).ref(left_id).diff(right_id, prefix=_dir_prefix(prefix) or None, type="two_dot")
            return [Change(c.path, _CHANGE_TYPES[c.type]) for c in changes if c.path_type == "object"]

    # -- merging ---------------------------------------------------------------------------------------------------
    def merge(self, repo: str, source: str, dest: str, message: str | None = None) -> str:
        """Merges ``source`` into branch ``dest``; returns dest's head (unchanged when there is nothing to merge).

        Raises:
            MergeConflictError: both sides changed the same paths since their merge base; nothing changed.
        """
        self.resolve(repo, source)
        self._branch_head(repo, dest)
        options = {"message": message} if message else {}
        with self._errors(repo, dest):
            try:
                return self._repo(repo).ref(source).merge_into(dest, **options)
            except lx.ConflictException as exc:
                paths = self._conflicting_paths(repo, source, dest)
                raise MergeConflictError(
                    f"cannot merge '{source}' into '{dest}' in repository '{repo}': both changed {', '.join(paths)}",
                    paths,
                ) from exc
            except lx.BadRequestException as exc:
                if "no changes" not in _message(exc):
                    raise
                return self._branch_head(repo, dest)

    def _conflicting_paths(self, repo: str, source: str, dest: str) -> list[str]:
        """Paths changed on both sides since the merge base that now differ between the two sides."""
        with lx.api_exception_handler():
            base = self._client.sdk_client.refs_api.find_merge_base(repo, source, dest).base_commit_id
        base_ref = self._repo(repo).ref(base)
        ours = {c.path for c in base_ref.diff(source, type="two_dot")}
        theirs = {c.path for c in base_ref.diff(dest, type="two_dot")}
        differ = {c.path for c in self._repo(repo).ref(source).diff(dest, type="two_dot")}
        return sorted(ours & theirs & differ)

    # -- plumbing --------------------------------------------------------------------------------------------------
    def _repo(self, repo: str) -> lakefs.Repository:
        return lakefs.repository(repo, client=self._client)

    def _fs(self) -> LakeFSFileSystem:
        return LakeFSFileSystem(**self._fs_options)

    def _branch_head(self, repo: str, branch: str) -> str:
        with self._errors(repo, branch, kind="branch"):
            return self._repo(repo).branch(branch).head.id

    @contextlib.contextmanager
    def _errors(self, repo: str, ref: str | None = None, kind: str = "ref") -> Iterator[None]:
        """Turns lakeFS SDK errors into fabric's, with messages that name the repository and ref."""
        try:
            yield
        except lx.NotFoundException as exc:
            raise self._not_found(repo, ref, kind) from exc
        except lx.NotAuthorizedException as exc:
            raise DataError(
                f"lakeFS at {self.endpoint} rejected the credentials ({_message(exc)}); check "
                "LAKECTL_CREDENTIALS_ACCESS_KEY_ID and LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY"
            ) from exc
        except lx.ServerException as exc:
            raise DataError(
                f"lakeFS refused the request on repository '{repo}' (HTTP {exc.status_code}): {_message(exc)}"
            ) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise DataError(f"cannot reach lakeFS at {self.endpoint}: {exc}") from exc

    def _not_found(self, repo: str, ref: str | None, kind: str) -> NotFoundError:
        try:
            with lx.api_exception_handler():
                self._client.sdk_client.repositories_api.get_repository(repo)
        except lx.NotFoundException:
            return NotFoundError(f"repository '{repo}' does not exist")
        if ref is None:
            return NotFoundError(f"not found in repository '{repo}'")
        return NotFoundError(f"{kind} '{ref}' does not exist in repository '{repo}'")


def _to_commit(commit: lakefs.Commit) -> Commit:
    return Commit(
        id=commit.id,
        parents=list(commit.parents),
        message=commit.message,
        metadata=dict(commit.metadata or {}),
        time=float(commit.creation_date),
    )


def _message(exc: lx.ServerException) -> str:
    return str(exc.body.get("message") or exc.reason or exc.status_code)


def _dir_prefix(prefix: str) -> str:
    """``"a/b"`` and ``"a/b/"`` both mean the folder ``a/b/``; ``""`` is the whole repository."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def _local_files(source_dir: Path) -> dict[str, Path]:
    """The files under ``source_dir`` by their ``/``-separated names relative to it."""
    if not source_dir.is_dir():
        raise DataError(f"source_dir {source_dir} is not a directory")
    return {p.relative_to(source_dir).as_posix(): p for p in sorted(source_dir.rglob("*")) if p.is_file()}
