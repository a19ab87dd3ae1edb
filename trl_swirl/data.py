"""Turn trajectories into ``datasets.Dataset`` transition tables.

Column conventions (shared by the trainers, the metrics and the loop):

* ``state`` (str): the state ``s_t`` as text.
* ``action`` (str): the true action ``a_t`` taken in ``s_t``. Present only in
  *labelled* and *test* data; unlabelled data never carries it, so true actions
  cannot leak into training on state-only data.
* ``next_state`` (str): the state ``s_{t+1}`` reached from ``s_t``.
* ``history`` (list[str], optional): up to ``max_history`` states before ``s_t``,
  oldest first (empty at step 0), for multi-turn world models.
* ``trajectory_id`` (int) and ``step`` (int): where the row comes from, so that
  splits can be made per trajectory.

A trajectory is a dict ``{"states": [s0, ..., sL], "actions": [a0, ..., a_{L-1}]}``
as produced by :meth:`trl_swirl.envs.Environment.trajectories`; state-only data is
a plain list of state sequences (:func:`transitions_from_sequences`).

:func:`make_splits` builds the ``labelled`` / ``unlabelled`` / ``test`` splits used
by SWIRL: split by trajectory, actions removed from ``unlabelled``, and training
rows whose ``(state, next_state)`` pair also occurs in ``test`` dropped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from typing import Any

from datasets import Dataset, DatasetDict, Features, List, Value

__all__ = [
    "check_no_overlap",
    "make_splits",
    "multiturn_from_trajectories",
    "remove_overlap",
    "transitions_from_sequences",
    "transitions_from_trajectories",
]


# ---------------------------------------------------------------------------- builders
def _check_trajectory(i: int, traj: Any, with_actions: bool) -> tuple[list[str], list[str] | None]:
    if not isinstance(traj, dict) or "states" not in traj:
        raise ValueError(
            f"trajectory {i} must be a dict with a 'states' list (and 'actions'), got {type(traj).__name__}"
        )
    states = traj["states"]
    if isinstance(states, str) or not isinstance(states, Sequence):
        raise ValueError(f"trajectory {i}: 'states' must be a list of strings, got {type(states).__name__}")
    for j, s in enumerate(states):
        if not isinstance(s, str):
            raise ValueError(f"trajectory {i}: state {j} must be a string, got {type(s).__name__}")
    actions = None
    if with_actions:
        if "actions" not in traj or traj["actions"] is None:
            raise ValueError(
                f"trajectory {i} has no 'actions'; pass with_actions=False for state-only data"
            )
        actions = traj["actions"]
        if isinstance(actions, str) or not isinstance(actions, Sequence) or len(actions) != max(len(states) - 1, 0):
            raise ValueError(
                f"trajectory {i}: expected {max(len(states) - 1, 0)} actions for {len(states)} states, "
                f"got {len(actions) if isinstance(actions, Sequence) else type(actions).__name__}"
            )
        for j, a in enumerate(actions):
            if not isinstance(a, str):
                raise ValueError(f"trajectory {i}: action {j} must be a string, got {type(a).__name__}")
    return list(states), (list(actions) if actions is not None else None)


def _build(
    trajectories: Iterable[dict],
    *,
    with_actions: bool,
    max_history: int | None,
    state_column: str,
    action_column: str,
    next_state_column: str,
    history_column: str,
    trajectory_ids: Sequence[int] | None,
) -> Dataset:
    trajectories = list(trajectories)
    if trajectory_ids is not None and len(trajectory_ids) != len(trajectories):
        raise ValueError(
            f"trajectory_ids has {len(trajectory_ids)} entries for {len(trajectories)} trajectories; "
            "give one id per trajectory"
        )
    bad_history = not isinstance(max_history, int) or isinstance(max_history, bool) or max_history < 0
    if max_history is not None and bad_history:
        raise ValueError(f"max_history must be an integer >= 0, got {max_history!r}")
    names = [state_column, next_state_column, "trajectory_id", "step"]
    if with_actions:
        names.append(action_column)
    if max_history is not None:
        names.append(history_column)
    if len(set(names)) != len(names):
        raise ValueError(f"column names must be distinct, got {names}")

    columns: dict[str, list] = {state_column: []}
    features: dict[str, Any] = {state_column: Value("string")}
    if with_actions:
        columns[action_column] = []
        features[action_column] = Value("string")
    columns[next_state_column] = []
    features[next_state_column] = Value("string")
    if max_history is not None:
        columns[history_column] = []
        features[history_column] = List(Value("string"))
    columns["trajectory_id"] = []
    columns["step"] = []
    features["trajectory_id"] = Value("int64")
    features["step"] = Value("int64")

    for i, traj in enumerate(trajectories):
        states, actions = _check_trajectory(i, traj, with_actions)
        tid = int(trajectory_ids[i]) if trajectory_ids is not None else i
        for t in range(len(states) - 1):
            columns[state_column].append(states[t])
            columns[next_state_column].append(states[t + 1])
            if with_actions:
                columns[action_column].append(actions[t])
            if max_history is not None:
                columns[history_column].append(states[max(0, t - max_history) : t])
            columns["trajectory_id"].append(tid)
            columns["step"].append(t)
    return Dataset.from_dict(columns, features=Features(features))


def transitions_from_trajectories(
    trajectories: Iterable[dict],
    *,
    with_actions: bool = True,
    state_column: str = "state",
    action_column: str = "action",
    next_state_column: str = "next_state",
    trajectory_ids: Sequence[int] | None = None,
) -> Dataset:
    """One row per transition ``(s_t, s_{t+1})`` of every trajectory.

    Columns: ``state``, ``action`` (only if ``with_actions``), ``next_state``,
    ``trajectory_id`` (the trajectory's index, or ``trajectory_ids[i]``) and ``step`` (``t``).
    """
    return _build(
        trajectories,
        with_actions=with_actions,
        max_history=None,
        state_column=state_column,
        action_column=action_column,
        next_state_column=next_state_column,
        history_column="history",
        trajectory_ids=trajectory_ids,
    )


def multiturn_from_trajectories(
    trajectories: Iterable[dict],
    *,
    max_history: int = 3,
    with_actions: bool = True,
    state_column: str = "state",
    action_column: str = "action",
    next_state_column: str = "next_state",
    history_column: str = "history",
    trajectory_ids: Sequence[int] | None = None,
) -> Dataset:
    """Like :func:`transitions_from_trajectories` plus a ``history`` column.

    ``history`` holds up to ``max_history`` states before ``state``, oldest first
    (``states[max(0, t - max_history):t]``), and is empty at step 0.
    """
    return _build(
        trajectories,
        with_actions=with_actions,
        max_history=max_history,
        state_column=state_column,
        action_column=action_column,
        next_state_column=next_state_column,
        history_column=history_column,
        trajectory_ids=trajectory_ids,
    )


def transitions_from_sequences(
    sequences: Iterable[Sequence[str]],
    *,
    max_history: int | None = None,
    state_column: str = "state",
    next_state_column: str = "next_state",
    history_column: str = "history",
) -> Dataset:
    """State-only transitions from your own data: a list of state sequences, no actions.

    Each sequence ``[s0, s1, ..., sL]`` gives rows ``(s_t, s_{t+1})`` with columns
    ``state``, ``next_state``, ``trajectory_id``, ``step`` (and ``history`` when
    ``max_history`` is an integer).
    """
    sequences = list(sequences)
    trajectories = []
    for i, seq in enumerate(sequences):
        if isinstance(seq, str) or not isinstance(seq, Sequence):
            raise ValueError(
                f"sequence {i} must be a list of state strings, got {type(seq).__name__}; "
                "pass a list of sequences, e.g. [['s0', 's1', 's2']]"
            )
        trajectories.append({"states": list(seq)})
    return _build(
        trajectories,
        with_actions=False,
        max_history=max_history,
        state_column=state_column,
        action_column="action",
        next_state_column=next_state_column,
        history_column=history_column,
        trajectory_ids=None,
    )


# ---------------------------------------------------------------------------- overlap
def _keys(dataset: Dataset, columns: Sequence[str], role: str) -> list[tuple]:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"the {role} dataset has no column(s) {missing}; its columns are {dataset.column_names}")
    data = [dataset[c] for c in columns]
    return [tuple(tuple(v) if isinstance(v, list) else v for v in row) for row in zip(*data)]


def remove_overlap(train: Dataset, test: Dataset, columns: Sequence[str] = ("state", "next_state")) -> Dataset:
    """``train`` without the rows whose ``columns`` values also occur in a row of ``test``."""
    columns = list(columns)
    test_keys = set(_keys(test, columns, "test"))
    keep = [i for i, key in enumerate(_keys(train, columns, "train")) if key not in test_keys]
    return train if len(keep) == len(train) else train.select(keep)


def check_no_overlap(train: Dataset, test: Dataset, columns: Sequence[str] = ("state", "next_state")) -> None:
    """Raise ``ValueError`` if a row of ``train`` has the same ``columns`` values as a row of ``test``."""
    columns = list(columns)
    test_keys = set(_keys(test, columns, "test"))
    overlap = sum(1 for key in _keys(train, columns, "train") if key in test_keys)
    if overlap:
        raise ValueError(
            f"{overlap} of {len(train)} training rows have the same {tuple(columns)} as a test row, so the "
            f"test split would measure memorisation; drop them with trl_swirl.data.remove_overlap(train, test) "
            f"(make_splits does this for you)"
        )


# ---------------------------------------------------------------------------- splits
def _round(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def make_splits(
    env,
    *,
    num_trajectories: int,
    length: int,
    labelled_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    multiturn: bool = False,
    max_history: int = 3,
) -> DatasetDict:
    """Generate trajectories from ``env`` and split them into ``labelled`` / ``unlabelled`` / ``test``.

    * The split is made by trajectory (no trajectory contributes to two splits) and
      is fully determined by ``seed``.
    * ``labelled`` and ``test`` carry the true ``action``; ``unlabelled`` has no
      ``action`` column.
    * Rows of ``labelled`` / ``unlabelled`` whose ``(state, next_state)`` also occurs in
      ``test`` are dropped, so the test split never overlaps the training splits.
    * With ``multiturn=True`` every split gets a ``history`` column of up to
      ``max_history`` earlier states.

    ``env`` is an :class:`~trl_swirl.envs.Environment` or the name of a built-in one.
    """
    if isinstance(env, str):
        from .envs import get_environment

        env = get_environment(env)
    for arg, value in (("labelled_fraction", labelled_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"{arg} must be a number strictly between 0 and 1, got {value!r}")
    if labelled_fraction + test_fraction >= 1:
        raise ValueError(
            f"labelled_fraction + test_fraction must be < 1 to leave trajectories for the unlabelled split, got "
            f"{labelled_fraction} + {test_fraction} = {labelled_fraction + test_fraction}; lower one of them"
        )
    if not isinstance(num_trajectories, int) or isinstance(num_trajectories, bool) or num_trajectories < 3:
        raise ValueError(
            f"num_trajectories must be an integer >= 3 (one per split at least), got {num_trajectories!r}"
        )
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length must be an integer >= 1 (steps per trajectory), got {length!r}")

    n_test = _round(num_trajectories * test_fraction)
    n_lab = _round(num_trajectories * labelled_fraction)
    n_unlab = num_trajectories - n_test - n_lab
    for split, n, arg, frac in (
        ("test", n_test, "test_fraction", test_fraction),
        ("labelled", n_lab, "labelled_fraction", labelled_fraction),
    ):
        if n < 1:
            need = math.ceil(0.5 / frac - 1e-9)
            raise ValueError(
                f"the {split} split would be empty: num_trajectories={num_trajectories} * {arg}={frac} rounds to 0; "
                f"raise num_trajectories to at least {need} or raise {arg}"
            )
    if n_unlab < 1:
        raise ValueError(
            f"the unlabelled split would be empty: num_trajectories={num_trajectories} leaves no trajectory after "
            f"{n_test} test and {n_lab} labelled ones; raise num_trajectories or lower labelled_fraction/test_fraction"
        )

    trajectories = env.trajectories(num_trajectories, length, seed=seed)
    order = list(range(num_trajectories))
    random.Random(f"trl_swirl.make_splits:{seed}").shuffle(order)
    ids = {
        "test": sorted(order[:n_test]),
        "labelled": sorted(order[n_test : n_test + n_lab]),
        "unlabelled": sorted(order[n_test + n_lab :]),
    }

    def build(split: str, with_actions: bool) -> Dataset:
        trajs = [trajectories[i] for i in ids[split]]
        if multiturn:
            return multiturn_from_trajectories(
                trajs, max_history=max_history, with_actions=with_actions, trajectory_ids=ids[split]
            )
        return transitions_from_trajectories(trajs, with_actions=with_actions, trajectory_ids=ids[split])

    test = build("test", True)
    labelled = remove_overlap(build("labelled", True), test)
    unlabelled = remove_overlap(build("unlabelled", False), test)
    for split, ds in (("labelled", labelled), ("unlabelled", unlabelled)):
        if len(ds) == 0:
            raise ValueError(
                f"the {split} split is empty after dropping the transitions that also occur in the test split; "
                f"raise num_trajectories or length, or lower test_fraction"
            )
    return DatasetDict({"labelled": labelled, "unlabelled": unlabelled, "test": test})
