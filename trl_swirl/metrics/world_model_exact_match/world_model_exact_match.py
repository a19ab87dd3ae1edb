# Copyright 2025 The trl-swirl developers. Licensed under the Apache License, Version 2.0.
"""Exact match between generated and reference world-model outputs (states or actions).

This file is an ``evaluate`` module: ``evaluate`` copies it on its own into a cache folder before importing it, so it
must stay self-contained (no imports from ``trl_swirl``).
"""

import datasets
import evaluate


_DESCRIPTION = """\
Exact match for world models. Both the prediction and the reference are normalised (leading and trailing whitespace
stripped, every run of internal whitespace -- spaces, tabs, newlines -- collapsed to a single space) and compared for
equality. The score is the mean over examples, in [0, 1]. Case and punctuation are *not* normalised: in a text world
model, "Door open" and "door open." can be different states.
"""

_CITATION = """\
@misc{swirl2026,
  title  = {SWIRL: self-improving world models with latent actions},
  note   = {arXiv:2602.06130},
  year   = {2026}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated outputs (e.g. next states from a forward world model).
    references (`list` of `str`): reference outputs, one per prediction.
Returns:
    exact_match (`float`): fraction of examples whose normalised prediction equals the normalised reference
        (0.0 when there are no examples).
Examples:
    >>> metric = evaluate.load("trl_swirl/metrics/world_model_exact_match/world_model_exact_match.py")
    >>> metric.compute(predictions=["door  open ", "door open"], references=["door open", "door closed"])
    {'exact_match': 0.5}
"""


def normalize(text):
    """Strip the text and collapse every run of whitespace into one space."""
    return " ".join(str(text).split())


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class WorldModelExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references):
        if len(predictions) != len(references):
            raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
        if not predictions:
            return {"exact_match": 0.0}
        hits = sum(normalize(p) == normalize(r) for p, r in zip(predictions, references))
        return {"exact_match": hits / len(predictions)}
