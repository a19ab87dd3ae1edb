"""Tests for the built-in textual environments (fast, no models)."""

from __future__ import annotations

import random

import pytest

from trl_swirl.envs import (
    ENVIRONMENTS,
    Environment,
    InvalidAction,
    InvalidState,
    PhysicsEnv,
    ToolsEnv,
    WebEnv,
    get_environment,
)

ENV_NAMES = ["physics", "web", "tools"]


@pytest.fixture(scope="module", params=ENV_NAMES)
def env(request):
    return get_environment(request.param)


@pytest.fixture(scope="module")
def trajs(env):
    return env.trajectories(num_trajectories=60, length=12, seed=0)


def test_registry():
    assert ENVIRONMENTS == {"physics": PhysicsEnv, "web": WebEnv, "tools": ToolsEnv}
    for name, cls in ENVIRONMENTS.items():
        env = get_environment(name)
        assert isinstance(env, cls) and isinstance(env, Environment)
        assert env.name == name


def test_unknown_environment_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown environment 'chess'.*physics, tools, web"):
        get_environment("chess")


def test_unknown_kwarg_rejected():
    with pytest.raises(TypeError, match="unexpected keyword"):
        get_environment("web", colour="red")
    with pytest.raises(ValueError, match="width must be"):
        PhysicsEnv(width=20)


def test_trajectory_shape(env, trajs):
    assert len(trajs) == 60
    for t in trajs:
        assert set(t) == {"states", "actions"}
        assert len(t["states"]) == 13 and len(t["actions"]) == 12
        assert all(isinstance(s, str) for s in t["states"])
        assert all(isinstance(a, str) for a in t["actions"])


def test_determinism(env, trajs):
    assert env.trajectories(num_trajectories=60, length=12, seed=0) == trajs
    assert get_environment(env.name).trajectories(num_trajectories=60, length=12, seed=0) == trajs
    assert env.trajectories(num_trajectories=60, length=12, seed=1) != trajs
    # rollout with the same rng state gives the same trajectory
    assert env.rollout(5, random.Random(3)) == env.rollout(5, random.Random(3))


def test_apply_reproduces_rollouts(env, trajs):
    for t in trajs:
        for s, a, nxt in zip(t["states"], t["actions"], t["states"][1:]):
            assert a in env.valid_actions(s)
            assert env.apply(s, a) == nxt
            assert env.is_consistent(s, a, nxt)


def test_is_consistent_false_for_wrong_action(env, trajs):
    found = 0
    for t in trajs:
        for s, a, nxt in zip(t["states"], t["actions"], t["states"][1:]):
            for other in env.valid_actions(s):
                if env.apply(s, other) != nxt:
                    assert not env.is_consistent(s, other, nxt)
                    found += 1
    assert found > 0
    s = trajs[0]["states"][0]
    assert not env.is_consistent(s, "dance wildly", trajs[0]["states"][1])
    assert not env.is_consistent("not a state at all", trajs[0]["actions"][0], s)


def test_state_and_action_lengths(env, trajs):
    for t in trajs:
        for s in t["states"]:
            assert 1 <= len(s.split()) <= 40
            assert s == " ".join(s.split())  # clean single spaces
            actions = env.valid_actions(s)
            assert 1 <= len(actions) <= 12
            assert len(set(actions)) == len(actions)
            assert all(1 <= len(a.split()) <= 6 for a in actions)


def test_valid_actions_all_apply(env, trajs):
    for t in trajs[:10]:
        for s in t["states"]:
            for a in env.valid_actions(s):
                nxt = env.apply(s, a)
                assert env.is_valid_state(nxt)
                env.valid_actions(nxt)  # accepts every state it produced


def test_ambiguity_exists(env, trajs):
    ambiguous = 0
    for t in trajs:
        for s in t["states"]:
            nexts = [env.apply(s, a) for a in env.valid_actions(s)]
            if len(set(nexts)) < len(nexts):
                ambiguous += 1
    assert ambiguous > 0


