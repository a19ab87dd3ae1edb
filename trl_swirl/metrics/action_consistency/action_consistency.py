# Copyright 2025 The trl-swirl developers. Licensed under the Apache License, Version 2.0.
"""Action consistency of an inverse dynamics model (IDM), checked by executing its actions in an environment.

This file is an ``evaluate`` module: ``evaluate`` copies it on its own into a cache folder before importing it, so it
must stay self-contained (no imports from ``trl_swirl``).
"""

import datasets
import evaluate


_DESCRIPTION = """\
Action consistency for inverse dynamics models. An IDM reads a transition (state, next_state) and infers the action
that caused it. The inferred action is *consistent* when executing it in the environment from the source state
reproduces the observed next state: normalise(environment.apply(state, action)) == normalise(next_state), where
normalise strips the text and collapses runs of whitespace to one space. The action is normalised the same way
before it is passed to `environment.apply`.

This rewards any action with the right effect, not only the literal reference action (several actions can have the
same effect). Actions that the environment rejects -- `apply` raises a `ValueError` (or a subclass) -- are invalid:
they are counted as inconsistent and reported in `invalid_rate`; they are never dropped from the denominator. Any
other exception from the environment is a bug and propagates.
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
    predictions (`list` of `str`): inferred actions, one per transition.
    references (`list` of `str`): observed next states, one per transition.
    states (`list` of `str`, required keyword): source states, one per transition.
    environment (required keyword): an object with `apply(state: str, action: str) -> str` that returns the next
        state and raises a `ValueError` (or subclass) for an invalid action.
Returns:
    consistency (`float`): fraction of transitions whose inferred action reproduces the observed next state.
    invalid_rate (`float`): fraction of transitions whose inferred action the environment rejected.
    Both are 0.0 when there are no examples.
Examples:
    >>> metric = evaluate.load("trl_swirl/metrics/action_consistency/action_consistency.py")
    >>> metric.compute(predictions=["inc", "jump"], references=["n 4", "n 4"], states=["n 3", "n 3"], environment=env)
    {'consistency': 0.5, 'invalid_rate': 0.5}
"""


def normalize(text):
    """Strip the text and collapse every run of whitespace into one space."""
    return " ".join(str(text).split())


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ActionConsistency(evaluate.Metric):
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

    def _compute(self, predictions, references, states=None, environment=None):
        if states is None:
            raise ValueError("action_consistency needs `states=` (the source state of every transition).")
        if environment is None or not callable(getattr(environment, "apply", None)):
            raise ValueError("action_consistency needs `environment=`, an object with `apply(state, action) -> str`.")
        states = list(states)
        if not len(predictions) == len(references) == len(states):
            raise ValueError(
                f"Got {len(predictions)} predictions, {len(references)} references and {len(states)} states; "
                "they must have the same length."
            )
        n = len(predictions)
        if n == 0:
            return {"consistency": 0.0, "invalid_rate": 0.0}
        consistent = invalid = 0
        for state, action, next_state in zip(states, predictions, references):
            try:
                result = environment.apply(state, normalize(action))
            except ValueError:
                invalid += 1
                continue
            consistent += normalize(result) == normalize(next_state)
        return {"consistency": consistent / n, "invalid_rate": invalid / n}
