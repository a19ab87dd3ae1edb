# Copyright 2025 The trl-swirl developers. Licensed under the Apache License, Version 2.0.
"""WorldPrediction-style multiple-choice action selection, scored from per-candidate model scores.

This file is an ``evaluate`` module: ``evaluate`` copies it on its own into a cache folder before importing it, so it
must stay self-contained (no imports from ``trl_swirl``).
"""

import math

import datasets
import evaluate


_DESCRIPTION = """\
Multiple-choice action selection, as in WorldPrediction: for every question the model gives one score per candidate
(higher is better, e.g. the log-likelihood of the observed next state given the state and that candidate action),
and the reference is the index of the true candidate.

Ties are counted against the model (pessimistic): a question is answered correctly only when the true candidate's
score is strictly greater than every other candidate's score, i.e. it is the unique maximum. Likewise the rank of
the true candidate is 1 + the number of *other* candidates whose score is >= the true score (rank 1 = best), so a
model that gives every candidate the same score gets accuracy 0 and the worst rank, not a lucky first-index win.
NaN scores are treated as -inf. Questions may have different numbers of candidates.
"""

_CITATION = """\
@misc{swirl2026,
  title  = {SWIRL: self-improving world models with latent actions},
  note   = {arXiv:2602.06130},
  year   = {2026}
}
@misc{worldprediction2025,
  title  = {WorldPrediction: A Benchmark for High-level World Modeling and Long-horizon Procedural Planning},
  year   = {2025}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): per question, one score per candidate (higher = more likely).
    references (`list` of `int`): per question, the index of the true candidate.
Returns:
    accuracy (`float`): fraction of questions whose true candidate is the unique highest-scoring one.
    mean_rank (`float`): mean rank of the true candidate (1 = best; ties count against it).
    Both are 0.0 when there are no questions.
Examples:
    >>> metric = evaluate.load("trl_swirl/metrics/action_selection/action_selection.py")
    >>> metric.compute(predictions=[[-1.0, -3.0], [-2.0, -2.0]], references=[0, 0])
    {'accuracy': 0.5, 'mean_rank': 1.5}
"""


def _clean(score):
    score = float(score)
    return -math.inf if math.isnan(score) else score


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ActionSelection(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references):
        if len(predictions) != len(references):
            raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
        if not predictions:
            return {"accuracy": 0.0, "mean_rank": 0.0}
        correct = 0
        rank_total = 0
        for i, (scores, answer) in enumerate(zip(predictions, references)):
            scores = [_clean(s) for s in scores]
            answer = int(answer)
            if not 0 <= answer < len(scores):
                raise ValueError(
                    f"Question {i}: reference index {answer} is out of range for {len(scores)} candidate scores."
                )
            true_score = scores[answer]
            at_least_as_good = sum(1 for j, s in enumerate(scores) if j != answer and s >= true_score)
            correct += at_least_as_good == 0
            rank_total += 1 + at_least_as_good
        n = len(predictions)
        return {"accuracy": correct / n, "mean_rank": rank_total / n}