def test_action_matters(env, trajs):
    # most states have at least two valid actions leading to different next states
    states = [s for t in trajs for s in t["states"]]
    distinct = sum(len({env.apply(s, a) for a in env.valid_actions(s)}) > 1 for s in states)
    assert distinct >= 0.9 * len(states)


def test_whitespace_in_action_is_normalised(env, trajs):
    s, a = trajs[0]["states"][0], trajs[0]["actions"][0]
    assert env.apply(s, "  " + a.replace(" ", "   ") + " \n") == env.apply(s, a)


def test_garbage_action_raises(env, trajs):
    s = trajs[0]["states"][0]
    with pytest.raises(InvalidAction, match=r"invalid action 'dance wildly' for the \w+ environment: expected"):
        env.apply(s, "dance   wildly")
    assert issubclass(InvalidAction, ValueError)


def test_garbage_state_raises(env):
    with pytest.raises(InvalidState, match="not a"):
        env.valid_actions("hello world")
    assert not env.is_valid_state("hello world")


def test_equivalent_actions(env, trajs):
    for t in trajs[:10]:
        for s, a in zip(t["states"], t["actions"]):
            eq = env.equivalent_actions(s, a)
            assert a in eq


# ---------------------------------------------------------------------------- physics
def test_physics_push_into_wall_is_wait():
    env = PhysicsEnv()
    s = "ball at 3 0 vel 0 0 | box at 0 0 vel 0 0"
    assert env.apply(s, "push box left") == env.apply(s, "wait") == s
    assert env.apply(s, "push box right") == "ball at 3 0 vel 0 0 | box at 1 0 vel 0 0"
    assert set(env.equivalent_actions(s, "wait")) == {"wait", "push box left"}


def test_physics_gravity_jump_and_rolling():
    env = PhysicsEnv()
    s = "ball at 2 0 vel 0 0 | box at 5 2 vel 0 0"
    s1 = env.apply(s, "jump ball")
    assert s1 == "ball at 2 1 vel 0 1 | box at 5 1 vel 0 0"  # ball rises, box falls
    assert env.apply(s1, "jump ball") == env.apply(s1, "wait")  # no jump in the air
    s2 = env.apply(s1, "push ball right")
    assert s2 == "ball at 3 2 vel 1 0 | box at 5 0 vel 0 0"
    s3 = env.apply(s2, "wait")
    assert s3 == "ball at 4 1 vel 1 0 | box at 5 0 vel 0 0"  # keeps rolling while falling
    s4 = env.apply(s3, "wait")
    assert s4 == "ball at 5 1 vel 1 0 | box at 5 0 vel 0 0"  # lands on top of the box
    s5 = env.apply(s4, "wait")
    assert s5 == "ball at 5 1 vel 0 0 | box at 5 0 vel 0 0"  # stopped by the wall, stays on the box
    s6 = env.apply("ball at 3 0 vel 1 0 | box at 4 0 vel 0 0", "wait")
    assert s6 == "ball at 3 0 vel 0 0 | box at 4 0 vel 0 0"  # blocked by the box


def test_physics_invalid_actions():
    env = PhysicsEnv()
    s = "ball at 3 0 vel 0 0 | box at 0 0 vel 0 0"
    with pytest.raises(InvalidAction, match=r"'push ghost left'.*unknown object 'ghost'"):
        env.apply(s, "push ghost left")
    with pytest.raises(InvalidAction, match=r"unknown direction 'up'"):
        env.apply(s, "push ball up")
    one = PhysicsEnv(num_objects=1, width=4)
    assert one.valid_actions("ball at 1 1 vel 0 0") == ["wait", "push ball left", "push ball right", "jump ball"]
    with pytest.raises(InvalidAction, match="unknown object 'box'"):
        one.apply("ball at 1 1 vel 0 0", "jump box")


