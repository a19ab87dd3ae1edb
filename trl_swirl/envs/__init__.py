"""Built-in textual environments for SWIRL.

Each environment is a seeded, deterministic generator of state-only
trajectories whose true actions are kept apart for evaluation:

* ``physics`` (:class:`PhysicsEnv`): objects on a small grid with gravity and pushes.
* ``web`` (:class:`WebEnv`): browsing a tiny shop website.
* ``tools`` (:class:`ToolsEnv`): calls to simulated weather / hotel / currency APIs.

>>> env = get_environment("web")
>>> trajs = env.trajectories(num_trajectories=2, length=3, seed=0)
>>> env.apply(trajs[0]["states"][0], trajs[0]["actions"][0]) == trajs[0]["states"][1]
True
"""

from __future__ import annotations

from .base import Environment, InvalidAction, InvalidState, normalize_text
from .physics import PhysicsEnv
from .tools import ToolsEnv
from .web import WebEnv

ENVIRONMENTS: dict[str, type[Environment]] = {"physics": PhysicsEnv, "web": WebEnv, "tools": ToolsEnv}


def get_environment(name: str, **kwargs) -> Environment:
    """Instantiate the built-in environment called ``name`` with its size knobs ``kwargs``."""
    if name not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {name!r}; valid names are: {', '.join(sorted(ENVIRONMENTS))}")
    return ENVIRONMENTS[name](**kwargs)


__all__ = [
    "ENVIRONMENTS",
    "Environment",
    "InvalidAction",
    "InvalidState",
    "PhysicsEnv",
    "ToolsEnv",
    "WebEnv",
    "get_environment",
    "normalize_text",
]
