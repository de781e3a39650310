"""API keys with roles, kept only as SHA-256 hashes once read.

Keys come from ``FABRIC_API_KEYS`` (``KEY:ROLE[,KEY:ROLE...]``) and optionally a keys file of the same pairs, one
per line, where a key may be given already hashed as ``sha256:HEX:ROLE`` (so the file need not hold secrets).
Roles: ``predict`` (inference) and ``admin`` (rollouts, reloads, and inference).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from fabric.config import ConfigError

__all__ = ["ROLES", "KeyError_", "Keyring", "hash_key"]

ROLES = ("predict", "admin")
ENV = "FABRIC_API_KEYS"


class KeyError_(ConfigError):  # noqa: N801 - a ValueError about keys, not the builtin KeyError
    """A malformed key entry; the message says where it is (never the key itself)."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Keyring:
    """Hashed keys and their roles; :meth:`role` answers which role a presented key has (None: unknown)."""

    def __init__(self, hashed: dict[str, str] | None = None):
        self.hashed = dict(hashed or {})

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
        for where, entry in entries:
            entry = entry.strip()
            if entry.startswith("sha256:"):
                parts = entry.split(":")
                digest, role = (parts[1], parts[2]) if len(parts) == 3 else ("", "")
            else:
                key, _, role = entry.rpartition(":")
                digest = hash_key(key) if key else ""
            if not digest or role not in ROLES:
                raise KeyError_(f"{where} must be KEY:ROLE or sha256:HEX:ROLE with ROLE one of {', '.join(ROLES)} "
                                f"(the key itself is not shown)")
            hashed[digest] = role
        return cls(hashed)

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

    @staticmethod
    def allows(role: str | None, needed: str) -> bool:
        return role == "admin" or role == needed
