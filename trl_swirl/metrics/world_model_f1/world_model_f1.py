# Copyright 2025 The trl-swirl developers. Licensed under the Apache License, Version 2.0.
"""SQuAD-style token F1 between generated and reference world-model outputs.

This file is an ``evaluate`` module: ``evaluate`` copies it on its own into a cache folder before importing it, so it
must stay self-contained (no imports from ``trl_swirl``).
"""

from collections import Counter

import datasets
import evaluate


_DESCRIPTION = """\
Token-level F1 for world models, as in SQuAD. Texts are normalised (stripped, whitespace runs collapsed) and split
on whitespace; tokens are compared as multisets. For one example, with common = the size of the multiset
intersection: precision = common / len(prediction tokens), recall = common / len(reference tokens),
f1 = 2 * precision * recall / (precision + recall) (0 when common is 0). When both texts are empty, precision,
recall and f1 are all 1.0; when exactly one is empty they are all 0.0. The returned values are means over examples.
Case and punctuation are not normalised.
"""

_CITATION = """\
@misc{swirl2026,
  title  = {SWIRL: self-improving world models with latent actions},
  note   = {arXiv:2602.06130},
  year   = {2026}
}
@inproceedings{rajpurkar2016squad,
  title     = {SQuAD: 100,000+ Questions for Machine Comprehension of Text},
  author    = {Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy},
  booktitle = {EMNLP},
  year      = {2016}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated outputs.
    references (`list` of `str`): reference outputs, one per prediction.
Returns:
    f1 (`float`): mean per-example token F1.
    precision (`float`): mean per-example token precision.
    recall (`float`): mean per-example token recall.
    All three are 0.0 when there are no examples.
Examples:
    >>> metric = evaluate.load("trl_swirl/metrics/world_model_f1/world_model_f1.py")
    >>> metric.compute(predictions=["a b c"], references=["a b d"])  # common=2 -> p=r=f1=2/3
    {'f1': 0.666..., 'precision': 0.666..., 'recall': 0.666...}
"""


def normalize(text):
    """Strip the text and collapse every run of whitespace into one space."""
    return " ".join(str(text).split())


def f1_precision_recall(prediction, reference):
    """(f1, precision, recall) of one prediction against one reference."""
    pred_tokens = normalize(prediction).split()
    ref_tokens = normalize(reference).split()
    if not pred_tokens and not ref_tokens:
        return 1.0, 1.0, 1.0
    if not pred_tokens or not ref_tokens:
        return 0.0, 0.0, 0.0
    common = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if common == 0:
        return 0.0, 0.0, 0.0
    precision = common / len(pred_tokens)
    recall = common / len(ref_tokens)
    return 2 * precision * recall / (precision + recall), precision, recall


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class WorldModelF1(evaluate.Metric):
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
            return {"f1": 0.0, "precision": 0.0, "recall": 0.0}
        scores = [f1_precision_recall(p, r) for p, r in zip(predictions, references)]
        n = len(scores)
        return {
            "f1": sum(s[0] for s in scores) / n,
            "precision": sum(s[1] for s in scores) / n,
            "recall": sum(s[2] for s in scores) / n,
        }
