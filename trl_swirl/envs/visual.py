"""Built-in *visual* environments: states are images, written as image tokens by a [`PaletteCodec`].

A state is the text of an image, `"<boi><img_1><img_1>...<eoi>"` (see `trl_swirl.codecs`); actions are plain text.
Every image these worlds produce is patch-constant in palette colours, so the codec represents it exactly and the
dynamics run on the token grid itself (no pixel arithmetic): `apply(state, action)` parses the state's tokens, edits
them and writes the next state's tokens. Like the textual environments they are seeded and deterministic, the true
actions are kept apart for evaluation (`make_splits` drops them from the unlabelled split), and
`Environment.is_consistent` / `equivalent_actions` work unchanged.

* `shapes` ([`ShapesWorld`]): coloured shapes (square, circle, triangle) on a small grid of cells that move,
  recolour, appear and disappear::

      move red square left          (left, right, up, down; into an empty cell inside the grid)
      recolour blue circle green    (to a colour no other shape of that kind has)
      remove red square             (while more than one shape is left)
      add green circle at 2 1       (column X from the left, row Y from the top, in an empty cell)

  A shape is named by its colour and kind (at most one of each pair per scene), so every action is unambiguous:
  two different valid actions never lead to the same image.

* `photos` ([`PhotoWorld`]): real photographs from `skimage.data` (astronaut, coffee, chelsea the cat, ...; needs
  `pip install scikit-image`), randomly cropped and quantised to the palette, edited by::

      flip horizontal | flip vertical | rotate 90 | rotate 180 | rotate 270     (rotations counter-clockwise)
      invert colours | shift colours                                          (shift: red -> green -> blue -> red)
      crop top left | crop top right | crop bottom left | crop bottom right   (the quarter, scaled up 2x)

  On a symmetric or uniform image several edits can give the same result (`equivalent_actions` lists them).
"""

from __future__ import annotations

import random
from functools import lru_cache

from ..codecs import DEFAULT_PALETTE, DEFAULT_PALETTE_NAMES, PaletteCodec
from .base import Environment, normalize_text

__all__ = ["PhotoWorld", "ShapesWorld", "VISUAL_ENVIRONMENTS", "get_visual_environment"]

_COLOUR_INDEX = dict(zip(DEFAULT_PALETTE_NAMES, range(len(DEFAULT_PALETTE))))

# 3x3 pixel-art masks of the shapes ('#' painted, '.' background), top row first
SHAPE_MASKS = {
    "square": ("###", "###", "###"),
    "circle": (".#.", "###", ".#."),
    "triangle": ("#..", "##.", "###"),
}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


class _ImageEnvironment(Environment):
    """Shared plumbing: the codec, and state text <-> codes."""

    codec: PaletteCodec

    def _codes(self, state: str) -> list[int]:
        if not isinstance(state, str):
            raise self._bad_state(state, "expected the text of an image")
        try:
            return self.codec.text_to_codes(state)
        except ValueError as err:
            raise self._bad_state(state[:80] + ("..." if len(state) > 80 else ""), str(err)) from None

    def render(self, state: str):
        """The PIL image of a state."""
        return self.codec.decode(state)

    def _text(self, codes) -> str:
        return self.codec.codes_to_text(codes)


