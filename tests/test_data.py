"""Tests for trl_swirl.data (fast, no models)."""

from __future__ import annotations

import random

import pytest
from datasets import Dataset, DatasetDict

from trl_swirl.data import (
    check_no_overlap,
    make_splits,
    multiturn_from_trajectories,
    remove_overlap,
    transitions_from_sequences,
    transitions_from_trajectories,
)
from trl_swirl.envs import Environment, get_environment

HAND = [
    {"states": ["s0", "s1", "s2", "s3", "s4"], "actions": ["a0", "a1", "a2", "a3"]},
    {"states": ["t0", "t1"], "actions": ["b0"]},
]


def test_transitions_from_trajectories_hand_built():
    ds = transitions_from_trajectories(HAND)
    assert isinstance(ds, Dataset)
    assert set(ds.column_names) == {"state", "action", "next_state", "trajectory_id", "step"}
    assert len(ds) == 5
    assert ds["state"] == ["s0", "s1", "s2", "s3", "t0"]
    assert ds["next_state"] == ["s1", "s2", "s3", "s4", "t1"]
    assert ds["action"] == ["a0", "a1", "a2", "a3", "b0"]
    assert ds["trajectory_id"] == [0, 0, 0, 0, 1]
    assert ds["step"] == [0, 1, 2, 3, 0]


def test_transitions_without_actions_and_custom_columns():
    ds = transitions_from_trajectories(HAND, with_actions=False)
    assert "action" not in ds.column_names
    ds = transitions_from_trajectories(HAND, state_column="obs", action_column="act", next_state_column="next_obs")
    assert {"obs", "act", "next_obs"} <= set(ds.column_names)
    assert ds["act"][0] == "a0"


def test_transitions_errors():
    with pytest.raises(ValueError, match=r"trajectory 0 has no 'actions'; pass with_actions=False"):
        transitions_from_trajectories([{"states": ["a", "b"]}])
    with pytest.raises(ValueError, match=r"trajectory 0: expected 1 actions for 2 states, got 2"):
        transitions_from_trajectories([{"states": ["a", "b"], "actions": ["x", "y"]}])
    with pytest.raises(ValueError, match="column names must be distinct"):
        transitions_from_trajectories(HAND, action_column="state")


def test_multiturn_history():
    ds = multiturn_from_trajectories(HAND, max_history=2)
    assert ds["history"] == [[], ["s0"], ["s0", "s1"], ["s1", "s2"], []]
    assert ds["action"] == ["a0", "a1", "a2", "a3", "b0"]
    ds3 = multiturn_from_trajectories(HAND)  # max_history=3
    assert ds3["history"][3] == ["s0", "s1", "s2"]
    ds0 = multiturn_from_trajectories(HAND, max_history=0, with_actions=False)
    assert ds0["history"] == [[]] * 5 and "action" not in ds0.column_names
    with pytest.raises(ValueError, match="max_history must be an integer >= 0"):
        multiturn_from_trajectories(HAND, max_history=-1)


def test_transitions_from_sequences():
    ds = transitions_from_sequences([["x0", "x1", "x2"], ["y0", "y1"], ["z0"]])
    assert set(ds.column_names) == {"state", "next_state", "trajectory_id", "step"}
    assert ds["state"] == ["x0", "x1", "y0"]
    assert ds["next_state"] == ["x1", "x2", "y1"]
    assert ds["trajectory_id"] == [0, 0, 1]
    assert ds["step"] == [0, 1, 0]
    assert transitions_from_sequences([["x0", "x1", "x2"]], max_history=1)["history"] == [[], ["x0"]]
    with pytest.raises(ValueError, match="sequence 0 must be a list of state strings"):
        transitions_from_sequences(["x0 x1"])


@pytest.mark.parametrize("name", ["physics", "web", "tools"])
def test_row_counts_match_trajectories(name):
    trajs = get_environment(name).trajectories(num_trajectories=7, length=9, seed=4)
    assert len(transitions_from_trajectories(trajs)) == sum(len(t["actions"]) for t in trajs) == 63
    assert len(multiturn_from_trajectories(trajs, with_actions=False)) == 63


@pytest.fixture(scope="module", params=["physics", "web", "tools"])
def splits(request):
    env = get_environment(request.param)
    return env, make_splits(env, num_trajectories=60, length=8, labelled_fraction=0.2, test_fraction=0.25, seed=3)


def test_split_structure(splits):
    _, dd = splits
    assert isinstance(dd, DatasetDict)
    assert set(dd) == {"labelled", "unlabelled", "test"}
    assert "action" in dd["labelled"].column_names and "action" in dd["test"].column_names
    assert "action" not in dd["unlabelled"].column_names
    assert all(len(ds) > 0 for ds in dd.values())
    assert len(dd["test"]) == 15 * 8  # the test split keeps all of its transitions


def test_split_by_trajectory(splits):
    _, dd = splits
    ids = {name: set(ds["trajectory_id"]) for name, ds in dd.items()}
    assert not ids["labelled"] & ids["unlabelled"]
    assert not ids["labelled"] & ids["test"]
    assert not ids["unlabelled"] & ids["test"]
    assert len(ids["test"]) == 15
    assert ids["labelled"] | ids["unlabelled"] | ids["test"] <= set(range(60))


