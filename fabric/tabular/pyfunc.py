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

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        return predict_frame(self.meta, self.model, model_input)