class ShapesWorld(_ImageEnvironment):
    """Coloured shapes on a `grid` x `grid` board of cells of `cell` x `cell` patches, as images of
    `(grid * cell * patch_size)^2` pixels.

    Args:
        grid (`int`, defaults to 3): cells per side (2..9).
        cell (`int`, defaults to 3): patches per cell side: 3 draws the shapes as 3x3 pixel art (square, circle,
            triangle); 1 makes every shape one patch, so only `shapes=("square",)` is possible (the smallest
            images: `grid ** 2` tokens, for tiny models).
        patch_size (`int`, defaults to 4): pixels per patch side; the codec has `(cell * grid)^2` tokens.
        max_objects (`int`, defaults to 3): most shapes on the board (at least one is always there).
        colours (`tuple[str]`): shape colours, names of `trl_swirl.codecs.DEFAULT_PALETTE_NAMES`.
        shapes (`tuple[str]`): shape kinds among `square`, `circle`, `triangle`.
        background (`str`, defaults to `"white"`): the background colour (not a shape colour).
    """

    name = "shapes"

    def __init__(self, grid: int = 3, patch_size: int = 4, max_objects: int = 3,
                 colours: tuple[str, ...] = ("red", "green", "blue", "yellow"),
                 shapes: tuple[str, ...] | None = None, background: str = "white", cell: int = 3, **kwargs):
        super().__init__(**kwargs)
        if cell not in (1, 3):
            raise ValueError(f"cell must be 1 (one patch per shape) or 3 (3x3 pixel-art shapes), got {cell!r}")
        if shapes is None:
            shapes = ("square", "circle", "triangle") if cell == 3 else ("square",)
        if cell == 1 and tuple(shapes) != ("square",):
            raise ValueError("with cell=1 every shape is one patch: only shapes=('square',) can be drawn")
        if not isinstance(grid, int) or not 2 <= grid <= 9:
            raise ValueError(f"grid must be an integer in [2, 9] (single-digit coordinates), got {grid!r}")
        if not isinstance(max_objects, int) or not 1 <= max_objects <= grid * grid:
            raise ValueError(f"max_objects must be an integer in [1, {grid * grid}], got {max_objects!r}")
        unknown = [c for c in (*colours, background) if c not in _COLOUR_INDEX]
        if unknown:
            raise ValueError(f"unknown colour(s) {unknown}; the palette's colours are {list(DEFAULT_PALETTE_NAMES)}")
        if background in colours:
            raise ValueError(f"the background colour {background!r} cannot also be a shape colour")
        bad_shapes = [s for s in shapes if s not in SHAPE_MASKS]
        if bad_shapes or not shapes:
            raise ValueError(f"unknown shape(s) {bad_shapes}; the shapes are {sorted(SHAPE_MASKS)}")
        if max_objects > len(colours) * len(shapes):
            raise ValueError("max_objects exceeds the number of distinct (colour, shape) kinds")
        self.grid = grid
        self.cell = cell
        self.patch_size = patch_size
        self.max_objects = max_objects
        self.colours = tuple(colours)
        self.shapes = tuple(shapes)
        self.background = background
        self.codec = PaletteCodec(grid=grid * self.cell, patch_size=patch_size)
        self._bg = _COLOUR_INDEX[background]
        self._colour_of_code = {_COLOUR_INDEX[c]: c for c in self.colours}
        masks = SHAPE_MASKS if cell == 3 else {"square": ("#",)}
        self._masks = {s: tuple(r == "#" for row in masks[s] for r in row) for s in self.shapes}
        self._shape_of_mask = {m: s for s, m in self._masks.items()}

    def __repr__(self) -> str:
        return (f"ShapesWorld(grid={self.grid}, cell={self.cell}, patch_size={self.patch_size}, "
                f"max_objects={self.max_objects}, shapes={self.shapes})")

    # ------------------------------------------------------------------ scene <-> codes
    def render_scene(self, scene) -> str:
        """The state text of a scene: an iterable of `(colour, shape, x, y)`."""
        side = self.grid * self.cell
        codes = [self._bg] * (side * side)
        for colour, shape, x, y in scene:
            mask = self._masks[shape]
            for dy in range(self.cell):
                for dx in range(self.cell):
                    if mask[dy * self.cell + dx]:
                        codes[(y * self.cell + dy) * side + x * self.cell + dx] = _COLOUR_INDEX[colour]
        return self._text(codes)

    def scene(self, state: str) -> list[tuple[str, str, int, int]]:
        """The shapes of a state, `(colour, shape, x, y)` sorted by row then column. `InvalidState` for an image this
        world cannot produce."""
        codes = self._codes(state)
        side = self.grid * self.cell
        objects = []
        for y in range(self.grid):
            for x in range(self.grid):
                cell = [codes[(y * self.cell + dy) * side + x * self.cell + dx]
                        for dy in range(self.cell) for dx in range(self.cell)]
                painted = {c for c in cell if c != self._bg}
                if not painted:
                    continue
                if len(painted) != 1 or next(iter(painted)) not in self._colour_of_code:
                    raise self._bad_state(f"cell {x} {y}", "a cell holds an unknown colour or several colours")
                mask = tuple(c != self._bg for c in cell)
                if mask not in self._shape_of_mask:
                    raise self._bad_state(f"cell {x} {y}", "a cell holds an unknown shape")
                objects.append((self._colour_of_code[next(iter(painted))], self._shape_of_mask[mask], x, y))
        kinds = [(c, s) for c, s, _, _ in objects]
        if not objects or len(set(kinds)) != len(kinds) or len(objects) > self.max_objects:
            raise self._bad_state("scene", "expected 1..max_objects shapes with distinct (colour, shape) pairs")
        return objects

    def describe(self, state: str) -> str:
        """A symbolic description, e.g. `"red square at 0 1 | blue circle at 2 2"` (for reading, not training)."""
        return " | ".join(f"{c} {s} at {x} {y}" for c, s, x, y in self.scene(state))

    # ------------------------------------------------------------------ API
    def initial_state(self, rng: random.Random) -> str:
        count = rng.randint(1, self.max_objects)
        kinds = rng.sample([(c, s) for c in self.colours for s in self.shapes], count)
        cells = rng.sample([(x, y) for y in range(self.grid) for x in range(self.grid)], count)
        return self.render_scene([(c, s, x, y) for (c, s), (x, y) in zip(kinds, cells)])

    def all_actions(self) -> list[str]:
        """Every action string this world can accept (in some state)."""
        actions = []
        for c in self.colours:
            for s in self.shapes:
                actions += [f"move {c} {s} {d}" for d in DIRECTIONS]
                actions += [f"recolour {c} {s} {c2}" for c2 in self.colours if c2 != c]
                actions.append(f"remove {c} {s}")
                actions += [f"add {c} {s} at {x} {y}" for y in range(self.grid) for x in range(self.grid)]
        return actions

    def _actions_by_type(self, scene) -> dict[str, list[str]]:
        occupied = {(x, y) for _, _, x, y in scene}
        kinds = {(c, s) for c, s, _, _ in scene}
        out: dict[str, list[str]] = {"move": [], "recolour": [], "remove": [], "add": []}
        for c, s, x, y in scene:
            for d, (dx, dy) in DIRECTIONS.items():
                nx, ny = x + dx, y + dy
                if 0 <= nx < self.grid and 0 <= ny < self.grid and (nx, ny) not in occupied:
                    out["move"].append(f"move {c} {s} {d}")
            out["recolour"] += [f"recolour {c} {s} {c2}" for c2 in self.colours if c2 != c and (c2, s) not in kinds]
            if len(scene) > 1:
                out["remove"].append(f"remove {c} {s}")
        if len(scene) < self.max_objects:
            free = [(x, y) for y in range(self.grid) for x in range(self.grid) if (x, y) not in occupied]
            for c in self.colours:
                for s in self.shapes:
                    if (c, s) not in kinds:
                        out["add"] += [f"add {c} {s} at {x} {y}" for x, y in free]
        return out

    def valid_actions(self, state: str) -> list[str]:
        by_type = self._actions_by_type(self.scene(state))
        return [a for kind in ("move", "recolour", "remove", "add") for a in by_type[kind]]

    def sample_action(self, state: str, rng: random.Random) -> str:
        """Uniform over the action *types* available in the state, then uniform within the type (so the many `add`
        variants do not crowd out the rest)."""
        by_type = {k: v for k, v in self._actions_by_type(self.scene(state)).items() if v}
        return rng.choice(by_type[rng.choice(sorted(by_type))])

    def apply(self, state: str, action: str) -> str:
        scene = self.scene(state)
        if not isinstance(action, str):
            raise self._invalid(str(action), "expected a string")
        act = normalize_text(action)
        tokens = act.split()
        if len(tokens) < 3 or tokens[0] not in ("move", "recolour", "remove", "add"):
            raise self._invalid(act, "expected 'move C S DIR', 'recolour C S C2', 'remove C S' or 'add C S at X Y'")
        verb, colour, shape = tokens[0], tokens[1], tokens[2]
        if colour not in self.colours or shape not in self.shapes:
            raise self._invalid(act, f"unknown shape '{colour} {shape}'")
        index = {(c, s): i for i, (c, s, _, _) in enumerate(scene)}
        occupied = {(x, y) for _, _, x, y in scene}
        if verb == "add":
            if len(tokens) != 6 or tokens[3] != "at" or not (tokens[4].isdigit() and tokens[5].isdigit()):
                raise self._invalid(act, "expected 'add COLOUR SHAPE at X Y'")
            x, y = int(tokens[4]), int(tokens[5])
            if (colour, shape) in index:
                raise self._invalid(act, f"there is already a {colour} {shape}")
            if not (0 <= x < self.grid and 0 <= y < self.grid) or (x, y) in occupied:
                raise self._invalid(act, "the cell is outside the grid or taken")
            if len(scene) >= self.max_objects:
                raise self._invalid(act, f"the board already holds {self.max_objects} shapes")
            scene.append((colour, shape, x, y))
            return self.render_scene(scene)
        if (colour, shape) not in index:
            raise self._invalid(act, f"there is no {colour} {shape}")
        i = index[(colour, shape)]
        _, _, x, y = scene[i]
        if verb == "move":
            if len(tokens) != 4 or tokens[3] not in DIRECTIONS:
                raise self._invalid(act, "expected 'move COLOUR SHAPE left|right|up|down'")
            dx, dy = DIRECTIONS[tokens[3]]
            nx, ny = x + dx, y + dy
            if not (0 <= nx < self.grid and 0 <= ny < self.grid) or (nx, ny) in occupied:
                raise self._invalid(act, "the target cell is outside the grid or taken")
            scene[i] = (colour, shape, nx, ny)
        elif verb == "recolour":
            if len(tokens) != 4 or tokens[3] not in self.colours or tokens[3] == colour:
                raise self._invalid(act, f"expected 'recolour COLOUR SHAPE NEW' with NEW among {self.colours}")
            if (tokens[3], shape) in index:
                raise self._invalid(act, f"there is already a {tokens[3]} {shape}")
            scene[i] = (tokens[3], shape, x, y)
        else:  # remove
            if len(tokens) != 3:
                raise self._invalid(act, "expected 'remove COLOUR SHAPE'")
            if len(scene) == 1:
                raise self._invalid(act, "the last shape cannot be removed")
            scene.pop(i)
        return self.render_scene(scene)


