"""Backend of the SWIRL Space (no Gradio here): model references, loading and caching, the tiny default models, and
the three operations (predict the next state, infer the action, roll out) for text and image states.

Every user-facing failure is an [`InputError`] whose message is meant to be shown as is; `app.py` turns it into a
`gr.Error`. Everything else is a bug (logged, shown as a short generic message).

Model references (one per FWM / IDM field):

* `tiny:warmstart-fwm`, `tiny:trained-idm`, ... (text) and `tiny:shapes-warmstart-fwm`, ... (images): the tiny
  default models, built locally on first use (a short supervised warm start on a built-in environment's labelled
  transitions; `trained` = the same warm start trained longer) and cached on disk under `SWIRL_SPACE_CACHE`
  (default `~/.cache/trl-swirl/space`) and in memory;
* an existing local folder (e.g. a SWIRL run's phase folder `RUN/iter-1-fwm`), with safetensors weights;
* a Hub id, optionally `id@revision` (e.g. `org/swirl-fwm@iter-2-fwm`); safetensors only.

Environment variables: `SWIRL_TRUST_REMOTE_CODE=1` (run model code from the Hub: off by default),
`SWIRL_SPACE_CACHE` (disk cache), `SWIRL_SPACE_CACHE_PAIRS` (model pairs kept in memory, default 4),
`SWIRL_SPACE_LOCAL_ROOTS` (folders under which local models may be loaded, `os.pathsep`-separated; by default any
folder, except on a Hugging Face Space, where only the Space's own folder and the tiny cache are allowed),
`SWIRL_SPACE_MAX_PARAMS` (largest Hub model accepted, in parameters, default 3e9).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("swirl_space")

# ------------------------------------------------------------------------------------------------------ limits
MAX_STATE_CHARS = 2000
MAX_ACTION_CHARS = 500
MAX_ROLLOUT_STEPS = 20
MAX_NEW_TOKENS = 256
MAX_TEMPERATURE = 2.0
MAX_REFERENCE_CHARS = 300
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_CODEC_GRID = 32
MAX_PATCH_SIZE = 16
DISPLAY_SIZE = 192  # predicted images are enlarged (nearest neighbour) to about this many pixels for display
TEXT_ENVIRONMENTS = ("physics", "web", "tools")
CACHE_VERSION = "1"  # bump when the tiny defaults' recipe changes

TINY_TEXT = {f"tiny:{stage}-{role}": (stage, role) for stage in ("warmstart", "trained") for role in ("fwm", "idm")}
TINY_IMAGE = {
    f"tiny:shapes-{stage}-{role}": (stage, role) for stage in ("warmstart", "trained") for role in ("fwm", "idm")
}
DEFAULT_TEXT_PAIRS = {"A": ("tiny:warmstart-fwm", "tiny:warmstart-idm"), "B": ("tiny:trained-fwm", "tiny:trained-idm")}
DEFAULT_IMAGE_PAIRS = {
    "A": ("tiny:shapes-warmstart-fwm", "tiny:shapes-warmstart-idm"),
    "B": ("tiny:shapes-trained-fwm", "tiny:shapes-trained-idm"),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
_REVISION = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_./-]*$")


class InputError(ValueError):
    """A problem with what the user entered; the message is shown in the UI as is."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def trust_remote_code_enabled() -> bool:
    """Whether model code from the Hub may run (`SWIRL_TRUST_REMOTE_CODE=1`); off by default."""
    return _env_flag("SWIRL_TRUST_REMOTE_CODE")


