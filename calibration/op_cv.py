"""Shape-held-out cross-validation of an op form: the error a kernel op makes on a shape
its table does not have, which is how a new model is priced (``stats["cv"]`` of every
profile op, ``comem calibrate cv``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from calibration.opmodels import Features, OpForm, error_stats, fit_form, predict

#: Feature columns whose combination is one measured *shape* per op form: cross-validation
#: holds whole shapes out (a GEMM's weight, a MoE model's experts, an attention's heads),
#: so its error is that of a shape the tables do not have, which is how models are priced.
SHAPE_KEYS: dict[str, tuple[str, ...]] = {
    "gemm": ("n", "k"),
    "moe": ("hidden", "inter", "experts", "top_k"),
    "context_attention": ("nq", "nkv", "hd"),
    "generation_attention": ("nq", "nkv", "hd"),
    "allreduce": ("bytes",),
}
CV_FOLDS = 5


def shape_folds(form: OpForm, features: Features, folds: int = CV_FOLDS) -> np.ndarray:
    """Fold of every row: its shape's rank among the distinct shapes, modulo ``folds``
    (rows one by one when there are fewer shapes than folds)."""
    keys = np.stack([features[k] for k in SHAPE_KEYS[form.name]], axis=1)
    _, shape_id = np.unique(keys, axis=0, return_inverse=True)
    shape_id = np.asarray(shape_id).reshape(-1)
    if shape_id.max() + 1 < folds:
        shape_id = np.arange(len(shape_id))
    return np.asarray(shape_id % folds)


def cross_validate(
    form: OpForm, features: Features, measured_s: np.ndarray, hw: dict[str, float]
) -> dict[str, Any]:
    """Out-of-fold error of the op model: fitted (roofline and lattice) on the other folds'
    shapes, evaluated on each held-out fold (:func:`shape_folds`)."""
    fold = shape_folds(form, features)
    pred = np.empty_like(measured_s)
    for k in np.unique(fold):
        test = fold == k
        train = {name: v[~test] for name, v in features.items()}
        fit = fit_form(form, train, measured_s[~test], hw)
        held = {name: v[test] for name, v in features.items()}
        pred[test] = predict(form, fit, held)
    stats: dict[str, Any] = error_stats(pred, measured_s)
    stats["folds"] = int(len(np.unique(fold)))
    stats["held_out"] = "whole shapes: " + ", ".join(SHAPE_KEYS[form.name])
    return stats
