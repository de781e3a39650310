"""Production traffic for the demo: patients' measurements sent to the served model, labels that arrive later,
and the shift that makes the model stale.

The rows are drawn from scikit-learn's breast cancer table (bootstrapped, with measurement noise of 10% of each
feature's spread), so the served model meets cases it has not seen. The shift is a documented, realistic one:

    A partner clinic starts sending scans from a new imaging device whose software is calibrated
    differently: it reports lengths 1.5x larger than the old device (radius and perimeter: mean, error and
    worst) and so areas 2.25x larger. Every other feature is unchanged. Biopsy results (the labels) arrive
    days later, after the predictions were served.

Example:
    >>> rows, labels = production_rows(frame, 300, seed=1, shifted=True)
    >>> ids = send(url, key, rows)            # POST /invocations, one patient per request
    >>> post_labels(url, key, ids, labels)    # POST /v2/models/NAME/labels, later
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["AREA_FACTOR", "LENGTH_FACTOR", "post_labels", "production_rows", "send", "shifted_columns"]

LENGTH_FACTOR = 1.5
AREA_FACTOR = LENGTH_FACTOR**2


def shifted_columns(features: list[str]) -> dict[str, float]:
    """The features the new device reports on another scale, and by which factor."""
    factors = {}
    for name in features:
        if "radius" in name or "perimeter" in name:
            factors[name] = LENGTH_FACTOR
        elif "area" in name:
            factors[name] = AREA_FACTOR
    return factors


def production_rows(frame: Any, n: int, seed: int, shifted: bool = False,
                    label: str = "label") -> tuple[Any, list[int]]:
    """``n`` new patients like those of ``frame`` (bootstrapped rows plus noise), from the new device when
    ``shifted``; returns their features and their true labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = frame.sample(n, replace=True, random_state=seed).reset_index(drop=True)
    features = rows.drop(columns=[label])
    noise = rng.normal(0.0, 0.1, features.shape) * frame.drop(columns=[label]).std().to_numpy()
    features = (features + noise).clip(lower=0.0)
    if shifted:
        for name, factor in shifted_columns(list(features.columns)).items():
            features[name] = features[name] * factor
    return features, rows[label].astype(int).tolist()


def send(url: str, key: str, rows: Any, model: str, prefix: str, concurrency: int = 8) -> list[str]:
    """Sends each row as one MLflow-protocol request to ``model``; returns the request ids, in row order."""
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    records = rows.to_dict(orient="records")

    def one(i: int) -> str:
        request_id = f"{prefix}-{i:05d}"
        response = session.post(f"{url}/models/{model}/invocations", json={"dataframe_records": [records[i]]},
                                headers={"x-request-id": request_id}, timeout=60)
        response.raise_for_status()
        return request_id

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(len(records))))


def post_labels(url: str, key: str, model: str, request_ids: list[str], labels: list[int]) -> int:
    """The late ground truth of earlier requests, in batches; returns how many labels were accepted."""
    import requests

    accepted = 0
    for start in range(0, len(request_ids), 200):
        batch = [{"request_id": r, "label": y} for r, y in zip(request_ids[start:start + 200],
                                                               labels[start:start + 200], strict=True)]
        response = requests.post(f"{url}/v2/models/{model}/labels", json={"labels": batch},
                                 headers={"Authorization": f"Bearer {key}"}, timeout=60)
        response.raise_for_status()
        accepted += response.json()["accepted"]
    return accepted
