"""Registered fabric tabular models made in a second, without Ray: for serving and batch-inference tests."""

from __future__ import annotations

from fabric.tabular.sample import register_linear

__all__ = ["register_linear"]