def default_cache_dir() -> Path:
    if os.environ.get("SWIRL_SPACE_CACHE"):
        return Path(os.environ["SWIRL_SPACE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trl-swirl" / "space"


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with `n` intra-op threads (tiny models train faster on one thread, especially on a busy CPU)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ------------------------------------------------------------------------------------------------ input checks
def check_text(value: Any, what: str, limit: int) -> str:
    """A non-empty text of at most `limit` characters (surrounding whitespace stripped)."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InputError(f"The {what} must be text, got {type(value).__name__}.")
    value = value.strip()
    if not value:
        raise InputError(f"The {what} is empty: enter one (or pick an example below).")
    if len(value) > limit:
        raise InputError(f"The {what} is {len(value):,} characters long; the limit is {limit:,}.")
    return value


def check_temperature(value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"The temperature must be a number, got {value!r}.") from None
    if not 0.0 <= value <= MAX_TEMPERATURE or value != value:
        raise InputError(f"The temperature must be between 0 (greedy) and {MAX_TEMPERATURE}, got {value}.")
    return value


def check_max_new_tokens(value: Any) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"Max new tokens must be a whole number, got {value!r}.") from None
    if number != int(number) or not 1 <= number <= MAX_NEW_TOKENS:
        raise InputError(f"Max new tokens must be a whole number from 1 to {MAX_NEW_TOKENS}, got {value}.")
    return int(number)


def check_actions(text: Any) -> list[str]:
    """One action per line; blank lines are skipped; 1 to `MAX_ROLLOUT_STEPS` actions."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise InputError(f"The actions must be text (one per line), got {type(text).__name__}.")
    if len(text) > MAX_ROLLOUT_STEPS * (MAX_ACTION_CHARS + 1):
        raise InputError(f"The action list is {len(text):,} characters long; it is far too long.")
    actions = [line.strip() for line in text.splitlines() if line.strip()]
    if not actions:
        raise InputError("The action list is empty: enter one action per line.")
    if len(actions) > MAX_ROLLOUT_STEPS:
        raise InputError(f"The roll-out has {len(actions)} actions; the limit is {MAX_ROLLOUT_STEPS} steps.")
    for i, action in enumerate(actions, 1):
        if len(action) > MAX_ACTION_CHARS:
            raise InputError(f"Action {i} is {len(action):,} characters long; the limit is {MAX_ACTION_CHARS:,}.")
    return actions


def check_reference(value: Any, what: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{what}: no model given. Enter a Hub id (optionally id@revision) or a local folder.")
    if not isinstance(value, str):
        raise InputError(f"{what}: the model must be text, got {type(value).__name__}.")
    value = value.strip()
    if len(value) > MAX_REFERENCE_CHARS:
        raise InputError(f"{what}: the model reference is {len(value)} characters long; the limit is "
                         f"{MAX_REFERENCE_CHARS}.")
    return value


# ------------------------------------------------------------------------------------------------- tiny models
@dataclass(frozen=True)
class TinySpec:
    """Recipe of a tiny default pair: data, model size and the two training stages.

    `warmstart_steps` SFT steps give the `warmstart` pair; `extra_steps` more give the `trained` pair (a stand-in
    for a SWIRL iteration, which would take minutes on a CPU)."""

    kind: str = "text"  # "text" (environment `physics`) or "image" (ShapesWorld)
    environment: str = "physics"
    num_trajectories: int = 60
    length: int = 6
    seed: int = 0
    hidden_size: int = 64
    num_layers: int = 2
    warmstart_steps: int = 40
    extra_steps: int = 160
    batch_size: int = 16
    learning_rate: float = 3e-3
    shapes_grid: int = 2  # image: cells per side of the ShapesWorld board (each cell is 3x3 patches)
    shapes_max_objects: int = 2
    patch_size: int = 4

    def key(self) -> str:
        blob = json.dumps({"version": CACHE_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return f"tiny-{self.kind}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


TEXT_SPEC = TinySpec()
# images: 36 tokens per image, ~90 per example; the tiny image pair only starts to learn in this budget (it shows the
# plumbing: exactly one image per prediction, scores, roll-outs), so it is kept cheap
IMAGE_SPEC = TinySpec(kind="image", environment="shapes", num_trajectories=60, length=4, warmstart_steps=30,
                      extra_steps=90)


def shapes_world(spec: TinySpec = IMAGE_SPEC):
    from trl_swirl.envs.visual import ShapesWorld

    return ShapesWorld(grid=spec.shapes_grid, max_objects=spec.shapes_max_objects, patch_size=spec.patch_size)


def _transitions(env, spec: TinySpec, seed: int) -> list[tuple[str, str, str]]:
    rows = []
    for trajectory in env.trajectories(spec.num_trajectories, spec.length, seed=seed):
        states, actions = trajectory["states"], trajectory["actions"]
        rows.extend(zip(states[:-1], actions, states[1:]))
    return rows


def sft_steps(model, tokenizer, pairs: list[tuple[str, str]], steps: int, *, learning_rate: float, batch_size: int,
              seed: int) -> float:
    """`steps` AdamW steps of completion-only SFT on (prompt, completion) texts; returns the last loss.

    The prompt is tokenized with the tokenizer's special tokens and the completion without, followed by EOS: the
    layout `trl_swirl.evaluation.generate` and `PartnerReward` use."""
    import torch

    encoded = []
    for prompt, completion in pairs:
        p = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
        c = list(tokenizer(completion, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
        encoded.append((p, c))
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.train()
    loss_value = float("nan")
    for _ in range(steps):
        batch = rng.sample(encoded, min(batch_size, len(encoded)))
        width = max(len(p) + len(c) for p, c in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (p, c) in enumerate(batch):
            input_ids[row, : len(p) + len(c)] = torch.tensor(p + c)
            attention[row, : len(p) + len(c)] = 1
            labels[row, len(p) : len(p) + len(c)] = torch.tensor(c)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_value = float(loss.item())
    model.eval()
    return loss_value


def _build_tiny(spec: TinySpec, folder: Path) -> None:
    """Build and save the four tiny models of `spec` (warmstart/trained x fwm/idm) into `folder`."""
    from trl_swirl.templates import SwirlTemplates
    from trl_swirl.tiny import build_tiny_causal_lm, build_word_tokenizer, save_pretrained

    templates = SwirlTemplates()
    started = time.perf_counter()
    if spec.kind == "image":
        from trl_swirl.visual import build_visual_models, build_visual_tokenizer

        env = shapes_world(spec)
        rows = _transitions(env, spec, spec.seed)
        tokenizer = build_visual_tokenizer(env.all_actions(), env.codec)
        fwm, idm = build_visual_models(tokenizer, env.codec, hidden_size=spec.hidden_size,
                                       num_layers=spec.num_layers, seed=spec.seed)
        extra = {"codec": {"name": "palette", "grid": list(env.codec.grid), "patch_size": env.codec.patch_size}}
    else:
        from trl_swirl.envs import get_environment

        env = get_environment(spec.environment)
        rows = _transitions(env, spec, spec.seed)
        texts = [t for row in rows for t in row] + env.all_actions()
        for name in TEXT_ENVIRONMENTS:  # every built-in world's words, so the examples of all three tokenize
            other = get_environment(name)
            texts += other.all_actions() + [t for row in _transitions(other, spec, spec.seed + 7) for t in row]
        tokenizer = build_word_tokenizer(texts)
        kwargs = dict(hidden_size=spec.hidden_size, num_hidden_layers=spec.num_layers)
        fwm = build_tiny_causal_lm(tokenizer, seed=spec.seed, **kwargs)
        idm = build_tiny_causal_lm(tokenizer, seed=spec.seed + 1, **kwargs)
        extra = {}
    data = {
        "fwm": [(templates.prompt_text("fwm", state=s, action=a), n) for s, a, n in rows],
        "idm": [(templates.prompt_text("idm", state=s, next_state=n), a) for s, a, n in rows],
    }
    record = {"spec": dataclasses.asdict(spec), "rows": len(rows), **extra}
    with torch_threads(1):
        for role, model in (("fwm", fwm), ("idm", idm)):
            opts = dict(learning_rate=spec.learning_rate, batch_size=spec.batch_size)
            loss = sft_steps(model, tokenizer, data[role], spec.warmstart_steps, seed=spec.seed, **opts)
            save_pretrained(model, tokenizer, folder / f"warmstart-{role}")
            record[f"warmstart-{role}-loss"] = loss
            loss = sft_steps(model, tokenizer, data[role], spec.extra_steps, seed=spec.seed + 1, **opts)
            save_pretrained(model, tokenizer, folder / f"trained-{role}")
            record[f"trained-{role}-loss"] = loss
    record["build_seconds"] = round(time.perf_counter() - started, 2)
    (folder / "tiny_spec.json").write_text(json.dumps(record, indent=2), encoding="utf-8")


class TinyDefaults:
    """The tiny default models, built once per recipe and cached on disk (`cache_dir / spec.key()`)."""

    def __init__(self, cache_dir: str | os.PathLike | None = None, text_spec: TinySpec = TEXT_SPEC,
                 image_spec: TinySpec = IMAGE_SPEC):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.specs = {"text": text_spec, "image": image_spec}
        self._lock = threading.Lock()

    def folder(self, kind: str) -> Path:
        return self.cache_dir / self.specs[kind].key()

    def ensure(self, kind: str) -> Path:
        """The folder of the `kind` defaults, built first when missing (atomically: built aside, then renamed)."""
        folder = self.folder(kind)
        if (folder / "tiny_spec.json").exists():
            return folder
        with self._lock:
            if (folder / "tiny_spec.json").exists():
                return folder
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            logger.info("Building the tiny %s default models in %s (once)...", kind, folder)
            scratch = Path(tempfile.mkdtemp(prefix=folder.name + ".partial-", dir=self.cache_dir))
            try:
                _build_tiny(self.specs[kind], scratch)
                try:
                    os.replace(scratch, folder)
                except OSError:  # another process finished first
                    if not (folder / "tiny_spec.json").exists():
                        raise
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        return folder

    def resolve(self, reference: str) -> Path | None:
        """The folder of a `tiny:` reference (building the defaults when needed); None for other references."""
        if reference in TINY_TEXT:
            stage, role = TINY_TEXT[reference]
            return self.ensure("text") / f"{stage}-{role}"
        if reference in TINY_IMAGE:
            stage, role = TINY_IMAGE[reference]
            return self.ensure("image") / f"{stage}-{role}"
        return None


# ------------------------------------------------------------------------------------------------ model loading
@dataclass
class LoadedModel:
    reference: str
    model: Any
    tokenizer: Any
    templates: Any  # SwirlTemplates: the run's templates when the folder's run recorded them, else the defaults
    max_length: int | None
    seconds: float
    lock: threading.RLock = dataclasses.field(default_factory=threading.RLock)
    _partners: dict = dataclasses.field(default_factory=dict)

    def partner(self, phase: str):
        """A `PartnerReward` scoring with this model (phase `fwm`: this model is the IDM; `idm`: the FWM)."""
        if phase not in self._partners:
            from trl_swirl.partner import PartnerReward

            self._partners[phase] = PartnerReward(self.model, self.tokenizer, phase=phase, templates=self.templates)
        return self._partners[phase]


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _local_roots() -> list[Path] | None:
    """Folders under which local models may be loaded; None = anywhere."""
    raw = os.environ.get("SWIRL_SPACE_LOCAL_ROOTS")
    if raw is not None:
        return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]
    if os.environ.get("SPACE_ID"):  # running on a Hugging Face Space: only the Space's own files
        return [Path(__file__).resolve().parent]
    return None


def _run_templates(folder: Path):
    """The templates recorded by the SWIRL run a phase folder belongs to (`../run_config.json`), else None."""
    from trl_swirl.templates import SwirlTemplates

    config = folder.parent / "run_config.json"
    if not config.is_file():
        return None
    try:
        swirl = json.loads(config.read_text(encoding="utf-8")).get("swirl", {})
        return SwirlTemplates(swirl["fwm_template"], swirl["idm_template"], swirl.get("prompt_format", "text"))
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("Ignoring the unreadable templates of %s", config)
        return None


class ModelCache:
    """Loads (model, tokenizer) once per reference and keeps the most recently used ones (an LRU)."""

    def __init__(self, tiny: TinyDefaults, capacity_pairs: int | None = None, trust_remote_code: bool | None = None):
        if capacity_pairs is None:
            capacity_pairs = int(os.environ.get("SWIRL_SPACE_CACHE_PAIRS", "4"))
        # a request uses two pairs (A and B): keep at least those in memory
        self.capacity = max(4, 2 * capacity_pairs)
        self.tiny = tiny
        self.trust_remote_code = trust_remote_code_enabled() if trust_remote_code is None else trust_remote_code
        self.max_params = float(os.environ.get("SWIRL_SPACE_MAX_PARAMS", "3e9"))
        self._entries: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        return list(self._entries)

    def get(self, reference: str, what: str = "Model") -> LoadedModel:
        """The loaded model of `reference` (from the cache when there); an `InputError` naming `what` otherwise."""
        reference = check_reference(reference, what)
        with self._lock:
            if reference in self._entries:
                self._entries.move_to_end(reference)
                return self._entries[reference]
            loading = self._loading.setdefault(reference, threading.Lock())
        with loading:  # one load per reference, even with concurrent requests
            with self._lock:
                if reference in self._entries:
                    self._entries.move_to_end(reference)
                    return self._entries[reference]
            entry = self._load(reference, what)
            with self._lock:
                self._entries[reference] = entry
                self._entries.move_to_end(reference)
                while len(self._entries) > self.capacity:
                    evicted, _ = self._entries.popitem(last=False)
                    logger.info("Model cache: evicted %s", evicted)
                self._loading.pop(reference, None)
        return entry

    # -------------------------------------------------------------------------------------------------- loading
    def _locate(self, reference: str, what: str) -> tuple[str, str | None, Path | None]:
        """(name_or_path, revision, local folder or None) of a reference, or an `InputError`."""
        try:
            tiny = self.tiny.resolve(reference)
        except ImportError as err:
            raise InputError(f"{what}: the tiny default {reference!r} needs a module this install lacks "
                             f"({_first_line(err)}).") from None
        if tiny is not None:
            return str(tiny), None, tiny
        if reference.startswith("tiny:"):
            names = ", ".join(sorted(TINY_TEXT) + sorted(TINY_IMAGE))
            raise InputError(f"{what}: unknown tiny default {reference!r}; the tiny defaults are {names}.")
        path = Path(reference).expanduser()
        if path.exists():
            if not path.is_dir():
                raise InputError(f"{what}: {reference!r} is a file; give the model's folder (with config.json).")
            roots = _local_roots()
            resolved = path.resolve()
            allowed = [self.tiny.cache_dir.resolve()] + (roots or [])
            if roots is not None and not any(resolved == r or r in resolved.parents for r in allowed):
                raise InputError(f"{what}: local folders outside {', '.join(str(r) for r in roots)} are not allowed "
                                 "here (SWIRL_SPACE_LOCAL_ROOTS).")
            if not (path / "config.json").is_file():
                raise InputError(f"{what}: the folder {reference!r} has no config.json; give a model folder, e.g. a "
                                 "SWIRL run's phase folder RUN/iter-1-fwm.")
            if not any(path.glob("*.safetensors")):
                raise InputError(f"{what}: the folder {reference!r} has no .safetensors weights; only safetensors are "
                                 "loaded (convert pickled .bin weights first).")
            return str(path), None, path
        if reference.startswith(("/", "./", "../", "~", "\\")) or os.sep + os.sep in reference:
            raise InputError(f"{what}: no such folder {reference!r}.")
        repo, revision = reference, None
        if "@" in reference:
            repo, _, revision = reference.rpartition("@")
            if not repo or not revision or not _REVISION.match(revision):
                raise InputError(f"{what}: {reference!r} is not of the form id@revision.")
        if not _HUB_ID.match(repo) or ".." in repo:
            raise InputError(f"{what}: {reference!r} is neither an existing local folder nor a Hub model id "
                             "(org/name, optionally @revision).")
        return repo, revision, None

    def _check_hub_size(self, repo: str, revision: str | None, what: str) -> None:
        try:
            from huggingface_hub import get_safetensors_metadata

            metadata = get_safetensors_metadata(repo, revision=revision)
            count = sum(metadata.parameter_count.values())
        except Exception:  # offline, private, no safetensors index...: from_pretrained reports it
            return
        if count > self.max_params:
            raise InputError(f"{what}: {repo!r} has {count / 1e9:.1f}B parameters; this Space accepts at most "
                             f"{self.max_params / 1e9:.1f}B (SWIRL_SPACE_MAX_PARAMS).")

    def _load(self, reference: str, what: str) -> LoadedModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from trl_swirl.partner import partner_length_limit
        from trl_swirl.templates import SwirlTemplates

        name, revision, local = self._locate(reference, what)
        if local is None:
            self._check_hub_size(name, revision, what)
        started = time.perf_counter()
        kwargs = dict(revision=revision, trust_remote_code=self.trust_remote_code)
        try:
            model = AutoModelForCausalLM.from_pretrained(name, use_safetensors=True, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
        except Exception as err:  # noqa: BLE001 - every load failure is the user's reference, reported plainly
            message = _first_line(err)
            if "trust_remote_code" in str(err):
                hint = (" This model needs its own code from the Hub, which this Space does not run unless its owner "
                        "sets SWIRL_TRUST_REMOTE_CODE=1.")
            elif local is None:
                hint = (" It is not a local folder, and the Hub has no such model (or revision), it is private, "
                        "or the Hub cannot be reached.")
            else:
                hint = ""
            raise InputError(f"{what}: could not load {reference!r}.{hint} ({message})") from None
        try:
            import torch

            if torch.cuda.is_available():
                model.to("cuda")
        except Exception:  # pragma: no cover - CPU-only installs
            pass
        model.eval()
        model.requires_grad_(False)
        templates = (_run_templates(local) if local is not None else None) or SwirlTemplates()
        seconds = time.perf_counter() - started
        logger.info("Loaded %s in %.2fs", reference, seconds)
        return LoadedModel(reference, model, tokenizer, templates, partner_length_limit(model, tokenizer), seconds)


# ---------------------------------------------------------------------------------------------- the operations
@dataclass
class SideResult:
    """One side's answer: a predicted state (text), an inferred action, or a roll-out (list of states)."""

    output: Any
    score: float | None = None
    seconds: float = 0.0
    image: Any = None  # PIL image(s) of image predictions


@dataclass
class Result:
    sides: dict[str, SideResult]
    truth: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)


def _prompt(entry: LoadedModel, direction: str, **fields) -> str:
    """The generation prompt of `entry` for `direction` (the chat template applied for conversational runs)."""
    text = entry.templates.prompt_text(direction, **fields)
    if entry.templates.prompt_format == "conversational":
        if getattr(entry.tokenizer, "chat_template", None) is None:
            raise InputError(f"{entry.reference!r} was trained with conversational prompts but its tokenizer has no "
                             "chat template.")
        text = entry.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                   add_generation_prompt=True)
    return text


def _check_length(entry: LoadedModel, prompt: str, new_tokens: int, what: str, notes: list[str]) -> None:
    ids = entry.tokenizer(prompt, add_special_tokens=True)["input_ids"]
    unk = entry.tokenizer.unk_token_id
    if unk is not None and unk in ids:
        note = (f"{what}: some words are unknown to {entry.reference!r}'s tokenizer and read as "
                f"{entry.tokenizer.unk_token}.")
        if note not in notes:
            notes.append(note)
    if entry.max_length is not None and len(ids) + new_tokens > entry.max_length:
        raise InputError(f"{what}: the prompt is {len(ids)} tokens; with {new_tokens} new tokens it exceeds the "
                         f"{entry.max_length}-token limit of {entry.reference!r}. Shorten the state or lower max new "
                         "tokens.")


def _score(entry: LoadedModel, phase: str, what: str, **columns) -> float:
    """`PartnerReward` of `entry` (phase `fwm`: the IDM scores the action; `idm`: the FWM scores the next state)."""
    with entry.lock:
        try:
            return float(entry.partner(phase)(**columns)[0])
        except ValueError as err:
            raise InputError(f"{what}: could not score with {entry.reference!r}: {_first_line(err)}") from None


def generate_text(entry: LoadedModel, prompt: str, *, max_new_tokens: int, temperature: float,
                  suppress_tokens: list[int] | None = None) -> str:
    """One completion (greedy at temperature 0): `trl_swirl.evaluation.generate`, or, with `suppress_tokens`, the same
    with those token ids forbidden (image models writing an action)."""
    from trl_swirl.evaluation import generate

    sample = temperature > 0
    with entry.lock:
        if not suppress_tokens:
            return generate(entry.model, entry.tokenizer, [prompt], max_new_tokens=max_new_tokens, batch_size=1,
                            do_sample=sample, temperature=temperature if sample else 1.0)[0]
        import torch

        tokenizer = entry.tokenizer
        enc = tokenizer([prompt], return_tensors="pt", add_special_tokens=True)
        device = entry.model.get_input_embeddings().weight.device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=sample, suppress_tokens=suppress_tokens,
                      pad_token_id=pad)
        if sample:
            kwargs["temperature"] = temperature
        with torch.no_grad():
            out = entry.model.generate(input_ids=enc["input_ids"].to(device),
                                       attention_mask=enc["attention_mask"].to(device), **kwargs)
        return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _environment_of(state: str):
    """The built-in text environment `state` belongs to, or None."""
    from trl_swirl.envs import get_environment

    for name in TEXT_ENVIRONMENTS:
        env = get_environment(name)
        if env.is_valid_state(state):
            return env
    return None


def is_whole_multiple(size: tuple[int, int], base: tuple[int, int]) -> bool:
    """Whether `size` is `base` enlarged by one whole factor (such an image is downscaled without a warning: the box
    filter undoes a nearest-neighbour enlargement exactly)."""
    (w, h), (bw, bh) = size, base
    return w % bw == 0 and h % bh == 0 and w // bw == h // bh >= 1


def _norm(text: str) -> str:
    return " ".join(str(text).split())


def _mark(prediction: str, truth: str) -> str:
    return "✓" if _norm(prediction) == _norm(truth) else "✗"


class SwirlSpace:
    """The Space's operations on two model pairs, A and B. Each method validates its inputs (an `InputError` with a
    readable message otherwise) and returns a [`Result`] with one [`SideResult`] per side."""

    def __init__(self, cache_dir: str | os.PathLike | None = None, *, text_spec: TinySpec = TEXT_SPEC,
                 image_spec: TinySpec = IMAGE_SPEC, cache_pairs: int | None = None,
                 trust_remote_code: bool | None = None):
        self.tiny = TinyDefaults(cache_dir, text_spec, image_spec)
        self.cache = ModelCache(self.tiny, cache_pairs, trust_remote_code)

    # ---------------------------------------------------------------------------------------------- availability
    @staticmethod
    def image_support() -> str | None:
        """None when image states are available, else the reason (a missing module)."""
        try:
            import PIL.Image  # noqa: F401

            import trl_swirl.codecs  # noqa: F401
            import trl_swirl.envs.visual  # noqa: F401
            import trl_swirl.visual  # noqa: F401
        except ImportError as err:
            return f"Image states need `trl_swirl.codecs` and `trl_swirl.visual` with Pillow ({_first_line(err)})."
        return None

    def warm_up(self, images: bool = True) -> None:
        """Build (or find on disk) the tiny defaults and load them, so the first request is fast."""
        for ref in (*DEFAULT_TEXT_PAIRS["A"], *DEFAULT_TEXT_PAIRS["B"]):
            self.cache.get(ref)
        if images and self.image_support() is None:
            for ref in (*DEFAULT_IMAGE_PAIRS["A"], *DEFAULT_IMAGE_PAIRS["B"]):
                self.cache.get(ref)

    def _pairs(self, a_fwm, a_idm, b_fwm, b_idm) -> dict[str, tuple[LoadedModel, LoadedModel]]:
        refs = {"A": (a_fwm, a_idm), "B": (b_fwm, b_idm)}
        for side, (fwm, idm) in refs.items():  # check every reference before loading anything
            check_reference(fwm, f"Model {side} (FWM)")
            check_reference(idm, f"Model {side} (IDM)")
        return {side: (self.cache.get(fwm, f"Model {side} (FWM)"), self.cache.get(idm, f"Model {side} (IDM)"))
                for side, (fwm, idm) in refs.items()}

    # ------------------------------------------------------------------------------------------------------ text
    def _generate_and_score(self, pairs, role, prompt_fields, columns, temperature, max_new_tokens) -> Result:
        """For each side, the `role` model ("fwm" predicts, "idm" infers) generates from its prompt and the other
        model of the pair scores the output (`PartnerReward` in phase `role`)."""
        result = Result({})
        for side, (fwm, idm) in pairs.items():
            started = time.perf_counter()
            generator, scorer = (fwm, idm) if role == "fwm" else (idm, fwm)
            gen_label, score_label = ("FWM", "IDM") if role == "fwm" else ("IDM", "FWM")
            prompt = _prompt(generator, role, **prompt_fields)
            _check_length(generator, prompt, max_new_tokens, f"Model {side} ({gen_label})", result.notes)
            output = generate_text(generator, prompt, max_new_tokens=max_new_tokens, temperature=temperature)
            score = _score(scorer, role, f"Model {side} ({score_label})", completions=[output], **columns)
            result.sides[side] = SideResult(output, score, time.perf_counter() - started)
        return result

    def predict(self, state, action, a_fwm, a_idm, b_fwm, b_idm, temperature=0.0, max_new_tokens=64) -> Result:
        """Each side's FWM predicts the next state; the score is that side's IDM log-probability of `action` given
        (state, prediction) (`PartnerReward`, phase `fwm`: mean per token, EOS included, clipped at -10)."""
        state = check_text(state, "state", MAX_STATE_CHARS)
        action = check_text(action, "action", MAX_ACTION_CHARS)
        temperature, max_new_tokens = check_temperature(temperature), check_max_new_tokens(max_new_tokens)
        pairs = self._pairs(a_fwm, a_idm, b_fwm, b_idm)
        result = self._generate_and_score(pairs, "fwm", {"state": state, "action": action},
                                          {"state": [state], "action": [action]}, temperature, max_new_tokens)
        env = _environment_of(state)
        if env is not None:
            try:
                truth = env.apply(state, action)
                marks = " · ".join(f"{s} {_mark(r.output, truth)}" for s, r in result.sides.items())
                result.truth = f"**{env.name} simulator:** `{truth}`  ({marks})"
            except ValueError as err:
                result.truth = f"**{env.name} simulator:** the action is not valid here ({_first_line(err)})."
        return result

    def infer(self, state, next_state, a_fwm, a_idm, b_fwm, b_idm, temperature=0.0, max_new_tokens=64) -> Result:
        """Each side's IDM infers the action; the score is that side's FWM log-probability of `next_state` given
        (state, inferred action) (`PartnerReward`, phase `idm`)."""
        state = check_text(state, "state", MAX_STATE_CHARS)
        next_state = check_text(next_state, "next state", MAX_STATE_CHARS)
        temperature, max_new_tokens = check_temperature(temperature), check_max_new_tokens(max_new_tokens)
        pairs = self._pairs(a_fwm, a_idm, b_fwm, b_idm)
        result = self._generate_and_score(pairs, "idm", {"state": state, "next_state": next_state},
                                          {"state": [state], "next_state": [next_state]}, temperature, max_new_tokens)
        env = _environment_of(state)
        if env is not None:
            try:
                actions = [a for a in env.valid_actions(state) if env.is_consistent(state, a, next_state)]
            except ValueError:
                actions = []
            if actions:
                marks = " · ".join(f"{s} {'✓' if env.is_consistent(state, r.output, next_state) else '✗'}"
                                   for s, r in result.sides.items())
                listed = ", ".join(f"`{a}`" for a in actions)
                result.truth = f"**{env.name} simulator:** actions giving this next state: {listed}  ({marks})"
            else:
                result.truth = f"**{env.name} simulator:** no single valid action leads to this next state."
        return result

    def rollout(self, state, actions, a_fwm, a_idm, b_fwm, b_idm, temperature=0.0, max_new_tokens=64) -> Result:
        """Each side's FWM applied step by step: state_{t+1} = FWM(state_t, action_t). A side stops early when its
        FWM predicts an empty state. `SideResult.output` is the list of predicted states (without the start)."""
        state = check_text(state, "start state", MAX_STATE_CHARS)
        actions = check_actions(actions)
        temperature, max_new_tokens = check_temperature(temperature), check_max_new_tokens(max_new_tokens)
        pairs = self._pairs(a_fwm, a_idm, b_fwm, b_idm)
        result = Result({})
        for side, (fwm, _) in pairs.items():
            started = time.perf_counter()
            states, current = [], state
            for step, action in enumerate(actions, 1):
                prompt = _prompt(fwm, "fwm", state=current, action=action)
                _check_length(fwm, prompt, max_new_tokens, f"Model {side} (FWM), step {step}", result.notes)
                current = generate_text(fwm, prompt, max_new_tokens=max_new_tokens, temperature=temperature)
                states.append(current)
                if not current:
                    result.notes.append(f"Model {side}: the FWM predicted an empty state at step {step}; its "
                                        "roll-out stops there.")
                    break
            result.sides[side] = SideResult(states, None, time.perf_counter() - started)
        env = _environment_of(state)
        if env is not None:
            lines, current = [], state
            for step, action in enumerate(actions, 1):
                try:
                    current = env.apply(current, action)
                except ValueError as err:
                    lines.append(f"{step}. `{action}` is not valid here ({_first_line(err)}); the simulator stops.")
                    break
                marks = " · ".join(
                    f"{s} {_mark(r.output[step - 1], current) if step <= len(r.output) else '–'}"
                    for s, r in result.sides.items())
                lines.append(f"{step}. `{current}`  ({marks})")
            result.truth = f"**{env.name} simulator:**\n\n" + "\n".join(lines)
        return result

    # ---------------------------------------------------------------------------------------------------- images
    def _codec(self, grid, patch_size):
        reason = self.image_support()
        if reason is not None:
            raise InputError(reason)
        from trl_swirl.codecs import get_codec

        values = []
        for name, value, top in (("grid", grid, MAX_CODEC_GRID), ("patch size", patch_size, MAX_PATCH_SIZE)):
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise InputError(f"The codec {name} must be a whole number, got {value!r}.") from None
            if number != int(number) or not 1 <= number <= top:
                raise InputError(f"The codec {name} must be a whole number from 1 to {top}, got {value}.")
            values.append(int(number))
        return get_codec("palette", grid=(values[0], values[0]), patch_size=values[1])

    def _image_state(self, image, codec, what: str, notes: list[str]) -> str:
        """An uploaded image as state text; an image of another size is resized to the codec's (with a note)."""
        import numpy as np
        from PIL import Image

        if image is None:
            raise InputError(f"The {what} image is missing: upload one (or pick an example below).")
        if isinstance(image, (str, os.PathLike)):
            try:
                image = Image.open(image)
            except (OSError, ValueError) as err:
                raise InputError(f"The {what} image could not be read ({_first_line(err)}).") from None
        elif not isinstance(image, Image.Image):
            array = np.asarray(image)
            if array.ndim not in (2, 3) or array.size == 0:
                raise InputError(f"The {what} image has shape {array.shape}; expected height x width (x channels).")
            image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise InputError(f"The {what} image is {width}x{height} pixels; the limit is {MAX_IMAGE_PIXELS:,} pixels.")
        cw, ch = codec.image_size
        if not is_whole_multiple((width, height), (cw, ch)):
            notes.append(f"The {what} image is {width}x{height} pixels, not the codec's {cw}x{ch} (or a whole "
                         "multiple of it); it was resized to that size (box filter) before encoding.")
        return codec.encode(image.convert("RGB"))

    def _image_pairs(self, codec, a_fwm, a_idm, b_fwm, b_idm):
        pairs = self._pairs(a_fwm, a_idm, b_fwm, b_idm)
        for side, entries in pairs.items():
            for role, entry in zip(("FWM", "IDM"), entries):
                try:
                    codec.image_token_ids(entry.tokenizer)
                except ValueError:
                    raise InputError(
                        f"Model {side} ({role}) {entry.reference!r} is not an image model: its tokenizer lacks the "
                        f"palette codec's tokens (<img_0> ... <img_{codec.codebook_size - 1}>, <boi>, <eoi>). Use the "
                        "text tabs for text models.") from None
        return pairs

    @staticmethod
    def display(image, size: int = DISPLAY_SIZE, border: int = 2):
        """`image` enlarged by a whole factor (nearest neighbour) to about `size` pixels, with a grey `border` so
        that a white image stays visible on a white page (for display only: the state is the codec's image)."""
        from PIL import Image, ImageOps

        factor = max(1, size // max(image.size))
        image = image.resize((image.size[0] * factor, image.size[1] * factor), resample=Image.Resampling.NEAREST)
        return ImageOps.expand(image, border=border, fill=(136, 136, 136)) if border else image

    def _predict_image(self, fwm: LoadedModel, codec, state: str, action: str, temperature: float, what: str,
                       notes: list[str]) -> str:
        from trl_swirl.visual import generate_images

        prompt = fwm.templates.prompt_text("fwm", state=state, action=action)
        _check_length(fwm, prompt + codec.boi_token, codec.num_tokens, what, notes)
        with fwm.lock:
            return generate_images(fwm.model, fwm.tokenizer, codec, [prompt], batch_size=1,
                                   do_sample=temperature > 0, temperature=temperature or 1.0)[0]

    def predict_image(self, state_image, action, a_fwm, a_idm, b_fwm, b_idm, temperature=0.0, grid=6,
                      patch_size=4) -> Result:
        """Image version of [`predict`]: the FWM writes exactly one image (only image tokens are allowed)."""
        codec = self._codec(grid, patch_size)
        action = check_text(action, "action", MAX_ACTION_CHARS)
        temperature = check_temperature(temperature)
        result = Result({})
        state = self._image_state(state_image, codec, "state", result.notes)
        pairs = self._image_pairs(codec, a_fwm, a_idm, b_fwm, b_idm)
        for side, (fwm, idm) in pairs.items():
            started = time.perf_counter()
            prediction = self._predict_image(fwm, codec, state, action, temperature, f"Model {side} (FWM)",
                                             result.notes)
            score = _score(idm, "fwm", f"Model {side} (IDM)", completions=[prediction], state=[state],
                           action=[action])
            result.sides[side] = SideResult(prediction, score, time.perf_counter() - started,
                                            image=codec.decode(prediction))
        world = self._world_for(codec)
        if world is not None and world.is_valid_state(state):
            try:
                truth = world.apply(state, action)
                marks = " · ".join(f"{s} {_mark(r.output, truth)}" for s, r in result.sides.items())
                result.truth = f"**shapes simulator:** {world.describe(truth)}  ({marks})"
            except ValueError as err:
                result.truth = f"**shapes simulator:** the action is not valid here ({_first_line(err)})."
        return result

    def infer_image(self, state_image, next_image, a_fwm, a_idm, b_fwm, b_idm, temperature=0.0, max_new_tokens=16,
                    grid=6, patch_size=4) -> Result:
        """Image version of [`infer`]: the IDM writes text only (the codec's tokens are suppressed)."""
        from trl_swirl.visual import text_generation_kwargs

        codec = self._codec(grid, patch_size)
        temperature, max_new_tokens = check_temperature(temperature), check_max_new_tokens(max_new_tokens)
        result = Result({})
        state = self._image_state(state_image, codec, "state", result.notes)
        next_state = self._image_state(next_image, codec, "next state", result.notes)
        pairs = self._image_pairs(codec, a_fwm, a_idm, b_fwm, b_idm)
        for side, (fwm, idm) in pairs.items():
            started = time.perf_counter()
            prompt = idm.templates.prompt_text("idm", state=state, next_state=next_state)
            _check_length(idm, prompt, max_new_tokens, f"Model {side} (IDM)", result.notes)
            suppress = text_generation_kwargs(codec, idm.tokenizer)["suppress_tokens"]
            action = generate_text(idm, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                                   suppress_tokens=suppress)
            score = _score(fwm, "idm", f"Model {side} (FWM)", completions=[action], state=[state],
                           next_state=[next_state])
            result.sides[side] = SideResult(action, score, time.perf_counter() - started)
        world = self._world_for(codec)
        if world is not None and world.is_valid_state(state):
            try:
                actions = [a for a in world.valid_actions(state) if world.is_consistent(state, a, next_state)]
            except ValueError:
                actions = []
            if actions:
                marks = " · ".join(f"{s} {'✓' if world.is_consistent(state, r.output, next_state) else '✗'}"
                                   for s, r in result.sides.items())
                result.truth = f"**shapes simulator:** {', '.join(f'`{a}`' for a in actions)}  ({marks})"
        return result

    def rollout_image(self, state_image, actions, a_fwm, a_idm, b_fwm, b_idm, temperature=0.0, grid=6,
                      patch_size=4) -> Result:
        """Image version of [`rollout`]: `SideResult.output` lists the predicted state texts, `.image` their images."""
        codec = self._codec(grid, patch_size)
        actions = check_actions(actions)
        temperature = check_temperature(temperature)
        result = Result({})
        state = self._image_state(state_image, codec, "start state", result.notes)
        pairs = self._image_pairs(codec, a_fwm, a_idm, b_fwm, b_idm)
        for side, (fwm, _) in pairs.items():
            started = time.perf_counter()
            states, current = [], state
            for step, action in enumerate(actions, 1):
                current = self._predict_image(fwm, codec, current, action, temperature,
                                              f"Model {side} (FWM), step {step}", result.notes)
                states.append(current)
            result.sides[side] = SideResult(states, None, time.perf_counter() - started,
                                            image=[codec.decode(s) for s in states])
        return result

    def _world_for(self, codec):
        """The default shapes world when `codec` is its codec (for the ground truth), else None."""
        try:
            world = shapes_world(self.tiny.specs["image"])
        except Exception:  # noqa: BLE001 - the ground truth is optional
            return None
        same = tuple(world.codec.grid) == tuple(codec.grid) and world.codec.patch_size == codec.patch_size
        return world if same else None


# ------------------------------------------------------------------------------------------------------ examples
def text_examples(per_environment: int = 2, seed: int = 1234) -> dict[str, list[dict[str, str]]]:
    """Held-out transitions of each built-in text environment (another seed than the tiny defaults' data):
    `{env: [{"state", "action", "next_state", "actions", "start"}]}` (the last two for roll-outs)."""
    from trl_swirl.envs import get_environment

    out = {}
    for name in TEXT_ENVIRONMENTS:
        env = get_environment(name)
        rows = []
        for trajectory in env.trajectories(per_environment, 4, seed=seed):
            states, actions = trajectory["states"], trajectory["actions"]
            rows.append({"state": states[0], "action": actions[0], "next_state": states[1], "start": states[0],
                         "actions": "\n".join(actions)})
        out[name] = rows
    return out


def image_examples(count: int = 3, seed: int = 1234, spec: TinySpec = IMAGE_SPEC) -> list[dict[str, Any]]:
    """Held-out transitions of the default shapes world, with PIL images enlarged to 96 pixels (nearest neighbour):
    `state`, `next_state` (images), `action`, `actions` (one per line), `description`."""
    world = shapes_world(spec)
    rows = []
    for trajectory in world.trajectories(count, 3, seed=seed):
        states, actions = trajectory["states"], trajectory["actions"]
        rows.append({"state": SwirlSpace.display(world.render(states[0]), 96, border=0),
                     "next_state": SwirlSpace.display(world.render(states[1]), 96, border=0), "action": actions[0],
                     "actions": "\n".join(actions), "description": world.describe(states[0])})
    return rows
