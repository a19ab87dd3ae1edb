"""Shared helpers for the benchmarks: machine info, JSON results, synthetic SWIRL data, models of a given size, and
interleaved timing (A, B, B, A, ... so background load on a shared machine hits both sides alike)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def add_default_arguments(parser, defaults: dict) -> None:
    """One `--KEY` flag per entry of a benchmark's DEFAULTS (ints for None defaults, GRPO's choices for
    `scale_rewards`)."""
    for key, value in defaults.items():
        if key == "scale_rewards":
            parser.add_argument(f"--{key}", default=value, choices=["group", "batch", "none"])
        elif value is None:
            parser.add_argument(f"--{key}", type=int, default=None)
        else:
            parser.add_argument(f"--{key}", type=type(value), default=value)

# ----------------------------------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _total_memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict:
    import torch
    import transformers
    import trl

    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gb": _total_memory_gb(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def write_result(name: str, data: dict, results_dir: str | Path | None = None) -> Path:
    """Write `{results_dir}/{name}.json` (default `benchmarks/results/`) with the machine, the command and a timestamp
    added."""
    results_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    results_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        **data,
        "machine": machine_info(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def setup_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


# -------------------------------------------------------------------------------------------------------- data

COLORS = ["red", "blue", "green"]
OBJECTS = ["ball", "box", "cube"]
VERBS = ["push", "pull", "lift", "drop", "wait"]
DIRECTIONS = ["left", "right", "up", "down"]


def synthetic_rows(n: int, seed: int = 0) -> dict[str, list[str]]:
    """`n` transitions of a small block world: (state, action, next_state) texts made of a few dozen words."""
    import random

    rng = random.Random(seed)
    states, actions, next_states = [], [], []
    for _ in range(n):
        objs = rng.sample(OBJECTS, 2)
        pos = {o: [rng.randint(0, 9), rng.randint(0, 9)] for o in objs}
        color = {o: rng.choice(COLORS) for o in objs}

        def render(objs=objs, pos=pos, color=color):
            return " | ".join(f"{color[o]} {o} at {pos[o][0]} {pos[o][1]}" for o in objs)

        state = render()
        obj, verb, d = rng.choice(objs), rng.choice(VERBS), rng.choice(DIRECTIONS)
        if verb != "wait":
            axis, step = {"left": (0, -1), "right": (0, 1), "up": (1, 1), "down": (1, -1)}[d]
            pos[obj][axis] = min(9, max(0, pos[obj][axis] + step))
        states.append(state)
        actions.append("wait" if verb == "wait" else f"{verb} {color[obj]} {obj} {d}")
        next_states.append(render())
    return {"state": states, "action": actions, "next_state": next_states}


def corpus(vocab_size: int | None = None) -> list[str]:
    """Words of the synthetic data, padded with filler words `w0 w1 ...` up to about `vocab_size` tokens."""
    words = COLORS + OBJECTS + VERBS + DIRECTIONS + ["at", "|", "wait"] + [str(i) for i in range(10)]
    if vocab_size is not None:
        words += [f"w{i}" for i in range(max(0, vocab_size - len(words) - 40))]
    return [" ".join(words)]


def build_tokenizer(vocab_size: int | None = None):
    from trl_swirl.tiny import build_word_tokenizer

    return build_word_tokenizer(corpus(vocab_size), model_max_length=2048)


def build_model(tokenizer, *, hidden_size: int, num_layers: int, seed: int = 0, intermediate_size: int | None = None):
    from trl_swirl.tiny import build_tiny_causal_lm

    heads = max(2, hidden_size // 64)
    return build_tiny_causal_lm(
        tokenizer,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=2048,
        seed=seed,
    )


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------------ timing


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each function `repeats` times, alternating them (A B, B A, A B, ...) after `warmup` untimed rounds."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repeats):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def summary(values: list[float]) -> dict:
    return {
        "median_s": statistics.median(values),
        "min_s": min(values),
        "max_s": max(values),
        "n": len(values),
    }
