"""scikit-learn's bundled tables as fabric's tabular code expects them: the embedded demos' data.

Example:
    >>> frame = load_frame("breast_cancer")
    >>> frame.shape, frame.columns[0], frame["label"].dtype
    ((569, 31), 'mean_radius', dtype('int64'))
"""

from __future__ import annotations

from typing import Any

__all__ = ["DATASETS", "load_frame"]

DATASETS = ("breast_cancer", "wine", "iris", "digits")


def load_frame(dataset: str) -> Any:
    """The table with snake_case feature columns and an int ``label`` column."""
    import pandas as pd
    from sklearn import datasets

    if dataset not in DATASETS:
        raise ValueError(f"unknown scikit-learn table {dataset!r}; known: {', '.join(DATASETS)}")
    bunch = getattr(datasets, f"load_{dataset}")()
    names = [str(name).replace(" ", "_") for name in getattr(bunch, "feature_names", range(bunch.data.shape[1]))]
    frame = pd.DataFrame(bunch.data.astype("float64"), columns=names)
    frame["label"] = bunch.target.astype("int64")
    return frame
