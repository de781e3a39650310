"""An in-process HTTP stand-in of the lakeFS server, for testing :class:`fabric.data.lakefs_store.LakeFSStore`.

It follows lakeFS's published OpenAPI spec (treeverse/lakeFS ``api/swagger.yml``, base path ``/api/v1``) for exactly
the endpoints that ``LakeFSStore``, the high-level ``lakefs`` SDK and ``lakefs-spec`` call, with the same JSON shapes
and status codes. State lives in memory. Every request needs HTTP basic auth with the stand-in's key pair (401
otherwise). Errors are ``{"message": ...}`` with 400 (invalid input, "no changes"), 404 (missing repository, ref or
object), 409 (exists, merge conflict), 412 (``If-None-Match: *`` on an existing object), 416 (range past the end).

Endpoints (all under ``/api/v1``):

- ``GET  /config`` (version and storage config; pre-signed URLs are off)
- ``GET  /repositories`` / ``POST /repositories`` (201) / ``GET|DELETE /repositories/{repo}``
- ``GET  /repositories/{repo}/branches`` (``prefix``, ``after``, ``amount``, ``show_hidden``)
- ``POST /repositories/{repo}/branches`` (201, body is the commit id as text; ``hidden`` honoured)
- ``GET|DELETE /repositories/{repo}/branches/{branch}``
- ``GET  /repositories/{repo}/branches/{branch}/diff`` (uncommitted changes)
- ``POST /repositories/{repo}/branches/{branch}/commits`` (201; 400 "no changes" unless ``allow_empty``)
- ``POST /repositories/{repo}/branches/{branch}/objects?path=`` (raw body upload, 201)
- ``DELETE /repositories/{repo}/branches/{branch}/objects?path=`` (204)
- ``POST /repositories/{repo}/branches/{branch}/objects/delete`` (``PathList``, 200 ``ObjectErrorList``)
- ``POST /repositories/{repo}/tags`` (201 ``Ref``) / ``GET /repositories/{repo}/tags``
- ``GET  /repositories/{repo}/commits/{ref}`` (any ref: branch, tag or commit id)
- ``GET  /repositories/{repo}/refs/{ref}/commits`` (log, newest first; ``after``, ``amount``)
- ``GET  /repositories/{repo}/refs/{left}/diff/{right}`` (``type`` two_dot or three_dot (default), ``prefix``)
- ``GET  /repositories/{repo}/refs/{source}/merge/{dest}`` (merge base)
- ``POST /repositories/{repo}/refs/{source}/merge/{dest}`` (three-way merge; 409 on conflict; ``strategy``,
  ``squash_merge``, ``allow_empty``, ``force``, ``message``, ``metadata``)
- ``GET  /repositories/{repo}/refs/{ref}/objects/ls`` (``prefix``, ``delimiter``, ``after``, ``amount``)
- ``GET  /repositories/{repo}/refs/{ref}/objects/stat?path=``
- ``GET|HEAD /repositories/{repo}/refs/{ref}/objects?path=`` (``Range: bytes=a-b`` gives 206)

Not modelled: ref expressions (``main~1``, ``main@``), short commit ids, branch protection, hooks, pre-signed URLs,
multipart uploads, auth management. Reads from a branch see its staged changes; diff, log and merge use commits only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import heapq
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

__all__ = ["StandIn", "running_standin", "upload_hook"]

_REPO_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")
_BRANCH_NAME = re.compile(r"^\w[-\w]*$")
_NAMESPACE = re.compile(r"^(s3|gs|https?|mem|local|transient)://.*$")
_COMMIT_ID = re.compile(r"^[0-9a-f]{64}$")


class ApiError(Exception):
    """An error answer: status code and ``{"message": ...}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass(frozen=True)
class Obj:
    data: bytes
    checksum: str
    mtime: int
    physical_address: str
    content_type: str
    metadata: dict[str, str]

    def stats(self, path: str) -> dict:
        return {
            "path": path,
            "path_type": "object",
            "physical_address": self.physical_address,
            "checksum": self.checksum,
            "size_bytes": len(self.data),
            "mtime": self.mtime,
            "metadata": self.metadata,
            "content_type": self.content_type,
        }


