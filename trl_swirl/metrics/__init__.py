# Copyright 2025 The trl-swirl developers. Licensed under the Apache License, Version 2.0.
"""Offline ``evaluate`` modules for SWIRL world models.

Every metric lives in ``trl_swirl/metrics/<name>/<name>.py`` as a standard, self-contained ``evaluate.Metric`` module,
so it loads without the Hub: ``evaluate.load(metric_path(name))``, or simply ``load_metric(name)``.

    >>> from trl_swirl.metrics import load_metric
    >>> load_metric("world_model_f1").compute(predictions=["a b c"], references=["a b d"])["f1"]
    0.666...
"""

import os


METRIC_NAMES = ("world_model_exact_match", "world_model_f1", "action_consistency", "action_selection")

_HERE = os.path.dirname(os.path.abspath(__file__))


def metric_path(name: str) -> str:
    """Absolute path of the ``evaluate`` module file of the metric ``name``."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; valid names are: {', '.join(METRIC_NAMES)}.")
    return os.path.join(_HERE, name, f"{name}.py")


def load_metric(name: str, **kwargs):
    """``evaluate.load(metric_path(name), **kwargs)``: load one of the bundled metrics, offline."""
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)


__all__ = ["METRIC_NAMES", "metric_path", "load_metric"]