def test_no_overlap_with_test(splits):
    _, dd = splits
    test_pairs = set(zip(dd["test"]["state"], dd["test"]["next_state"]))
    for name in ("labelled", "unlabelled"):
        assert not set(zip(dd[name]["state"], dd[name]["next_state"])) & test_pairs
        check_no_overlap(dd[name], dd["test"])


def test_rows_match_environment(splits):
    env, dd = splits
    trajs = env.trajectories(60, 8, seed=3)
    for name in ("labelled", "test"):
        for row in dd[name]:
            t = trajs[row["trajectory_id"]]
            assert row["state"] == t["states"][row["step"]]
            assert row["next_state"] == t["states"][row["step"] + 1]
            assert row["action"] == t["actions"][row["step"]]
    for row in dd["unlabelled"]:
        t = trajs[row["trajectory_id"]]
        assert (row["state"], row["next_state"]) == (t["states"][row["step"]], t["states"][row["step"] + 1])


def test_no_action_leak_in_unlabelled(splits):
    env, dd = splits
    trajs = env.trajectories(60, 8, seed=3)
    true_actions = {a for tid in set(dd["unlabelled"]["trajectory_id"]) for a in trajs[tid]["actions"]}
    assert true_actions
    for column in dd["unlabelled"].column_names:
        for value in dd["unlabelled"][column]:
            if isinstance(value, str):
                assert value not in true_actions
                assert not any(a in value for a in true_actions), (column, value)


def test_make_splits_deterministic():
    a = make_splits("web", num_trajectories=30, length=6, seed=5)
    b = make_splits(get_environment("web"), num_trajectories=30, length=6, seed=5)
    c = make_splits("web", num_trajectories=30, length=6, seed=6)
    for split in ("labelled", "unlabelled", "test"):
        assert a[split].to_dict() == b[split].to_dict()
    assert any(a[s].to_dict() != c[s].to_dict() for s in ("labelled", "unlabelled", "test"))


def test_make_splits_multiturn():
    dd = make_splits("physics", num_trajectories=20, length=6, multiturn=True, max_history=2, seed=1)
    for split, ds in dd.items():
        assert "history" in ds.column_names
        for row in ds:
            assert len(row["history"]) == min(row["step"], 2)
    assert "action" not in dd["unlabelled"].column_names


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"labelled_fraction": 0.0}, r"labelled_fraction must be a number strictly between 0 and 1, got 0.0"),
        ({"labelled_fraction": 1.5}, r"labelled_fraction must be a number strictly between 0 and 1"),
        ({"test_fraction": 1.0}, r"test_fraction must be a number strictly between 0 and 1"),
        ({"labelled_fraction": 0.5, "test_fraction": 0.5}, r"labelled_fraction \+ test_fraction must be < 1"),
        ({"num_trajectories": 4}, r"labelled split would be empty.*raise num_trajectories to at least 5"),
        ({"num_trajectories": 2}, r"num_trajectories must be an integer >= 3"),
        ({"length": 0}, r"length must be an integer >= 1"),
        (
            {"num_trajectories": 10, "labelled_fraction": 0.45, "test_fraction": 0.5},
            r"unlabelled split would be empty",
        ),
    ],
)
def test_make_splits_errors(kwargs, match):
    args = {"num_trajectories": 20, "length": 5} | kwargs
    with pytest.raises(ValueError, match=match):
        make_splits("physics", **args)


class _ConstantEnv(Environment):
    """Every transition is 'same -> same': all training rows overlap the test split."""

    name = "constant"

    def initial_state(self, rng: random.Random) -> str:
        return "same"

    def valid_actions(self, state: str) -> list[str]:
        return ["noop"]

    def apply(self, state: str, action: str) -> str:
        return "same"


def test_make_splits_empty_after_dedup():
    with pytest.raises(ValueError, match=r"labelled split is empty after dropping the transitions"):
        make_splits(_ConstantEnv(), num_trajectories=10, length=3)


def test_check_no_overlap_and_remove_overlap():
    train = Dataset.from_dict({"state": ["a", "b", "c"], "next_state": ["b", "c", "d"]})
    test = Dataset.from_dict({"state": ["b", "x"], "next_state": ["c", "y"], "action": ["p", "q"]})
    overlap_msg = r"1 of 3 training rows have the same \('state', 'next_state'\).*remove_overlap"
    with pytest.raises(ValueError, match=overlap_msg):
        check_no_overlap(train, test)
    cleaned = remove_overlap(train, test)
    assert cleaned["state"] == ["a", "c"]
    check_no_overlap(cleaned, test)
    with pytest.raises(ValueError, match=r"1 of 3 training rows have the same \('state',\)"):
        check_no_overlap(train, test, columns=("state",))
    with pytest.raises(ValueError, match=r"the test dataset has no column\(s\) \['history'\]"):
        check_no_overlap(train, test, columns=("state", "history"))
