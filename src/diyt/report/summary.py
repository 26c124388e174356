"""The dataset summary: every category's headline metrics and their mean, as the dashboard and report read them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from diyt.eval.metrics import METRIC_KEYS


def summarize(per_category: Mapping[str, Mapping[str, float]], keys: Sequence[str] = METRIC_KEYS) -> dict:
    """{"categories": {category: {key: value}}, "mean": {key: mean over categories}}."""
    categories = {c: {k: float(m[k]) for k in keys} for c, m in per_category.items()}
    mean = {k: sum(m[k] for m in categories.values()) / len(categories) for k in keys}
    return {"categories": categories, "mean": mean}