@dataclass
class CommitRec:
    id: str
    parents: list[str]
    message: str
    metadata: dict[str, str]
    creation_date: int
    tree: dict[str, Obj]
    seq: int

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "parents": self.parents,
            "committer": "standin-admin",
            "message": self.message,
            "creation_date": self.creation_date,
            "meta_range_id": _meta_range_id(self.tree),
            "metadata": self.metadata,
            "generation": self.seq,
            "version": 1,
        }


@dataclass
class BranchRec:
    commit_id: str
    staging: dict[str, Obj | None] = field(default_factory=dict)  # None marks a staged delete
    hidden: bool = False


@dataclass
class RepoRec:
    name: str
    namespace: str
    default_branch: str
    creation_date: int
    commits: dict[str, CommitRec] = field(default_factory=dict)
    branches: dict[str, BranchRec] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "id": self.name,
            "creation_date": self.creation_date,
            "default_branch": self.default_branch,
            "storage_namespace": self.namespace,
            "storage_id": "",
            "read_only": False,
        }


def _valid_tag(name: str) -> bool:
    """lakeFS checks tag ids like git-check-ref-format (``v1.0`` is fine), unlike branch ids."""
    bad_end = name.endswith((".", ".lock", "/"))
    bad_part = any(part in name for part in ("..", "//", "@{")) or any(c in name for c in "^:?*[\\ ")
    return bool(name) and name != "@" and not bad_end and not bad_part and name.isprintable()


def _meta_range_id(tree: dict[str, Obj]) -> str:
    digest = hashlib.sha256()
    for path in sorted(tree):
        digest.update(f"{path}\0{tree[path].checksum}\n".encode())
    return digest.hexdigest()


def _paginate(items: list, key: Callable, query: dict) -> dict:
    """lakeFS pagination: items after ``after`` (by key), at most ``amount`` (default 100, max 1000)."""
    after = query.get("after", "")
    amount = int(query.get("amount", 100))
    amount = 1000 if amount < 0 or amount > 1000 else amount
    rest = [item for item in items if key(item) > after] if after else items
    page = rest[:amount]
    has_more = len(rest) > amount
    return {
        "pagination": {
            "has_more": has_more,
            "next_offset": key(page[-1]) if has_more else "",
            "results": len(page),
            "max_per_page": 1000,
        },
        "results": page,
    }


class LakeFSState:
    """Repositories, commits, branches, tags and staging areas; one lock serialises every change."""

    def __init__(self) -> None:
        self.repos: dict[str, RepoRec] = {}
        self.lock = threading.RLock()
        self.seq = 0

    # -- lookups ---------------------------------------------------------------------------------------------------
    def repo(self, name: str) -> RepoRec:
        if name not in self.repos:
            raise ApiError(404, f"repository not found: {name}")
        return self.repos[name]

    def branch(self, repo: RepoRec, name: str) -> BranchRec:
        if name not in repo.branches:
            raise ApiError(404, f"branch not found: {name}")
        return repo.branches[name]

    def commit_of(self, repo: RepoRec, ref: str) -> CommitRec:
        if ref in repo.branches:
            return repo.commits[repo.branches[ref].commit_id]
        if ref in repo.tags:
            return repo.commits[repo.tags[ref]]
        if ref in repo.commits:
            return repo.commits[ref]
        raise ApiError(404, f"{ref}: not found")

    def read_tree(self, repo: RepoRec, ref: str) -> dict[str, Obj]:
        """Objects visible at ``ref``: a branch shows its staged changes over its head commit."""
        tree = dict(self.commit_of(repo, ref).tree)
        if ref in repo.branches:
            for path, obj in repo.branches[ref].staging.items():
                if obj is None:
                    tree.pop(path, None)
                else:
                    tree[path] = obj
        return tree

    # -- history ---------------------------------------------------------------------------------------------------
    def new_commit(self, repo: RepoRec, parents: list[str], message: str, metadata: dict, tree: dict) -> CommitRec:
        self.seq += 1
        seed = json.dumps([repo.name, parents, message, metadata, _meta_range_id(tree), self.seq, uuid.uuid4().hex])
        rec = CommitRec(
            hashlib.sha256(seed.encode()).hexdigest(),
            parents,
            message,
            dict(metadata or {}),
            int(time.time()),
            tree,
            self.seq,
        )
        repo.commits[rec.id] = rec
        return rec

    def history(self, repo: RepoRec, start: str) -> list[CommitRec]:
        """Commits reachable from ``start``, newest first."""
        seen, out = {start}, []
        heap = [(-repo.commits[start].seq, start)]
        while heap:
            _, cid = heapq.heappop(heap)
            rec = repo.commits[cid]
            out.append(rec)
            for parent in rec.parents:
                if parent not in seen:
                    seen.add(parent)
                    heapq.heappush(heap, (-repo.commits[parent].seq, parent))
        return out

    def merge_base(self, repo: RepoRec, left: str, right: str) -> CommitRec | None:
        ancestors = {rec.id for rec in self.history(repo, left)}
        return next((rec for rec in self.history(repo, right) if rec.id in ancestors), None)


