"""Runnable jobs. Each module has a ``Config`` and a ``main(cfg)`` and runs as ``python -m workloads.NAME``."""

__all__: list[str] = []
