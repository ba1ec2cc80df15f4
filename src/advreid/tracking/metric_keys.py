"""MLflow metric keys from nested metrics JSON, without importing MLflow.

The pipeline flow's summary of an up-to-date pipeline needs these names but no MLflow run, so they live
apart from :mod:`advreid.tracking.mlflow_run` (whose import costs seconds).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


def numeric_leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics mapping as flat MLflow keys (``prefix + "a.b.c"``).

    Strings and booleans (e.g. ``ap_convention``, ``validated``) are left out: they are params or tags.
    """
    flat: dict[str, float] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(numeric_leaves(value, f"{prefix}{key}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def metric_name(name: str) -> str:
    """``name`` with the characters MLflow rejects in metric names (``@`` of foreach stages, ...) as ``_``."""
    return re.sub(r"[^/\w.\- :]", "_", name)