def diff_trees(left: dict[str, Obj], right: dict[str, Obj], prefix: str = "") -> list[dict]:
    out = []
    for path in sorted(set(left) | set(right)):
        if not path.startswith(prefix):
            continue
        a, b = left.get(path), right.get(path)
        if a is None:
            kind, size = "added", len(b.data)
        elif b is None:
            kind, size = "removed", len(a.data)
        elif a.checksum != b.checksum:
            kind, size = "changed", len(b.data)
        else:
            continue
        out.append({"type": kind, "path": path, "path_type": "object", "size_bytes": size})
    return out


def three_way(base: dict, source: dict, dest: dict, strategy: str | None) -> tuple[dict, list[str]]:
    """Merged tree and conflicting paths: a path conflicts when both sides changed it differently since the base."""
    merged, conflicts = {}, []
    for path in sorted(set(base) | set(source) | set(dest)):
        b, s, d = (_sum(t.get(path)) for t in (base, source, dest))
        if s == b or s == d:
            pick = dest
        elif d == b or strategy == "source-wins":
            pick = source
        elif strategy == "dest-wins":
            pick = dest
        else:
            conflicts.append(path)
            continue
        if path in pick:
            merged[path] = pick[path]
    return merged, conflicts


def _sum(obj: Obj | None) -> str | None:
    return None if obj is None else obj.checksum