# ---------------------------------------------------------------------------- web
def test_web_back_equals_click_prev():
    env = WebEnv()
    s = "page shop | links home lamp mug book pen | field empty | cart 1 | prev home"
    expected = "page home | links shop search cart | field empty | cart 1 | prev shop"
    assert env.apply(s, "back") == env.apply(s, "click home") == expected


def test_web_search_and_checkout():
    env = WebEnv()
    s = "page search | links home | field empty | cart 0 | prev home"
    assert env.apply(s, "submit") == s  # nothing typed
    s = env.apply(s, "type mug")
    assert s == "page search | links home | field mug | cart 0 | prev home"
    s = env.apply(s, "submit")
    assert s == "page mug | links shop cart | field empty | cart 0 | prev search"
    s = env.apply(env.apply(s, "add to cart"), "click cart")
    assert s == "page cart | links home shop | field empty | cart 1 | prev mug"
    s = env.apply(s, "submit")
    assert s == "page done | links home shop | field empty | cart 0 | prev cart"
    no = env.apply("page search | links home | field shoe | cart 0 | prev home", "submit")
    assert no.startswith("page noresult | links search home")


def test_web_invalid_actions():
    env = WebEnv()
    s = "page home | links shop search cart | field empty | cart 0 | prev none"
    assert "back" not in env.valid_actions(s)
    with pytest.raises(InvalidAction, match=r"'back'.*no previous page"):
        env.apply(s, "back")
    with pytest.raises(InvalidAction, match=r"'click lamp'.*no link 'lamp' on page home"):
        env.apply(s, "click lamp")
    with pytest.raises(InvalidAction, match=r"'type mug'.*no text field on page home"):
        env.apply(s, "type mug")
    with pytest.raises(InvalidAction, match=r"'add to cart'.*not an item page"):
        env.apply(s, "add to cart")


# ---------------------------------------------------------------------------- tools
def test_tools_responses():
    env = ToolsEnv()
    s = "mem cur eur quota 3 | { status : ready }"
    w = env.apply(s, "get_weather city paris")
    assert w == "mem cur eur quota 2 | { api : weather , city : paris , temp : 21 , sky : sun }"
    h = env.apply(w, "search hotel paris")
    assert h == "mem cur eur quota 1 | { api : hotel , city : paris , name : ritz , price : 4 , cur : eur }"
    assert "convert 4 eur usd" in env.valid_actions(h)
    c = env.apply(h, "convert 4 eur usd")
    assert c == "mem cur eur quota 0 | { api : convert , amount : 4 , from : eur , to : usd , value : 6 }"
    u = env.apply(c, "set cur usd")  # local memory, no quota used
    assert u == "mem cur usd quota 0 | { api : settings , cur : usd }"
    assert env.apply(u, "search hotel rome") == "mem cur usd quota 5 | { error : rate limit }"


def test_tools_ambiguities():
    env = ToolsEnv()
    s = "mem cur gbp quota 2 | { status : ready }"
    assert env.apply(s, "search hotel tokyo") == env.apply(s, "search hotel oslo")
    z = "mem cur gbp quota 0 | { status : ready }"
    assert len({env.apply(z, a) for a in env.valid_actions(z) if not a.startswith("set")}) == 1


def test_tools_invalid_actions():
    env = ToolsEnv()
    s = "mem cur eur quota 3 | { status : ready }"
    with pytest.raises(InvalidAction, match=r"'convert 4 eur usd'.*needs a price or value"):
        env.apply(s, "convert 4 eur usd")
    with pytest.raises(InvalidAction, match=r"unknown city 'berlin'"):
        env.apply(s, "get_weather city berlin")
    with pytest.raises(InvalidAction, match=r"already eur"):
        env.apply(s, "set cur eur")
    h = "mem cur eur quota 1 | { api : hotel , city : paris , name : ritz , price : 4 , cur : eur }"
    with pytest.raises(InvalidAction, match=r"offers 4 eur"):
        env.apply(h, "convert 5 eur usd")
