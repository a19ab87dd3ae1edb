"""Sharing SWIRL checkpoints and datasets on the Hugging Face Hub.

A SWIRL run folder holds one folder per finished phase (``RUN/iter-0-warmstart-fwm``, ``RUN/iter-0-warmstart-idm``,
``RUN/iter-1-fwm``, ``RUN/iter-1-idm``, ...), each a `transformers` model saved with safetensors, its tokenizer and a
``swirl_record.json``. This module pushes them to two repos, ``{prefix}-fwm`` and ``{prefix}-idm``, one **branch per
phase** (``iter-2-fwm``, ``iter-0-warmstart``, ...) with ``main`` pointing at the latest phase, each with a model card:

    >>> push_run("runs/physics", "user/swirl-physics")  # doctest: +SKIP
    >>> # later: AutoModelForCausalLM.from_pretrained("user/swirl-physics-fwm", revision="iter-2-fwm")

Guarantees:

* nothing already on the Hub is overwritten: a phase branch that exists with other files is refused, one that holds
  exactly the files of the folder is a no-op ("already-pushed"), so a crashed push can simply be run again;
* weights travel as safetensors only (a pickle file in a phase folder is an error), and optimizer states, RNG states
  and ``checkpoint-*`` folders are never uploaded;
* no token reaches a card, a record or an uploaded file (:func:`scrub_secrets`), and none is logged;
* network failures (connection errors, HTTP 5xx, 429) are retried with exponential backoff; a final failure raises
  :class:`HubPushError`, the local checkpoint is left intact and ``trl-swirl push RUN`` pushes what is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .templates import DEFAULT_FWM_TEMPLATE, DEFAULT_IDM_TEMPLATE
from .trainer import SWIRL_PAPER, split_model_revision

logger = logging.getLogger(__name__)

__all__ = [
    "HubPushError",
    "RECORD_NAME",
    "UPLOAD_ALLOW_PATTERNS",
    "UPLOAD_IGNORE_PATTERNS",
    "build_push_parser",
    "download_phase",
    "find_phase_folders",
    "main_push",
    "prepare_upload_folder",
    "push_dataset",
    "push_phase",
    "push_run",
    "read_record",
    "record_revision",
    "render_dataset_card",
    "render_model_card",
    "repo_ids",
    "resolve_model_reference",
    "revision_name",
    "scrub_secrets",
    "upload_allow_patterns",
]

RECORD_NAME = "swirl_record.json"
CARD_NAME = "README.md"
TEMPLATES_DIR = Path(__file__).parent / "model_cards"
MODEL_CARD_TEMPLATE = TEMPLATES_DIR / "swirl_model_card.md"
DATASET_CARD_TEMPLATE = TEMPLATES_DIR / "swirl_dataset_card.md"

PHASES = ("warmstart", "fwm", "idm")
ROLES = ("fwm", "idm")
_PHASE_RANK = {"warmstart": 0, "fwm": 1, "idm": 2}
_ROLE_NAMES = {"fwm": "forward world model", "idm": "inverse dynamics model"}
_DIRECTIONS = {"fwm": "P(next_state | state, action)", "idm": "Q(action | state, next_state)"}
_OTHER = {"fwm": "idm", "idm": "fwm"}
MODEL_TAGS = ("trl", "swirl", "world-model")  # + the role and the paper
PAPER_TAG = f"arxiv:{SWIRL_PAPER['id']}"

# What a phase push uploads: top-level files of the phase folder matching these patterns (nothing below it) ...
UPLOAD_ALLOW_PATTERNS = [
    CARD_NAME,
    RECORD_NAME,
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
]
# ... and never these (trainer states, RNG states, pickles, intermediate checkpoints, lock and temporary files).
UPLOAD_IGNORE_PATTERNS = [
    "checkpoint-*",
    "optimizer.*",
    "scheduler.*",
    "scaler.*",
    "rng_state*",
    "trainer_state.json",
    "training_args.*",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.pkl",
    "*.pickle",
    "*.ckpt",
    ".*",
    "*.lock",
    "*.tmp",
]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")

_REVISION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HF_TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{20,}")
# keys that name special tokens of a tokenizer, not credentials
_NOT_SECRETS = {"pad_token", "eos_token", "bos_token", "unk_token", "sep_token", "cls_token", "mask_token"}
_SECRET_KEYS = {"token", "api_key", "apikey", "password", "passwd", "secret", "authorization", "credentials"}
_SECRET_SUFFIXES = ("_token", "_api_key", "_apikey", "_password", "_secret", "_secret_key", "_credentials")
_REDACTED = "<redacted>"


class HubPushError(RuntimeError):
    """A push that failed after its retries; the local checkpoint is intact and can be pushed again."""

    def __init__(self, message: str, *, folder=None, repo_id=None, revision=None, attempts=0):
        super().__init__(message)
        self.folder, self.repo_id, self.revision, self.attempts = folder, repo_id, revision, attempts


# ----------------------------------------------------------------------------------------------------- names
def revision_name(iteration: int, phase: str) -> str:
    """The Hub branch of a SWIRL phase: ``revision_name(2, "fwm") == "iter-2-fwm"``,
    ``revision_name(0, "warmstart") == "iter-0-warmstart"``."""
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        raise ValueError(f"`iteration` must be an integer >= 0, got {iteration!r}.")
    if phase not in PHASES:
        raise ValueError(f"`phase` must be one of {list(PHASES)}, got {phase!r}.")
    return f"iter-{iteration}-{phase}"


def repo_ids(prefix: str) -> dict[str, str]:
    """The two repos of a run: ``repo_ids("user/swirl-physics") == {"fwm": "user/swirl-physics-fwm", "idm": ...}``."""
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"The repo prefix must be a non-empty string like 'user/swirl-physics', got {prefix!r}.")
    ids = {role: f"{prefix}-{role}" for role in ROLES}
    for candidate in (prefix, *ids.values()):
        try:
            validate_repo_id(candidate)
        except HFValidationError as err:
            raise ValueError(
                f"Invalid repo prefix {prefix!r}: {candidate!r} is not a valid Hub repo id ({err}). Use "
                "'namespace/name' with letters, digits, '-', '_' or '.', at most 92 characters in the name so that "
                "the '-fwm' / '-idm' suffixes fit."
            ) from None
    return ids


def _check_repo_id(repo_id: str) -> str:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"Invalid Hub repo id {repo_id!r}: {err}") from None
    return repo_id


def _check_revision(revision: str) -> str:
    if not isinstance(revision, str) or not _REVISION_RE.fullmatch(revision) or ".." in revision:
        raise ValueError(
            f"Invalid revision {revision!r}: use a branch name of letters, digits, '.', '_' or '-' "
            "(e.g. 'iter-2-fwm')."
        )
    return revision


def record_revision(record: dict) -> str:
    """The branch of the phase described by a ``swirl_record.json``."""
    return revision_name(record.get("iteration"), record.get("phase"))


def _is_repo_id(value) -> bool:
    if not isinstance(value, str) or not value or os.path.exists(value):
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


# ----------------------------------------------------------------------------------------------------- secrets
def _is_secret_key(key) -> bool:
    if not isinstance(key, str):
        return False
    k = key.lower()
    if k in _NOT_SECRETS:
        return False
    return k in _SECRET_KEYS or k.endswith(_SECRET_SUFFIXES)


def scrub_secrets(obj: Any) -> Any:
    """A copy of `obj` (dicts, lists, tuples, strings) without credentials.

    Keys named like a credential (``token``, ``hub_token``, ``*_token``, ``api_key``, ``password``, ``*_secret``,
    ...; a tokenizer's ``pad_token`` / ``eos_token``... are kept) are dropped, and a Hugging Face token
    (``hf_...``) inside any string is replaced by ``<redacted>``.
    """
    if isinstance(obj, dict):
        return {k: scrub_secrets(v) for k, v in obj.items() if not _is_secret_key(k)}
    if isinstance(obj, list):
        return [scrub_secrets(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(scrub_secrets(v) for v in obj)
    if isinstance(obj, str):
        return _HF_TOKEN_RE.sub(_REDACTED, obj)
    return obj


def _redact(text: str, token: str | None) -> str:
    text = _HF_TOKEN_RE.sub(_REDACTED, str(text))
    if isinstance(token, str) and token:
        text = text.replace(token, _REDACTED)
    return text


# ----------------------------------------------------------------------------------------------------- records
def read_record(folder) -> dict:
    path = Path(folder) / RECORD_NAME
    if not path.is_file():
        raise ValueError(
            f"{folder} has no {RECORD_NAME}: it is not a finished SWIRL phase folder (the SWIRL loop writes the "
            "record when a phase ends)."
        )
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    for key in ("iteration", "phase", "role"):
        if key not in record:
            raise ValueError(f"{path} has no {key!r}.")
    if record["role"] not in ROLES:
        raise ValueError(f"{path}: 'role' must be one of {list(ROLES)}, got {record['role']!r}.")
    return record


def _json_text(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def _write_json_atomic(path, obj) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_json_text(obj))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _update_record(folder, **changes) -> dict:
    path = Path(folder) / RECORD_NAME
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    for key, value in changes.items():
        if value is _DELETE:
            record.pop(key, None)
        else:
            record[key] = value
    _write_json_atomic(path, scrub_secrets(record))
    return record


_DELETE = object()
_PUSH_KEYS = ("pushed", "push_error")  # local bookkeeping, never uploaded


# ----------------------------------------------------------------------------------------------------- cards
def _md_cell(value) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "\\n").replace("\r", "")
    return f"`{text}`" if "`" not in text and text else text or "—"


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _hub_id(ref) -> str | None:
    """`ref` without its `@revision` if it is a Hub repo id (not a local path), else None."""
    if not isinstance(ref, str) or not ref or os.path.exists(ref):
        return None
    repo, _ = split_model_revision(ref)
    return repo if _is_repo_id(repo) else None


def render_model_card(folder, *, repo_id: str | None = None, revision: str | None = None,
                      record: dict | None = None) -> ModelCard:
    """The model card (README.md) of a SWIRL phase folder, from ``trl_swirl/model_cards/swirl_model_card.md``.

    Its metadata holds ``library_name="transformers"``, the SWIRL tags, ``base_model`` (when a Hub id), the datasets
    (those that are Hub ids) and the record's metrics as ``model-index`` results. Credentials are scrubbed first.
    """
    folder = Path(folder)
    record = scrub_secrets(record if record is not None else read_record(folder))
    role, phase, iteration = record["role"], record["phase"], record["iteration"]
    revision = revision or record_revision(record)
    templates = record.get("templates") or {}
    template = templates.get(f"{role}_template") or (DEFAULT_FWM_TEMPLATE if role == "fwm" else DEFAULT_IDM_TEMPLATE)
    other_template = templates.get(f"{_OTHER[role]}_template")
    model_name = repo_id.split("/")[-1] if repo_id else f"swirl-{role}-{revision}"

    base_model = record.get("base_model")
    base_model_id = _hub_id(base_model)
    datasets = [str(d) for d in (record.get("datasets") or [])]
    hub_datasets = [d for d in datasets if _is_repo_id(d)]

    metrics = {k: v for k, v in (record.get("metrics") or {}).items() if _numeric(v)}
    task_name = "World modelling (next-state prediction)" if role == "fwm" else "Inverse dynamics (action inference)"
    eval_results = [
        EvalResult(
            task_type="text-generation",
            task_name=task_name,
            dataset_type=hub_datasets[0] if hub_datasets else "swirl",
            dataset_name=", ".join(datasets) if datasets else "SWIRL evaluation",
            metric_type=name,
            metric_name=name,
            metric_value=value,
        )
        for name, value in metrics.items()
    ]
    partner = record.get("partner") or {}
    partner_repo, partner_rev = partner.get("repo_id"), partner.get("revision")
    swirl_meta = {"iteration": iteration, "phase": phase, "role": role, "revision": revision}
    if partner_repo:
        swirl_meta["partner"] = f"{partner_repo}@{partner_rev}" if partner_rev else partner_repo
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model_id,
        datasets=hub_datasets or None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=[*MODEL_TAGS, role, PAPER_TAG],
        eval_results=eval_results or None,
        swirl=swirl_meta,
    )

    if partner_repo:
        link = f"https://huggingface.co/{partner_repo}" + (f"/tree/{partner_rev}" if partner_rev else "")
        partner_cell = f"[{partner_repo}]({link})" + (f" at revision `{partner_rev}`" if partner_rev else "")
    elif partner.get("name"):
        partner_cell = f"`{partner['name']}` (local)"
    else:
        partner_cell = "—"
    example = 'state="...", action="..."' if role == "fwm" else 'state="...", next_state="..."'
    config = record.get("config") or {}
    return ModelCard.from_template(
        card_data,
        template_path=str(MODEL_CARD_TEMPLATE),
        title=f"SWIRL {role.upper()} — {model_name} ({revision})",
        role=role,
        role_name=_ROLE_NAMES[role],
        direction=_DIRECTIONS[role],
        partner_role=_OTHER[role],
        partner_role_name=f"the {_ROLE_NAMES[_OTHER[role]]}, {_OTHER[role].upper()}",
        template=template,
        template_repr=repr(template),
        other_template=other_template,
        example_kwargs=example,
        repo_id=repo_id or f"<namespace>/{model_name}",
        revision=revision,
        iteration=iteration,
        phase=phase,
        global_step=record.get("global_step", "—"),
        base_model=base_model_id or base_model or "—",
        base_model_is_hub=base_model_id is not None,
        partner_cell=partner_cell,
        datasets=datasets,
        created=record.get("created", "—"),
        reward_rows=[(k, _md_cell(v)) for k, v in (record.get("rewards") or {}).items()],
        metric_rows=[(k, _md_cell(v)) for k, v in (record.get("metrics") or {}).items()],
        config_rows=[(k, _md_cell(v)) for k, v in config.items()],
        citation=SWIRL_PAPER["citation"],
        paper_id=SWIRL_PAPER["id"],
    )


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def render_dataset_card(dataset_dict, *, repo_id: str, revision: str | None = None, pretty_name: str | None = None,
                        description: str | None = None, kind: str | None = None, iteration: int | None = None,
                        labelled_by: str | None = None, source: str | None = None, license: str | None = None,
                        tags: Sequence[str] = (), **template_kwargs) -> DatasetCard:
    """The dataset card of a SWIRL dataset (``DatasetDict``), from ``trl_swirl/model_cards/swirl_dataset_card.md``.

    `kind`: ``"state-only"`` (states without action labels), ``"pseudo-labelled"`` (actions / next states generated by
    the models of an iteration) or None (plain transitions).
    """
    if kind not in (None, "state-only", "pseudo-labelled"):
        raise ValueError(f"`kind` must be 'state-only', 'pseudo-labelled' or None, got {kind!r}.")
    splits = [(name, ds.num_rows, list(ds.column_names)) for name, ds in dataset_dict.items()]
    total = sum(rows for _, rows, _ in splits)
    all_tags = ["trl", "swirl", "world-model", PAPER_TAG]
    if kind:
        all_tags.append(kind)
    all_tags += [t for t in tags if t not in all_tags]
    pretty_name = pretty_name or repo_id.split("/")[-1]
    card_data = DatasetCardData(
        pretty_name=pretty_name,
        license=license,
        task_categories=["text-generation"],
        size_categories=[_size_category(total)],
        tags=all_tags,
        configs=[{"config_name": "default",
                  "data_files": [{"split": name, "path": f"data/{name}-*"} for name, _, _ in splits]}],
    )
    kwargs = scrub_secrets(dict(
        title=pretty_name,
        description=description or "",
        kind=kind,
        iteration=iteration,
        labelled_by=labelled_by,
        source=source,
        splits=splits,
        repo_id=repo_id,
        revision=revision,
        citation=SWIRL_PAPER["citation"],
        paper_id=SWIRL_PAPER["id"],
        **template_kwargs,
    ))
    return DatasetCard.from_template(card_data, template_path=str(DATASET_CARD_TEMPLATE), **kwargs)


# ----------------------------------------------------------------------------------------------------- folders
def _fnmatch_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def upload_allow_patterns(folder) -> list[str]:
    """The exact files (relative names, sorted) a push of `folder` uploads: top-level files matching
    `UPLOAD_ALLOW_PATTERNS` and none of `UPLOAD_IGNORE_PATTERNS`; subfolders (``checkpoint-*``...) are never pushed."""
    folder = Path(folder)
    names = []
    for entry in sorted(folder.iterdir()):
        if not entry.is_file():
            continue
        name = entry.name
        if any(fnmatch.fnmatch(name, p) for p in UPLOAD_IGNORE_PATTERNS):
            continue
        if any(fnmatch.fnmatch(name, p) for p in UPLOAD_ALLOW_PATTERNS):
            names.append(name)
    return names


def _check_folder_contents(folder: Path) -> None:
    files = {p.name for p in folder.iterdir() if p.is_file()}
    pickles = sorted(n for n in files if n.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        name = pickles[0]
        raise ValueError(
            f"Refusing to push {folder}: {name} is a pickle-based file ({Path(name).suffix}); SWIRL checkpoints "
            "are shared as safetensors only, since loading a pickle can run arbitrary code. Fix: save the weights "
            "with `model.save_pretrained(folder, safe_serialization=True)` (the trainer's default) and delete or "
            f"move {', '.join(pickles)} out of {folder}."
        )
    problems = []
    if not any(n.endswith(".safetensors") for n in files):
        problems.append("no *.safetensors weights")
    if "config.json" not in files and "adapter_config.json" not in files:
        problems.append("no config.json")
    if "tokenizer_config.json" not in files or not any(n in files for n in _TOKENIZER_FILES):
        problems.append("no tokenizer (tokenizer_config.json and tokenizer.json / tokenizer.model / vocab files)")
    if problems:
        raise ValueError(
            f"Refusing to push {folder}: {'; '.join(problems)}. Fix: save the phase with "
            "`model.save_pretrained(folder)` and `tokenizer.save_pretrained(folder)`."
        )


def prepare_upload_folder(folder, *, repo_id: str | None = None, revision: str | None = None,
                          partner: dict | None = None) -> Path:
    """Make `folder` ready to push and return it: check it (safetensors weights, config and tokenizer present, no
    pickle), scrub credentials from its ``swirl_record.json`` (rewritten atomically), and write the model card
    (``README.md``). Every other file of the folder is kept as it is."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder.")
    record = read_record(folder)
    _check_folder_contents(folder)
    clean = scrub_secrets({k: v for k, v in record.items() if k not in _PUSH_KEYS})
    if partner:
        clean["partner"] = {**(clean.get("partner") or {}), **scrub_secrets(partner)}
    # canonical formatting, so that the uploaded record is byte-identical from one push of the folder to the next
    if (folder / RECORD_NAME).read_text(encoding="utf-8") != _json_text(clean):
        _write_json_atomic(folder / RECORD_NAME, clean)
    card = render_model_card(folder, repo_id=repo_id, revision=revision, record=clean)
    card.save(str(folder / CARD_NAME))
    for name in (CARD_NAME, RECORD_NAME):
        if _HF_TOKEN_RE.search((folder / name).read_text(encoding="utf-8")):
            raise ValueError(f"{folder / name} still holds something that looks like a token; not pushing it.")
    return folder


