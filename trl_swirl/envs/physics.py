"""``physics``: one or two objects on a small 2-D grid with gravity.

State format (objects in fixed order, separated by ``|``)::

    ball at X Y vel VX VY | box at X Y vel VX VY

* ``X`` in ``0 .. width-1`` (left to right), ``Y`` in ``0 .. height-1`` (``0`` is the floor).
* ``VX`` in ``-1 0 1`` is the horizontal velocity, ``VY`` in ``0 1 2`` the remaining
  upward velocity of a jump.

Actions (``valid_actions`` lists them in this order)::

    wait
    push OBJ left | push OBJ right      # set VX of OBJ to -1 / +1
    jump OBJ                            # VY = 2, only takes effect if OBJ stands on
                                        # the floor or on the other object and VY == 0

Dynamics of one step: the action first changes velocities, then every object is
moved in the fixed order ``ball``, ``box``:

1. Horizontal: the object moves ``VX`` cells. A wall or the other object in the
   target cell stops it (it stays, ``VX = 0``).
2. Vertical: with ``VY > 0`` it rises one cell and ``VY`` decreases by one (the
   ceiling or the other object stops it, ``VY = 0``). Otherwise, gravity: if it
   is neither on the floor nor standing on the other object, it falls one cell.
3. Friction: the ``box`` stops (``VX = 0``) when it ends the step supported; the
   ``ball`` keeps rolling until it hits something.

Ambiguities (different actions, same next state): pushing the box into a wall
or into the ball is the same as ``wait``; ``jump`` in the air is ``wait``;
``push ball right`` while the ball already rolls right is ``wait``.
"""

from __future__ import annotations

import random

from .base import Environment, normalize_text

OBJECT_NAMES = ("ball", "box")
DIRECTIONS = {"left": -1, "right": 1}


class PhysicsEnv(Environment):
    """Objects on a ``width`` x ``height`` grid with gravity, walls and pushes."""

    name = "physics"

    def __init__(self, width: int = 6, height: int = 4, num_objects: int = 2, **kwargs):
        super().__init__(**kwargs)
        for knob, value, low in (("width", width, 2), ("height", height, 2)):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 10:
                raise ValueError(f"{knob} must be an integer in [{low}, 10] (single-digit coordinates), got {value!r}")
        if num_objects not in (1, 2):
            raise ValueError(f"num_objects must be 1 or 2, got {num_objects!r}")
        self.width = width
        self.height = height
        self.num_objects = num_objects
        self.objects = OBJECT_NAMES[:num_objects]

    def __repr__(self) -> str:
        return f"PhysicsEnv(width={self.width}, height={self.height}, num_objects={self.num_objects})"

    # ------------------------------------------------------------------ text <-> state
    def _parse(self, state: str) -> dict[str, list[int]]:
        if not isinstance(state, str):
            raise self._bad_state(state, "expected a string")
        parts = [p.split() for p in normalize_text(state).split("|")]
        if len(parts) != self.num_objects:
            raise self._bad_state(state, f"expected {self.num_objects} objects separated by '|'")
        objects: dict[str, list[int]] = {}
        for expected, tokens in zip(self.objects, parts):
            if len(tokens) != 7 or tokens[0] != expected or tokens[1] != "at" or tokens[4] != "vel":
                raise self._bad_state(state, f"expected '{expected} at X Y vel VX VY'")
            try:
                x, y, vx, vy = (int(t) for t in (tokens[2], tokens[3], tokens[5], tokens[6]))
            except ValueError:
                raise self._bad_state(state, "coordinates and velocities must be integers") from None
            if not (0 <= x < self.width and 0 <= y < self.height and vx in (-1, 0, 1) and vy in (0, 1, 2)):
                raise self._bad_state(state, f"{expected} out of range")
            objects[expected] = [x, y, vx, vy]
        if self.num_objects == 2 and objects["ball"][:2] == objects["box"][:2]:
            raise self._bad_state(state, "two objects in one cell")
        return objects

    def _render(self, objects: dict[str, list[int]]) -> str:
        return " | ".join(f"{n} at {o[0]} {o[1]} vel {o[2]} {o[3]}" for n, o in objects.items())

    # ------------------------------------------------------------------ API
    def initial_state(self, rng: random.Random) -> str:
        cells = [(x, y) for x in range(self.width) for y in range(self.height)]
        chosen = rng.sample(cells, self.num_objects)
        objects = {}
        for name, (x, y) in zip(self.objects, chosen):
            vx = rng.choice((-1, 0, 1)) if name == "ball" else 0
            objects[name] = [x, y, vx, 0]
        return self._render(objects)

    def all_actions(self) -> list[str]:
        """Every action string this environment can accept."""
        actions = ["wait"]
        for name in self.objects:
            actions += [f"push {name} left", f"push {name} right", f"jump {name}"]
        return actions

    def valid_actions(self, state: str) -> list[str]:
        self._parse(state)
        return self.all_actions()

    def apply(self, state: str, action: str) -> str:
        objects = self._parse(state)
        act = normalize_text(action)
        tokens = act.split()

        def occupied(x: int, y: int, me: str) -> bool:
            return any(o[0] == x and o[1] == y for n, o in objects.items() if n != me)

        def supported(name: str) -> bool:
            x, y = objects[name][:2]
            return y == 0 or occupied(x, y - 1, name)

        # 1) the action changes velocities
        if tokens == ["wait"]:
            pass
        elif len(tokens) == 3 and tokens[0] == "push":
            if tokens[1] not in objects:
                raise self._invalid(act, f"unknown object {tokens[1]!r}, expected one of {list(self.objects)}")
            if tokens[2] not in DIRECTIONS:
                raise self._invalid(act, f"unknown direction {tokens[2]!r}, expected 'left' or 'right'")
            objects[tokens[1]][2] = DIRECTIONS[tokens[2]]
        elif len(tokens) == 2 and tokens[0] == "jump":
            if tokens[1] not in objects:
                raise self._invalid(act, f"unknown object {tokens[1]!r}, expected one of {list(self.objects)}")
            if supported(tokens[1]) and objects[tokens[1]][3] == 0:
                objects[tokens[1]][3] = 2
        else:
            raise self._invalid(act, "expected 'wait', 'push OBJ left|right' or 'jump OBJ'")

        # 2) every object moves, in fixed order
        for name in self.objects:
            o = objects[name]
            if o[2] != 0:
                nx = o[0] + o[2]
                if not 0 <= nx < self.width or occupied(nx, o[1], name):
                    o[2] = 0
                else:
                    o[0] = nx
            if o[3] > 0:
                ny = o[1] + 1
                if ny >= self.height or occupied(o[0], ny, name):
                    o[3] = 0
                else:
                    o[1] = ny
                    o[3] -= 1
            elif not supported(name):
                o[1] -= 1
            if name == "box" and supported(name):
                o[2] = 0
        return self._render(objects)