# ------------------------------------------------------------------------------------------------------ photos
# (rocket and hubble_deep_field quantise to nearly uniform images at this size, so they are left out)
DEFAULT_PHOTOS = ("astronaut", "coffee", "chelsea", "immunohistochemistry", "colorwheel", "camera", "retina")


@lru_cache(maxsize=None)
def _photo(name: str):
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError(
            "The 'photos' world uses the sample photographs of scikit-image: `pip install scikit-image`."
        ) from err
    import numpy as np

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.dtype != np.uint8:
        image = (image.astype(np.float64) * (255.0 / max(float(image.max()), 1.0))).astype(np.uint8)
    return image[..., :3]


class PhotoWorld(_ImageEnvironment):
    """Crops of real photographs (`skimage.data`), quantised to the palette and edited on the token grid.

    Args:
        grid (`int`, defaults to 8): patches per side (even, for the crops); `num_tokens = grid ** 2`.
        patch_size (`int`, defaults to 4): pixels per patch side.
        photos (`tuple[str]`): names of `skimage.data` images.
        min_crop (`float`, defaults to 0.5): smallest crop side, as a fraction of the photo's shorter side.
    """

    name = "photos"
    EDITS = {
        "flip": ("flip horizontal", "flip vertical"),
        "rotate": ("rotate 90", "rotate 180", "rotate 270"),
        "colour": ("invert colours", "shift colours"),
        "crop": ("crop top left", "crop top right", "crop bottom left", "crop bottom right"),
    }

    def __init__(self, grid: int = 8, patch_size: int = 4, photos: tuple[str, ...] = DEFAULT_PHOTOS,
                 min_crop: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(grid, int) or grid < 2 or grid % 2:
            raise ValueError(f"grid must be an even integer >= 2, got {grid!r}")
        if not 0 < min_crop <= 1:
            raise ValueError(f"min_crop must be in (0, 1], got {min_crop!r}")
        self.grid = grid
        self.patch_size = patch_size
        self.photos = tuple(photos)
        self.min_crop = min_crop
        self.codec = PaletteCodec(grid=grid, patch_size=patch_size)
        palette = list(self.codec.palette)
        self._invert = [palette.index(tuple(255 - v for v in c)) for c in palette]
        self._shift = [palette.index((c[2], c[0], c[1])) for c in palette]  # red -> green -> blue -> red

    def __repr__(self) -> str:
        return f"PhotoWorld(grid={self.grid}, patch_size={self.patch_size}, photos={len(self.photos)})"

    def photo_state(self, name: str, box: tuple[int, int, int] | None = None) -> str:
        """The state of a square crop `(left, top, side)` of the photo `name` (default: the largest centred one)."""
        from PIL import Image

        array = _photo(name)
        h, w = array.shape[:2]
        if box is None:
            side = min(h, w)
            box = ((w - side) // 2, (h - side) // 2, side)
        left, top, side = box
        crop = Image.fromarray(array[top : top + side, left : left + side])
        return self.codec.encode(crop)

    def initial_state(self, rng: random.Random) -> str:
        name = rng.choice(self.photos)
        h, w = _photo(name).shape[:2]
        shorter = min(h, w)
        side = int(round(shorter * rng.uniform(self.min_crop, 1.0)))
        return self.photo_state(name, (rng.randint(0, w - side), rng.randint(0, h - side), side))

    def all_actions(self) -> list[str]:
        return [a for group in self.EDITS.values() for a in group]

    def valid_actions(self, state: str) -> list[str]:
        self._codes(state)
        return self.all_actions()

    def sample_action(self, state: str, rng: random.Random) -> str:
        """Uniform over the edit groups (flip, rotate, colour, crop), then within the group."""
        return rng.choice(self.EDITS[rng.choice(sorted(self.EDITS))])

    def apply(self, state: str, action: str) -> str:
        import numpy as np

        codes = np.asarray(self._codes(state)).reshape(self.grid, self.grid)
        if not isinstance(action, str):
            raise self._invalid(str(action), "expected a string")
        act = normalize_text(action)
        half = self.grid // 2
        if act == "flip horizontal":
            out = codes[:, ::-1]
        elif act == "flip vertical":
            out = codes[::-1, :]
        elif act in ("rotate 90", "rotate 180", "rotate 270"):
            out = np.rot90(codes, k=int(act.split()[1]) // 90)  # counter-clockwise
        elif act == "invert colours":
            out = np.asarray(self._invert)[codes]
        elif act == "shift colours":
            out = np.asarray(self._shift)[codes]
        elif act.startswith("crop ") and act in self.EDITS["crop"]:
            _, vertical, horizontal = act.split()
            rows = slice(0, half) if vertical == "top" else slice(half, self.grid)
            cols = slice(0, half) if horizontal == "left" else slice(half, self.grid)
            out = codes[rows, cols].repeat(2, axis=0).repeat(2, axis=1)
        else:
            raise self._invalid(act, f"expected one of {self.all_actions()}")
        return self._text([int(c) for c in np.ascontiguousarray(out).reshape(-1)])


VISUAL_ENVIRONMENTS: dict[str, type[Environment]] = {"shapes": ShapesWorld, "photos": PhotoWorld}


def get_visual_environment(name: str, **kwargs) -> Environment:
    """Instantiate the built-in visual world called `name` (`"shapes"` or `"photos"`)."""
    if name not in VISUAL_ENVIRONMENTS:
        raise ValueError(f"unknown visual environment {name!r}; the visual worlds are {sorted(VISUAL_ENVIRONMENTS)}")
    return VISUAL_ENVIRONMENTS[name](**kwargs)