class Handlers:
    """One method per endpoint; each takes (match groups, query, request) and returns (status, body, headers)."""

    def __init__(self, state: LakeFSState):
        self.s = state

    # -- config and repositories -----------------------------------------------------------------------------------
    def get_config(self, _g, _q, _r):
        storage = {
            "blockstore_type": "local",
            "blockstore_id": "",
            "blockstore_namespace_example": "local://example-bucket/",
            "blockstore_namespace_ValidityRegex": "^local://",
            "default_namespace_prefix": "local://",
            "pre_sign_support": False,
            "pre_sign_support_ui": False,
            "import_support": False,
            "import_validity_regex": "^local://",
        }
        return 200, {"version_config": {"version": "1.60.0"}, "storage_config": storage}

    def list_repos(self, _g, q, _r):
        repos = [r.to_json() for r in sorted(self.s.repos.values(), key=lambda r: r.name)]
        repos = [r for r in repos if r["id"].startswith(q.get("prefix", ""))]
        return 200, _paginate(repos, lambda r: r["id"], q)

    def create_repo(self, _g, _q, req):
        body = req.json()
        name, namespace = body.get("name", ""), body.get("storage_namespace", "")
        if not _REPO_NAME.match(name):
            raise ApiError(400, f"invalid repository name {name!r}: must match {_REPO_NAME.pattern}")
        if not _NAMESPACE.match(namespace):
            raise ApiError(400, f"invalid storage namespace {namespace!r}")
        if name in self.s.repos:
            raise ApiError(409, "repository already exists")
        if any(r.namespace == namespace for r in self.s.repos.values()):
            raise ApiError(400, f"failed to create repository: storage namespace already in use: {namespace}")
        default = body.get("default_branch") or "main"
        repo = RepoRec(name, namespace, default, int(time.time()))
        first = self.s.new_commit(repo, [], "Repository created", {}, {})
        repo.branches[default] = BranchRec(first.id)
        self.s.repos[name] = repo
        return 201, repo.to_json()

    def get_repo(self, g, _q, _r):
        return 200, self.s.repo(g[0]).to_json()

    def delete_repo(self, g, _q, _r):
        self.s.repo(g[0])
        del self.s.repos[g[0]]
        return 204, None

    # -- branches and tags -----------------------------------------------------------------------------------------
    def list_branches(self, g, q, _r):
        repo = self.s.repo(g[0])
        show_hidden = q.get("show_hidden", "").lower() == "true"
        refs = [
            {"id": name, "commit_id": b.commit_id}
            for name, b in sorted(repo.branches.items())
            if name.startswith(q.get("prefix", "")) and (show_hidden or not b.hidden)
        ]
        return 200, _paginate(refs, lambda r: r["id"], q)

    def create_branch(self, g, _q, req):
        repo, body = self.s.repo(g[0]), req.json()
        name = body.get("name", "")
        if not _BRANCH_NAME.match(name):
            raise ApiError(400, f"invalid branch name {name!r}")
        if name in repo.branches:
            raise ApiError(409, "branch already exists")
        source = self.s.commit_of(repo, body.get("source", ""))
        repo.branches[name] = BranchRec(source.id, hidden=bool(body.get("hidden")))
        return 201, source.id  # lakeFS answers with the commit id as text

    def get_branch(self, g, _q, _r):
        repo = self.s.repo(g[0])
        return 200, {"id": g[1], "commit_id": self.s.branch(repo, g[1]).commit_id}

    def delete_branch(self, g, _q, _r):
        repo = self.s.repo(g[0])
        self.s.branch(repo, g[1])
        if g[1] == repo.default_branch:
            raise ApiError(400, "cannot delete the repository's default branch")
        del repo.branches[g[1]]
        return 204, None

    def diff_branch(self, g, q, _r):
        repo = self.s.repo(g[0])
        branch = self.s.branch(repo, g[1])
        head = repo.commits[branch.commit_id].tree
        changes = diff_trees(head, self.s.read_tree(repo, g[1]), q.get("prefix", ""))
        return 200, _paginate(changes, lambda c: c["path"], q)

    def list_tags(self, g, q, _r):
        repo = self.s.repo(g[0])
        refs = [{"id": t, "commit_id": c} for t, c in sorted(repo.tags.items()) if t.startswith(q.get("prefix", ""))]
        return 200, _paginate(refs, lambda r: r["id"], q)

    def create_tag(self, g, _q, req):
        repo, body = self.s.repo(g[0]), req.json()
        name = body.get("id", "")
        if not _valid_tag(name):
            raise ApiError(400, f"invalid tag name {name!r}")
        if name in repo.tags:
            raise ApiError(409, "tag already exists")
        repo.tags[name] = self.s.commit_of(repo, body.get("ref", "")).id
        return 201, {"id": name, "commit_id": repo.tags[name]}

    # -- commits, log, diff, merge ---------------------------------------------------------------------------------
    def commit(self, g, _q, req):
        repo, body = self.s.repo(g[0]), req.json()
        branch = self.s.branch(repo, g[1])
        if not branch.staging and not body.get("allow_empty"):
            raise ApiError(400, "commit: no changes")
        tree = self.s.read_tree(repo, g[1])
        rec = self.s.new_commit(repo, [branch.commit_id], body.get("message", ""), body.get("metadata") or {}, tree)
        branch.commit_id, branch.staging = rec.id, {}
        return 201, rec.to_json()

    def get_commit(self, g, _q, _r):
        return 200, self.s.commit_of(self.s.repo(g[0]), g[1]).to_json()

    def log(self, g, q, _r):
        repo = self.s.repo(g[0])
        commits = [c.to_json() for c in self.s.history(repo, self.s.commit_of(repo, g[1]).id)]
        after, amount = q.get("after", ""), int(q.get("amount", 100))
        amount = 1000 if amount < 0 or amount > 1000 else amount
        start = next((i + 1 for i, c in enumerate(commits) if c["id"] == after), 0) if after else 0
        page = commits[start : start + amount]
        has_more = start + amount < len(commits)
        pagination = {
            "has_more": has_more,
            "next_offset": page[-1]["id"] if has_more else "",
            "results": len(page),
            "max_per_page": 1000,
        }
        return 200, {"pagination": pagination, "results": page}

    def diff_refs(self, g, q, _r):
        repo = self.s.repo(g[0])
        left, right = self.s.commit_of(repo, g[1]), self.s.commit_of(repo, g[2])
        if q.get("type", "three_dot") == "three_dot":
            left = self.s.merge_base(repo, left.id, right.id) or left
        changes = diff_trees(left.tree, right.tree, q.get("prefix", ""))
        return 200, _paginate(changes, lambda c: c["path"], q)

    def find_merge_base(self, g, _q, _r):
        repo = self.s.repo(g[0])
        source, dest = self.s.commit_of(repo, g[1]), repo.commits[self.s.branch(repo, g[2]).commit_id]
        base = self.s.merge_base(repo, source.id, dest.id)
        if base is None:
            raise ApiError(404, "no merge base found")
        return 200, {"source_commit_id": source.id, "destination_commit_id": dest.id, "base_commit_id": base.id}

    def merge(self, g, _q, req):
        repo, body = self.s.repo(g[0]), req.json(default={})
        dest_branch = self.s.branch(repo, g[2])
        source, dest = self.s.commit_of(repo, g[1]), repo.commits[dest_branch.commit_id]
        base = self.s.merge_base(repo, source.id, dest.id)
        merged, conflicts = three_way(base.tree if base else {}, source.tree, dest.tree, body.get("strategy"))
        if conflicts:
            raise ApiError(409, "conflict found")
        if _meta_range_id(merged) == _meta_range_id(dest.tree) and not (body.get("allow_empty") or body.get("force")):
            raise ApiError(400, "no changes")
        parents = [dest.id] if body.get("squash_merge") else [dest.id, source.id]
        message = body.get("message") or f"Merge '{g[1]}' into '{g[2]}'"
        rec = self.s.new_commit(repo, parents, message, body.get("metadata") or {}, merged)
        dest_branch.commit_id = rec.id
        summary = {k: 0 for k in ("added", "removed", "changed", "conflict")}
        for change in diff_trees(dest.tree, merged):
            summary[change["type"]] += 1
        return 200, {"reference": rec.id, "summary": summary}

    # -- objects ---------------------------------------------------------------------------------------------------
    def list_objects(self, g, q, _r):
        repo = self.s.repo(g[0])
        tree = self.s.read_tree(repo, g[1])
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        entries: dict[str, dict] = {}
        for path in sorted(p for p in tree if p.startswith(prefix)):
            cut = path.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = path[: cut + len(delimiter)]
                entries[common] = {
                    "path": common,
                    "path_type": "common_prefix",
                    "physical_address": "",
                    "checksum": "",
                    "mtime": 0,
                }
            else:
                entries[path] = tree[path].stats(path)
        return 200, _paginate([entries[k] for k in sorted(entries)], lambda e: e["path"], q)

    def _object(self, g, q) -> tuple[str, Obj]:
        repo = self.s.repo(g[0])
        path = q.get("path", "")
        obj = self.s.read_tree(repo, g[1]).get(path)
        if obj is None:
            raise ApiError(404, f"object not found: {path}")
        return path, obj

    def stat_object(self, g, q, _r):
        path, obj = self._object(g, q)
        return 200, obj.stats(path)

    def head_object(self, g, q, _r):
        _, obj = self._object(g, q)
        return 200, b"", {"Content-Length": str(len(obj.data)), "ETag": f'"{obj.checksum}"'}

    def get_object(self, g, q, req):
        _, obj = self._object(g, q)
        headers = {"Content-Type": obj.content_type, "ETag": f'"{obj.checksum}"', "Accept-Ranges": "bytes"}
        ranged = re.match(r"bytes=(\d*)-(\d*)$", req.headers.get("Range", ""))
        if not ranged:
            return 200, obj.data, headers
        size = len(obj.data)
        start = int(ranged[1]) if ranged[1] else max(size - int(ranged[2]), 0)
        end = min(int(ranged[2]), size - 1) if ranged[1] and ranged[2] else size - 1
        if start >= size:
            raise ApiError(416, "Requested Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return 206, obj.data[start : end + 1], headers

    def upload_object(self, g, q, req):
        repo = self.s.repo(g[0])
        branch = self.s.branch(repo, g[1])
        path = q.get("path", "")
        if not path:
            raise ApiError(400, "missing path")
        if req.headers.get("If-None-Match") == "*" and path in self.s.read_tree(repo, g[1]):
            raise ApiError(412, "Precondition failed")
        data = req.body()
        metadata = {
            k[len("x-lakefs-meta-") :]: v for k, v in req.headers.items() if k.lower().startswith("x-lakefs-meta-")
        }
        obj = Obj(
            data,
            hashlib.md5(data).hexdigest(),
            int(time.time()),
            f"{repo.namespace.rstrip('/')}/data/{uuid.uuid4().hex}",
            req.headers.get("Content-Type") or "application/octet-stream",
            metadata,
        )
        branch.staging[path] = obj
        return 201, obj.stats(path)

    def delete_object(self, g, q, _r):
        repo = self.s.repo(g[0])
        branch = self.s.branch(repo, g[1])
        path = q.get("path", "")
        if path not in self.s.read_tree(repo, g[1]):
            raise ApiError(404, f"object not found: {path}")
        branch.staging[path] = None
        return 204, None

    def delete_objects(self, g, _q, req):
        repo = self.s.repo(g[0])
        branch = self.s.branch(repo, g[1])
        tree = self.s.read_tree(repo, g[1])
        for path in req.json().get("paths", []):
            if path in tree:  # lakeFS ignores missing paths in a bulk delete
                branch.staging[path] = None
        return 200, {"errors": []}


_SEG = r"([^/]+)"
_ROUTES: list[tuple[str, str, str]] = [
    ("GET", r"/config", "get_config"),
    ("GET", r"/repositories", "list_repos"),
    ("POST", r"/repositories", "create_repo"),
    ("GET", rf"/repositories/{_SEG}", "get_repo"),
    ("DELETE", rf"/repositories/{_SEG}", "delete_repo"),
    ("GET", rf"/repositories/{_SEG}/branches", "list_branches"),
    ("POST", rf"/repositories/{_SEG}/branches", "create_branch"),
    ("GET", rf"/repositories/{_SEG}/branches/{_SEG}", "get_branch"),
    ("DELETE", rf"/repositories/{_SEG}/branches/{_SEG}", "delete_branch"),
    ("GET", rf"/repositories/{_SEG}/branches/{_SEG}/diff", "diff_branch"),
    ("POST", rf"/repositories/{_SEG}/branches/{_SEG}/commits", "commit"),
    ("POST", rf"/repositories/{_SEG}/branches/{_SEG}/objects", "upload_object"),
    ("DELETE", rf"/repositories/{_SEG}/branches/{_SEG}/objects", "delete_object"),
    ("POST", rf"/repositories/{_SEG}/branches/{_SEG}/objects/delete", "delete_objects"),
    ("GET", rf"/repositories/{_SEG}/tags", "list_tags"),
    ("POST", rf"/repositories/{_SEG}/tags", "create_tag"),
    ("GET", rf"/repositories/{_SEG}/commits/{_SEG}", "get_commit"),
    ("GET", rf"/repositories/{_SEG}/refs/{_SEG}/commits", "log"),
    ("GET", rf"/repositories/{_SEG}/refs/{_SEG}/diff/{_SEG}", "diff_refs"),
    ("GET", rf"/repositories/{_SEG}/refs/{_SEG}/merge/{_SEG}", "find_merge_base"),
    ("POST", rf"/repositories/{_SEG}/refs/{_SEG}/merge/{_SEG}", "merge"),
    ("GET", rf"/repositories/{_SEG}/refs/{_SEG}/objects/ls", "list_objects"),
    ("GET", rf"/repositories/{_SEG}/refs/{_SEG}/objects/stat", "stat_object"),
    ("GET", rf"/repositories/{_SEG}/refs/{_SEG}/objects", "get_object"),
    ("HEAD", rf"/repositories/{_SEG}/refs/{_SEG}/objects", "head_object"),
]
_COMPILED = [(method, re.compile(f"^/api/v1{pattern}$"), name) for method, pattern, name in _ROUTES]


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as urllib3's pool expects
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - silence per-request logging
        pass

    def body(self) -> bytes:
        if self._body is None:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self._body = self._read_chunked()
            else:
                self._body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return self._body

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def json(self, default: dict | None = None) -> dict:
        raw = self.body()
        if not raw:
            return default if default is not None else {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"invalid JSON body: {exc}") from exc

    def _dispatch(self, method: str) -> None:
        self._body: bytes | None = None  # one handler serves every request of a keep-alive connection
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            self._check_auth()
            for route_method, pattern, name in _COMPILED:
                match = pattern.match(url.path)
                if match and route_method == method:
                    groups = [unquote(x) for x in match.groups()]
                    with self.server.state.lock:
                        result = getattr(self.server.handlers, name)(groups, query, self)
                    self._send(*result)
                    return
            raise ApiError(404, f"no such endpoint in the stand-in: {method} {url.path}")
        except ApiError as err:
            self.body()  # drain the request so that the connection stays usable
            self._send(err.status, {"message": err.message}, err.headers)

    def _check_auth(self) -> None:
        expected = base64.b64encode(f"{self.server.key}:{self.server.secret}".encode()).decode()
        if self.headers.get("Authorization", "") != f"Basic {expected}":
            raise ApiError(401, "error authenticating request")

    def _send(self, status: int, body, headers: dict[str, str] | None = None) -> None:
        headers = dict(headers or {})
        if isinstance(body, (bytes, bytearray)):
            payload = bytes(body)
        elif isinstance(body, str):
            payload = body.encode()
            headers.setdefault("Content-Type", "text/html")
        elif body is None:
            payload = b""
        else:
            payload = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def do_GET(self):  # noqa: N802 - http.server naming
        self._dispatch("GET")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self):  # noqa: N802
        self._dispatch("DELETE")

    def do_HEAD(self):  # noqa: N802
        self._dispatch("HEAD")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, key: str, secret: str):
        super().__init__(("127.0.0.1", 0), _RequestHandler)
        self.key, self.secret = key, secret
        self.state = LakeFSState()
        self.handlers = Handlers(self.state)


@dataclass
class StandIn:
    """A running stand-in: where it listens and the key pair it accepts."""

    endpoint: str
    access_key_id: str
    secret_access_key: str
    server: _Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@contextlib.contextmanager
def running_standin() -> Iterator[StandIn]:
    """Starts a stand-in on a free loopback port for the duration of the block.

    Example:
        >>> with running_standin() as lakefs:
        ...     store = LakeFSStore(lakefs.endpoint, lakefs.access_key_id, lakefs.secret_access_key)
    """
    key, secret = "AKIASTANDIN" + uuid.uuid4().hex[:8].upper(), uuid.uuid4().hex
    server = _Server(key, secret)
    thread = threading.Thread(target=server.serve_forever, name="lakefs-standin", daemon=True)
    thread.start()
    standin = StandIn(f"http://127.0.0.1:{server.server_address[1]}", key, secret, server, thread)
    try:
        yield standin
    finally:
        standin.stop()


def upload_hook() -> tuple[type, str]:
    """The class and method that upload one file for ``LakeFSStore.commit_files``, for tests that inject failures."""
    from lakefs_spec import LakeFSFileSystem

    return LakeFSFileSystem, "put_file"
