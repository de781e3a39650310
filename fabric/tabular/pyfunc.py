"""The MLflow pyfunc of every tabular model (kept apart so training workers never import MLflow)."""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc

from fabric.tabular.models import load_model_dir, predict_frame

__all__ = ["TabularPyfunc"]


class TabularPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc over a folder written by :func:`save_model_dir` (artifact ``model_dir``)."""

    def load_context(self, context: Any) -> None:
        self.meta, self.model = load_model_dir(context.artifacts["model_dir"])

    # No type hints on predict: MLflow would try to derive a schema from them; the logged signature is the schema.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        return predict_frame(self.meta, self.model, model_input)