def find_phase_folders(run_dir) -> list[tuple[Path, dict]]:
    """The finished model phase folders of a run (subfolders with a ``swirl_record.json``), in training order.
    Label folders (``iter-K-labels``: a dataset, no model, ``role`` None) are not model phases and are left out."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a folder.")
    found = []
    for sub in sorted(run_dir.iterdir()):
        if sub.is_dir() and (sub / RECORD_NAME).is_file():
            raw = json.loads((sub / RECORD_NAME).read_text(encoding="utf-8"))
            if raw.get("role") is None and raw.get("phase") == "labels":
                continue
            record = read_record(sub)
            found.append((sub, record))
    if not found:
        raise ValueError(f"{run_dir} holds no finished SWIRL phase folder (a subfolder with {RECORD_NAME}).")
    found.sort(key=lambda item: (item[1]["iteration"], _PHASE_RANK.get(item[1]["phase"], 9),
                                 ROLES.index(item[1]["role"]), item[0].name))
    return found


# ----------------------------------------------------------------------------------------------------- retries
def _transient_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            mod = __import__(module_name)
            types += [mod.TimeoutException, mod.NetworkError, mod.RemoteProtocolError]
    with contextlib.suppress(ImportError):
        import requests

        types += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    return tuple(types)


_TRANSIENT = _transient_types()


def _status_of(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None) if response is not None else None


def _is_transient(err: BaseException) -> bool:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OfflineModeIsEnabled):
            return False
        if isinstance(err, HfHubHTTPError) or _status_of(err) is not None:
            status = _status_of(err)
            return status is not None and (status in (408, 429) or status >= 500)
        if isinstance(err, _TRANSIENT):
            return True
        err = err.__cause__ or err.__context__
    return False


def _retry_after(err: BaseException) -> float | None:
    response = getattr(err, "response", None)
    with contextlib.suppress(Exception):
        return min(float(response.headers.get("Retry-After")), 60.0)
    return None


class _Caller:
    """Runs Hub calls with retries on transient failures (exponential backoff: ``backoff * 2**attempt``)."""

    def __init__(self, *, max_retries: int, backoff: float, sleep: Callable[[float], None], token=None):
        self.max_retries, self.backoff, self.sleep, self.token = max(0, int(max_retries)), backoff, sleep, token
        self.attempts = 0

    def __call__(self, what: str, fn: Callable, *args, **kwargs):
        for attempt in range(self.max_retries + 1):
            self.attempts += 1
            try:
                return fn(*args, **kwargs)
            except Exception as err:
                if not _is_transient(err) or attempt == self.max_retries:
                    raise
                wait = self.backoff * 2**attempt
                if _status_of(err) == 429:
                    wait = max(wait, _retry_after(err) or 0.0)
                logger.warning("%s failed (%s); retrying in %.1fs [%d/%d]", what,
                               _redact(f"{type(err).__name__}: {err}", self.token).splitlines()[0],
                               wait, attempt + 1, self.max_retries)
                self.sleep(wait)


# ----------------------------------------------------------------------------------------------------- pushing
def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1()
    h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _LocalFile:
    def __init__(self, path: Path):
        self.path = path
        self._sha1 = self._sha256 = None

    @property
    def sha1(self):
        self._sha1 = self._sha1 or _git_blob_sha1(self.path)
        return self._sha1

    @property
    def sha256(self):
        self._sha256 = self._sha256 or _sha256(self.path)
        return self._sha256

    def same_as(self, remote) -> bool:
        if remote.size is not None and remote.size != self.path.stat().st_size:
            return False
        if remote.lfs is not None:
            return remote.lfs.sha256 == self.sha256
        if remote.blob_id == self.sha1:
            return True
        # an LFS / Xet file listed without its LFS metadata: its git object is the pointer file
        size = self.path.stat().st_size
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {size}\n".encode()
        return remote.blob_id == hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()


def _remote_files(call, api, repo_id, repo_type, revision) -> dict:
    from huggingface_hub.hf_api import RepoFile

    entries = call(f"listing {repo_id}@{revision}", lambda: list(
        api.list_repo_tree(repo_id, revision=revision, repo_type=repo_type, recursive=True)))
    return {e.path: e for e in entries if isinstance(e, RepoFile) and e.path != ".gitattributes"}


def _compare(local: dict[str, _LocalFile], remote: dict) -> str:
    """"same": identical file sets; "subset": every remote file is a local file with the same content (an empty or
    partially uploaded branch: safe to complete); "different": the branch holds something else."""
    for path, entry in remote.items():
        if path not in local or not local[path].same_as(entry):
            return "different"
    return "same" if set(remote) == set(local) else "subset"


def _assert_no_token(folder: Path, files: Sequence[str], token) -> None:
    if not isinstance(token, str) or not token:
        return
    needle = token.encode()
    for name in files:
        path = folder / name
        if path.stat().st_size > 256 * 1024 * 1024:  # weights: too big to scan, and binary
            continue
        if needle in path.read_bytes():
            raise ValueError(f"{path} contains the Hub token; not pushing it (remove the token from the file).")


def _push_folder(api: HfApi, call: _Caller, folder: Path, files: list[str], repo_id: str, *, repo_type: str,
                 revision: str, private: bool, update_main: bool, commit_message: str,
                 main_guard: Callable[[], str | None] | None = None) -> dict:
    """Create the repo and push `files` of `folder` to branch `revision` (refusing to overwrite a branch with other
    content), then to `main`. Returns status / commit / main_updated."""
    local = {name: _LocalFile(folder / name) for name in files}
    allow = [_fnmatch_escape(n) for n in files]
    call(f"creating {repo_id}", api.create_repo, repo_id, private=private, exist_ok=True, repo_type=repo_type)

    def upload(rev: str) -> str:
        info = call(f"uploading {folder} to {repo_id}@{rev}", api.upload_folder, repo_id=repo_id,
                    folder_path=str(folder), revision=rev, repo_type=repo_type, allow_patterns=allow,
                    delete_patterns=["*"], commit_message=commit_message)
        return info.oid

    refs = call(f"listing the branches of {repo_id}", api.list_repo_refs, repo_id, repo_type=repo_type)
    branches = {b.name: b.target_commit for b in refs.branches}
    status = "pushed"
    if revision in branches:
        state = _compare(local, _remote_files(call, api, repo_id, repo_type, revision))
        if state == "same":
            status, commit = "already-pushed", branches[revision]
        elif state == "subset" or revision == "main":
            commit = upload(revision)  # an empty / interrupted branch of ours (or main): complete it
        else:
            type_flag = "" if repo_type == "model" else f" --repo-type {repo_type}"
            raise ValueError(
                f"revision {revision} already exists in {repo_id}; nothing earlier is overwritten; pick another "
                f"prefix or delete the branch (`hf repos branch delete {repo_id} {revision}{type_flag}`). The branch "
                f"holds other files than {folder}."
            )
    else:
        # branch from the repo's first commit (only .gitattributes), so that the branch holds this phase's files only
        commits = call(f"listing the commits of {repo_id}", api.list_repo_commits, repo_id, repo_type=repo_type)
        start = commits[-1].commit_id if commits else None
        call(f"creating branch {revision} in {repo_id}", api.create_branch, repo_id, branch=revision,
             revision=start, repo_type=repo_type, exist_ok=True)
        commit = upload(revision)

    main_updated, main_commit, main_note = False, None, None
    if revision == "main":
        main_updated, main_commit = True, commit
    elif update_main:
        remote_main = _remote_files(call, api, repo_id, repo_type, "main")
        if _compare(local, remote_main) == "same":
            main_updated = True
            refs = call(f"listing the branches of {repo_id}", api.list_repo_refs, repo_id, repo_type=repo_type)
            main_commit = {b.name: b.target_commit for b in refs.branches}.get("main")
        else:
            main_note = main_guard() if main_guard is not None else None
            if main_note is None:
                main_commit, main_updated = upload("main"), True
            else:
                logger.info("Not moving main of %s: %s", repo_id, main_note)
    return {"status": status, "commit": commit, "main_updated": main_updated, "main_commit": main_commit,
            "main_note": main_note}


def _push_failure(err: BaseException, *, folder: Path, repo_id: str, revision: str, attempts: int, token,
                  retried: bool, local_note: str | None = None) -> HubPushError:
    prefix = repo_id[: -len("-fwm")] if repo_id.endswith(("-fwm", "-idm")) else "<prefix>"
    reason = _redact(f"{type(err).__name__}: {err}", token).strip().splitlines()
    reason = " ".join(line.strip() for line in reason[:3])
    how = f"after {attempts} attempt(s)" if retried else "(not a transient error, not retried)"
    if isinstance(err, OfflineModeIsEnabled):
        how = "(HF_HUB_OFFLINE is set: unset it to push)"
    local_note = local_note or (
        f"The local checkpoint at {folder} is intact; run `trl-swirl push {folder.parent} --prefix {prefix}` to "
        "push what is missing."
    )
    return HubPushError(
        f"Could not push {folder} to {repo_id}@{revision} {how}: {reason}. {local_note}",
        folder=folder, repo_id=repo_id, revision=revision, attempts=attempts,
    )


def _main_guard(api, call, repo_id: str, record: dict, token) -> Callable[[], str | None]:
    """Never move main backwards: if main holds a later phase than `record`, leave it."""

    def guard() -> str | None:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = call(f"reading the record on main of {repo_id}", api.hf_hub_download, repo_id, RECORD_NAME,
                            revision="main", cache_dir=tmp)
                with open(path, encoding="utf-8") as f:
                    on_main = json.load(f)
        except HfHubHTTPError as err:
            if _status_of(err) == 404:  # no record on main (a fresh repo): nothing to protect
                return None
            raise
        except ValueError:  # an unreadable record on main: not ours, replace it
            return None

        def key(r):
            return (int(r.get("iteration", -1)), _PHASE_RANK.get(r.get("phase"), -1))

        if key(on_main) > key(record):
            return f"main holds a later phase ({record_revision(on_main)})"
        return None

    return guard


def push_phase(folder, repo_id: str, *, revision: str | None = None, private: bool = False, token: str | None = None,
               update_main: bool = True, max_retries: int = 4, backoff: float = 1.0,
               sleep: Callable[[float], None] = time.sleep, endpoint: str | None = None,
               partner: dict | None = None) -> dict:
    """Push one SWIRL phase folder to branch `revision` (default: from its record, e.g. ``iter-2-fwm``) of `repo_id`,
    then to ``main`` (unless `update_main=False`, and never moving main back to an earlier phase).

    Returns ``{"status": "pushed" | "already-pushed", "repo_id", "revision", "commit", "main_updated", ...}`` and
    records it in the folder's ``swirl_record.json`` under ``"pushed"``. A branch that already exists with other
    files is refused (`ValueError`); one holding exactly these files is a no-op. Transient network failures are
    retried `max_retries` times (waiting ``backoff * 2**attempt`` seconds); a final failure raises
    :class:`HubPushError` and records the push as not done.
    """
    folder = Path(folder)
    _check_repo_id(repo_id)
    record = read_record(folder)
    other = _OTHER[record["role"]]
    if repo_id.endswith(f"-{other}"):
        raise ValueError(
            f"{folder} holds an {record['role'].upper()} (its record says role={record['role']!r}) but {repo_id} is "
            f"named for the {other.upper()}; push it to the -{record['role']} repo (see `repo_ids(prefix)`)."
        )
    revision = _check_revision(revision or record_revision(record))
    prepare_upload_folder(folder, repo_id=repo_id, revision=revision, partner=partner)
    record = read_record(folder)
    files = upload_allow_patterns(folder)
    _assert_no_token(folder, files, token)
    logger.info("Pushing %s (%d files) to %s@%s", folder, len(files), repo_id, revision)

    api = HfApi(token=token, endpoint=endpoint)
    call = _Caller(max_retries=max_retries, backoff=backoff, sleep=sleep, token=token)
    role = record["role"]
    message = f"SWIRL {role.upper()}: iteration {record['iteration']}, phase {record['phase']} ({revision})"
    try:
        outcome = _push_folder(api, call, folder, files, repo_id, repo_type="model", revision=revision,
                               private=private, update_main=update_main, commit_message=message,
                               main_guard=_main_guard(api, call, repo_id, record, token))
    except ValueError:
        raise  # a refusal (or invalid metadata): nothing was pushed, the record is unchanged
    except Exception as err:
        failure = _push_failure(err, folder=folder, repo_id=repo_id, revision=revision, attempts=call.attempts,
                                token=token, retried=_is_transient(err))
        _update_record(folder, pushed=None, push_error={
            "repo_id": repo_id, "revision": revision, "error": str(failure),
            "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
        raise failure from None

    pushed = {"repo_id": repo_id, "revision": revision, "commit": outcome["commit"],
              "main_updated": outcome["main_updated"]}
    if outcome["main_commit"]:
        pushed["main_commit"] = outcome["main_commit"]
    _update_record(folder, pushed=pushed, push_error=_DELETE)
    result = {"folder": str(folder), "status": outcome["status"], **pushed, "files": files}
    if outcome["main_note"]:
        result["main_note"] = outcome["main_note"]
    logger.info("%s %s -> %s@%s (commit %s)", outcome["status"], folder, repo_id, revision, outcome["commit"])
    return result


def push_run(run_dir, prefix: str, *, private: bool = False, token: str | None = None, update_main: bool = True,
             max_retries: int = 4, backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep,
             endpoint: str | None = None) -> list[dict]:
    """Push every finished phase folder of a SWIRL run, in training order: FWM phases to ``{prefix}-fwm``, IDM phases
    to ``{prefix}-idm`` (by the record's ``role``), one branch each. Folders whose record says they were already
    pushed to that repo and branch are skipped (``status="skipped"``), so running it again pushes what is missing.
    A partner given as a folder of the same run is recorded as its Hub repo and branch."""
    ids = repo_ids(prefix)
    phases = find_phase_folders(run_dir)
    by_name = {folder.name: record for folder, record in phases}
    results = []
    for folder, record in phases:
        repo_id, revision = ids[record["role"]], record_revision(record)
        partner = None
        current = record.get("partner") or {}
        partner_record = by_name.get(Path(str(current.get("name") or "")).name)
        if not current.get("repo_id") and partner_record is not None:
            partner = {"repo_id": ids[partner_record["role"]], "revision": record_revision(partner_record)}
        done = record.get("pushed") or {}
        if done.get("repo_id") == repo_id and done.get("revision") == revision:
            results.append({"folder": str(folder), "status": "skipped", **done})
            continue
        results.append(push_phase(folder, repo_id, revision=revision, private=private, token=token,
                                  update_main=update_main, max_retries=max_retries, backoff=backoff, sleep=sleep,
                                  endpoint=endpoint, partner=partner))
    return results


def push_dataset(dataset_or_dict, repo_id: str, *, revision: str | None = None, private: bool = False,
                 token: str | None = None, update_main: bool = True, max_retries: int = 4, backoff: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep, endpoint: str | None = None, **card_kwargs) -> dict:
    """Push a `datasets.Dataset` (as split ``train``) or `DatasetDict` to the dataset repo `repo_id`, as parquet
    files (``data/{split}-00000-of-00001.parquet``) with a dataset card rendered from ``swirl_dataset_card.md``.

    `revision` (e.g. ``iter-1-labels``) pushes to that branch (refused if it exists with other files), then to main
    when `update_main`; without it the data goes to main. `card_kwargs` go to :func:`render_dataset_card`
    (``pretty_name``, ``description``, ``kind="state-only" | "pseudo-labelled"``, ``iteration``, ``labelled_by``,
    ``source``, ``license``, ``tags``).

    The data is uploaded with `HfApi.upload_folder` rather than `Dataset.push_to_hub`, so that the branch rules, the
    retries and the card are the same as for models; the layout is the one `push_to_hub` writes and `load_dataset`
    reads.
    """
    from datasets import Dataset, DatasetDict

    _check_repo_id(repo_id)
    if revision is not None:
        _check_revision(revision)
    if isinstance(dataset_or_dict, Dataset):
        dataset_dict = DatasetDict({"train": dataset_or_dict})
    elif isinstance(dataset_or_dict, (DatasetDict, dict)):
        dataset_dict = DatasetDict(dict(dataset_or_dict))
    else:
        raise TypeError(f"Expected a datasets.Dataset or DatasetDict, got {type(dataset_or_dict).__name__}.")
    for split in dataset_dict:
        if not re.fullmatch(r"\w+", split):
            raise ValueError(f"Invalid split name {split!r}: use letters, digits and '_'.")
    call = _Caller(max_retries=max_retries, backoff=backoff, sleep=sleep, token=token)
    api = HfApi(token=token, endpoint=endpoint)
    with tempfile.TemporaryDirectory(prefix="swirl-dataset-") as tmp:
        folder = Path(tmp)
        (folder / "data").mkdir()
        files = []
        for split, ds in dataset_dict.items():
            name = f"data/{split}-00000-of-00001.parquet"
            ds.to_parquet(str(folder / name))
            files.append(name)
        card = render_dataset_card(dataset_dict, repo_id=repo_id, revision=revision, **card_kwargs)
        card.save(str(folder / CARD_NAME))
        files.append(CARD_NAME)
        _assert_no_token(folder, files, token)
        message = f"SWIRL dataset ({revision or 'main'})"
        try:
            outcome = _push_folder(api, call, folder, sorted(files), repo_id, repo_type="dataset",
                                   revision=revision or "main", private=private, update_main=update_main,
                                   commit_message=message)
        except ValueError:
            raise
        except Exception as err:
            raise _push_failure(err, folder=folder, repo_id=repo_id, revision=revision or "main",
                                attempts=call.attempts, token=token, retried=_is_transient(err),
                                local_note="Nothing was changed locally; push the dataset again.") from None
    return {"status": outcome["status"], "repo_id": repo_id, "revision": revision or "main",
            "commit": outcome["commit"], "main_updated": outcome["main_updated"], "files": sorted(files)}


# ----------------------------------------------------------------------------------------------------- loading
def resolve_model_reference(ref: str) -> tuple[str, str | None]:
    """``"user/swirl-fwm@iter-2-fwm"`` -> ``("user/swirl-fwm", "iter-2-fwm")``; an existing local path -> ``(path,
    None)``; anything else must be a valid Hub repo id (ValueError otherwise)."""
    if not isinstance(ref, str) or not ref:
        raise ValueError(f"Expected a local folder or 'repo_id[@revision]', got {ref!r}.")
    if os.path.exists(ref):
        return ref, None
    repo, revision = split_model_revision(ref)
    if not _is_repo_id(repo):
        raise ValueError(
            f"{ref!r} is neither an existing local folder nor a Hub reference 'namespace/name[@revision]'."
        )
    return repo, revision


def download_phase(ref: str, local_dir=None, *, token: str | None = None, endpoint: str | None = None,
                   cache_dir=None) -> Path:
    """The folder of a SWIRL phase: `ref` itself if it is a local folder, else the snapshot of ``repo_id@revision``
    downloaded with `snapshot_download` (into `local_dir` if given, else the Hub cache), e.g. to resume a loop."""
    from huggingface_hub import snapshot_download

    repo, revision = resolve_model_reference(ref)
    if os.path.isdir(repo) and revision is None:
        return Path(repo)
    path = snapshot_download(repo, revision=revision, local_dir=local_dir, token=token, endpoint=endpoint,
                             cache_dir=cache_dir)
    return Path(path)


# ----------------------------------------------------------------------------------------------------- CLI
def build_push_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="trl-swirl push",
        description="Push the finished phases of a SWIRL run to the Hub ({prefix}-fwm and {prefix}-idm, one branch "
                    "per phase, main = latest). Phases already pushed are skipped.",
    )
    parser.add_argument("run_dir", metavar="RUN", help="the run folder (holding iter-*-fwm / iter-*-idm folders)")
    parser.add_argument("--prefix", required=True, help="repo prefix, e.g. user/swirl-physics")
    parser.add_argument("--private", action="store_true", help="create the repos private")
    parser.add_argument("--token", default=None,
                        help="Hub token (default: HF_TOKEN or the token saved by `hf auth login`)")
    parser.add_argument("--no-update-main", dest="update_main", action="store_false",
                        help="push the phase branches only, leave main alone")
    parser.add_argument("--max-retries", type=int, default=4, help="retries per request on network errors")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry wait in seconds (doubles)")
    return parser


def main_push(argv: Sequence[str] | None = None) -> int:
    """``trl-swirl push RUN --prefix user/name [--private] [--token T]``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["push"]:
        argv = argv[1:]
    args = build_push_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        results = push_run(args.run_dir, args.prefix, private=args.private, token=args.token,
                           update_main=args.update_main, max_retries=args.max_retries, backoff=args.backoff)
    except (HubPushError, ValueError) as err:
        print(f"error: {_redact(str(err), args.token)}", file=sys.stderr)
        return 1
    for r in results:
        main = " (main updated)" if r.get("main_updated") and r["status"] != "skipped" else ""
        print(f"{r['status']:>14}  {r['folder']} -> {r['repo_id']}@{r['revision']}{main}")
    return 0
