"""Base class for the built-in textual environments.

An :class:`Environment` is a seeded, deterministic generator of *state-only*
trajectories whose true actions are kept apart for evaluation. States and
actions are short plain strings whose tokens are separated by single spaces, so
a word-level tokenizer sees clean words (``ball at 3 4 vel 1 0 | box at 5 0 vel 0 0``).

Contract shared by every environment:

* :meth:`Environment.initial_state` draws a start state from a ``random.Random``.
* :meth:`Environment.valid_actions` lists every action applicable in a state
  (finite, small, deterministic order).
* :meth:`Environment.apply` is the deterministic dynamics. It normalises the
  whitespace of the action (strip, collapse runs of spaces), raises
  :class:`InvalidAction` for an unparseable or inapplicable action and
  :class:`InvalidState` for a string that is not a state of this environment.
* :meth:`Environment.rollout` / :meth:`Environment.trajectories` produce
  ``{"states": [s0, ..., sL], "actions": [a0, ..., a_{L-1}]}`` dicts where
  ``states[i + 1] == apply(states[i], actions[i])``.
"""

from __future__ import annotations

import abc
import random


class InvalidAction(ValueError):
    """Raised by :meth:`Environment.apply` for an action that cannot be parsed or applied."""


class InvalidState(ValueError):
    """Raised when a string is not a state this environment can produce."""


def normalize_text(text: str) -> str:
    """Strip ``text`` and collapse every run of whitespace into one space."""
    if not isinstance(text, str):
        raise TypeError(f"expected a string, got {type(text).__name__}: {text!r}")
    return " ".join(text.split())


class Environment(abc.ABC):
    """A deterministic textual environment.

    Subclasses set :attr:`name` and implement :meth:`initial_state`,
    :meth:`valid_actions` and :meth:`apply`.
    """

    name: str = ""

    def __init__(self, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments: {sorted(kwargs)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ------------------------------------------------------------------ abstract API
    @abc.abstractmethod
    def initial_state(self, rng: random.Random) -> str:
        """Draw a start state using ``rng``."""

    @abc.abstractmethod
    def valid_actions(self, state: str) -> list[str]:
        """Every action applicable in ``state``, in a deterministic order."""

    @abc.abstractmethod
    def apply(self, state: str, action: str) -> str:
        """The next state after taking ``action`` in ``state`` (deterministic)."""

    # ------------------------------------------------------------------ helpers
    def sample_action(self, state: str, rng: random.Random) -> str:
        """Draw an action for ``state``; uniform over :meth:`valid_actions` by default."""
        return rng.choice(self.valid_actions(state))

    def rollout(self, length: int, rng: random.Random) -> dict:
        """One trajectory of ``length`` steps: ``{"states": [s0..sL], "actions": [a0..a_{L-1}]}``."""
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise ValueError(f"length must be an integer >= 0, got {length!r}")
        state = self.initial_state(rng)
        states, actions = [state], []
        for _ in range(length):
            action = self.sample_action(state, rng)
            state = self.apply(state, action)
            actions.append(action)
            states.append(state)
        return {"states": states, "actions": actions}

    def trajectories(self, num_trajectories: int, length: int, seed: int = 0) -> list[dict]:
        """``num_trajectories`` rollouts of ``length`` steps, fully determined by ``seed``."""
        if not isinstance(num_trajectories, int) or isinstance(num_trajectories, bool) or num_trajectories < 1:
            raise ValueError(f"num_trajectories must be an integer >= 1, got {num_trajectories!r}")
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise ValueError(f"length must be an integer >= 1 (steps per trajectory), got {length!r}")
        rng = random.Random(seed)
        return [self.rollout(length, rng) for _ in range(num_trajectories)]

    def is_consistent(self, state: str, action: str, next_state: str) -> bool:
        """Whether ``apply(state, action) == next_state`` (whitespace-normalised).

        Returns ``False`` (instead of raising) when the action is invalid or
        ``state`` is not a state of this environment.
        """
        try:
            predicted = self.apply(state, action)
        except (InvalidAction, InvalidState):
            return False
        if not isinstance(next_state, str):
            return False
        return predicted == normalize_text(next_state)

    def is_valid_state(self, state: str) -> bool:
        """Whether ``state`` parses as a state of this environment."""
        if not isinstance(state, str):
            return False
        try:
            self.valid_actions(state)
        except (InvalidState, InvalidAction):
            return False
        return True

    def equivalent_actions(self, state: str, action: str) -> list[str]:
        """The valid actions of ``state`` that lead to the same next state as ``action``.

        Useful to score an inverse-dynamics prediction: any action of this list is
        indistinguishable from ``action`` given only ``(state, next_state)``.
        """
        target = self.apply(state, action)
        return [a for a in self.valid_actions(state) if self.apply(state, a) == target]

    # ------------------------------------------------------------------ shared utils
    def _invalid(self, action: str, why: str) -> InvalidAction:
        return InvalidAction(f"invalid action {action!r} for the {self.name} environment: {why}")

    def _bad_state(self, state: str, why: str) -> InvalidState:
        return InvalidState(f"not a {self.name} state ({why}): {state!r}")
