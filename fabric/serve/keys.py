"""API keys with roles, kept only as SHA-256 hashes once read.

Keys come from ``FABRIC_API_KEYS`` (``KEY:ROLE[:NAME][,...]``) and optionally a keys file of the same entries, one
per line, where a key may be given already hashed as ``sha256:HEX:ROLE[:NAME]`` (so the file need not hold secrets).
Roles: ``predict`` (inference), ``label`` (late labels, logged groundedness scores; no inference) and ``admin``
(rollouts, reloads, and what the other roles may do). ``NAME`` is who the key belongs to,
the actor the audit trail records for what the key does; without one the name is ``ROLE-key:`` and the first 8 hex
digits of the key's SHA-256 (``admin-key:1a2b3c4d``), which identifies the key without revealing it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from fabric.config import ConfigError

__all__ = ["ROLES", "KeyError_", "Keyring", "hash_key"]

ROLES = ("predict", "label", "admin")
ENV = "FABRIC_API_KEYS"


class KeyError_(ConfigError):  # noqa: N801 - a ValueError about keys, not the builtin KeyError
    """A malformed key entry; the message says where it is (never the key itself)."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Keyring:
    """Hashed keys and their roles; :meth:`role` answers which role a presented key has (None: unknown)."""

    def __init__(self, hashed: dict[str, str] | None = None, names: dict[str, str] | None = None):
        self.hashed = dict(hashed or {})
        self.names = dict(names or {})  # digest -> the key's name, where one was given

    @classmethod
    def load(cls, keys_file: str | None = None, env: str | None = None) -> Keyring:
        listed = [e for e in (env if env is not None else os.environ.get(ENV, "")).split(",")]
        entries = [(f"{ENV} entry {n} of {len(listed)}", e) for n, e in enumerate(listed, 1) if e.strip()]
        if keys_file:
            path = Path(keys_file)
            if not path.is_file():
                raise KeyError_(f"auth.keys_file {keys_file} does not exist")
            entries += [(f"auth.keys_file {keys_file} line {n}", line)
                        for n, line in enumerate(path.read_text().splitlines(), 1)
                        if line.strip() and not line.startswith("#")]
        hashed: dict[str, str] = {}
        names: dict[str, str] = {}
        for where, entry in entries:
            digest, role, name = _parse(entry.strip())
            if not digest or role not in ROLES:
                raise KeyError_(f"{where} must be KEY:ROLE[:NAME] or sha256:HEX:ROLE[:NAME] with ROLE one of "
                                f"{', '.join(ROLES)} (the key itself is not shown)")
            hashed[digest] = role
            if name:
                names[digest] = name
        return cls(hashed, names)

    def __len__(self) -> int:
        return len(self.hashed)

    def role(self, presented: str | None) -> str | None:
        if not presented:
            return None
        digest = hash_key(presented)
        for known, role in self.hashed.items():
            if hmac.compare_digest(known, digest):
                return role
        return None

    def name(self, presented: str) -> str:
        """Who the key belongs to (its ``NAME``), else ``ROLE-key:`` and its hash's first 8 hex digits."""
        digest = hash_key(presented)
        return self.names.get(digest) or f"{self.hashed.get(digest, 'unknown')}-key:{digest[:8]}"

    @staticmethod
    def allows(role: str | None, needed: str) -> bool:
        """Whether a key of ``role`` may call what needs ``needed``: ``admin`` includes every role, the others only
        themselves."""
        return role == "admin" or role == needed


def _parse(entry: str) -> tuple[str, str, str]:
    """(digest, role, name) of one entry; a name is recognised when the part before it is a role."""
    parts = entry.split(":")
    if entry.startswith("sha256:"):
        if len(parts) in (3, 4):
            return parts[1], parts[2], parts[3] if len(parts) == 4 else ""
        return "", "", ""
    if len(parts) >= 3 and parts[-2] in ROLES and parts[-1] not in ROLES:
        key, role, name = entry.rsplit(":", 2)
    else:
        (key, _, role), name = entry.rpartition(":"), ""
    return (hash_key(key) if key else ""), role, name.strip()
