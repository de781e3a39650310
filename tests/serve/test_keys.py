"""fabric/serve/keys.py: a malformed key entry is named by where it is, never shown, and stops `serve up` early."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fabric.config import ConfigError
from fabric.serve.keys import Keyring

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("env", "where"),
    [
        ("good-key:predict,secret-key-2:reader", "FABRIC_API_KEYS entry 2 of 2"),
        ("good-key:predict,,no-role-here", "FABRIC_API_KEYS entry 3 of 3"),
        ("sha256:abc", "FABRIC_API_KEYS entry 1 of 1"),
    ],
)
def test_bad_env_entry_is_named_without_its_key(env, where):
    with pytest.raises(ConfigError, match=where) as refused:
        Keyring.load(env=env)
    message = str(refused.value)
    assert "secret-key-2" not in message and "no-role-here" not in message
    assert "predict, label, admin" in message


def test_bad_keys_file_line_is_named(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# keys\nk1:admin\nk2:everything\n")
    with pytest.raises(ConfigError, match=f"auth.keys_file {keys} line 3"):
        Keyring.load(str(keys), env="")


def test_serve_up_with_a_malformed_fabric_api_keys_prints_one_line(cli_env):
    env = {**cli_env, "FABRIC_API_KEYS": "good-key:predict,secret-key-2"}
    out = subprocess.run([sys.executable, "-m", "fabric", "serve", "up", "configs/serve/tabular.yaml"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert out.returncode == 2
    assert out.stderr.splitlines()[0] == (
        "error: FABRIC_API_KEYS entry 2 of 2 must be KEY:ROLE[:NAME] or sha256:HEX:ROLE[:NAME] with ROLE one of "
        "predict, label, admin (the key itself is not shown)"
    )
    assert "Traceback" not in out.stderr and "secret-key-2" not in out.stderr


def test_a_key_is_named_by_its_name_or_its_hash_prefix_never_itself(tmp_path):
    from fabric.serve.keys import hash_key

    keys = tmp_path / "keys.txt"
    keys.write_text(f"sha256:{hash_key('filed-key')}:admin:release-bot\n")
    ring = Keyring.load(str(keys), env="alice-key:admin:alice,plain-key:predict,odd:key:predict")
    assert ring.role("alice-key") == "admin" and ring.name("alice-key") == "alice"
    assert ring.name("filed-key") == "release-bot" and ring.role("filed-key") == "admin"
    assert ring.name("plain-key") == f"predict-key:{hash_key('plain-key')[:8]}"
    assert ring.role("odd:key") == "predict"  # a key may hold colons; a name only follows a role
