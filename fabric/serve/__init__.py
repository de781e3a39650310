"""Serving registered models on Ray Serve: ``fabric serve up configs/serve/tabular.yaml``.

See :mod:`fabric.serve.app` for the deployments and :mod:`fabric.serve.protocols` for the wire formats.
"""
