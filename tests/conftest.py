"""Shared fixtures: tiny models built from configs with locally built tokenizers, saved and loaded back."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from trl_swirl.tiny import build_tiny_causal_lm, build_word_tokenizer, load_pretrained, save_pretrained  # noqa: E402

STATES = [
    "ball at 1 2 vel 0 0",
    "ball at 2 2 vel 1 0",
    "ball at 3 2 vel 1 0",
    "ball at 3 1 vel 0 -1",
    "box at 0 0 vel 0 0 | ball at 4 4 vel 0 0",
]
ACTIONS = ["push ball right", "push ball left", "wait", "jump ball", "push box right"]
CORPUS = STATES + ACTIONS + ["gibberish tokens here", "(", ")", "-1", "5", "6", "7"]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Folder with two tiny saved models (an FWM and an IDM) sharing one word-level tokenizer."""
    root = tmp_path_factory.mktemp("tiny")
    tok = build_word_tokenizer(CORPUS)
    save_pretrained(build_tiny_causal_lm(tok, seed=0), tok, root / "fwm")
    save_pretrained(build_tiny_causal_lm(tok, seed=1), tok, root / "idm")
    # a partner with a *different* tokenizer: other ids for the same words, BOS added to contexts
    other = build_word_tokenizer(CORPUS, add_bos=True, reverse_vocab=True)
    save_pretrained(build_tiny_causal_lm(other, seed=2, hidden_size=48), other, root / "idm_other_tok")
    return root


@pytest.fixture
def fwm(tiny_dir):
    return load_pretrained(tiny_dir / "fwm")


@pytest.fixture
def idm(tiny_dir):
    return load_pretrained(tiny_dir / "idm")


@pytest.fixture
def transitions():
    from datasets import Dataset

    rows = {
        "state": [STATES[i % 4] for i in range(8)],
        "action": [ACTIONS[i % 3] for i in range(8)],
        "next_state": [STATES[(i + 1) % 4] for i in range(8)],
    }
    return Dataset.from_dict(rows)


def tiny_args(output_dir, **overrides):
    from trl_swirl import SwirlConfig

    kwargs = dict(
        output_dir=str(output_dir),
        num_generations=4,
        per_device_train_batch_size=4,
        max_steps=2,
        max_completion_length=8,
        learning_rate=1e-2,
        report_to="none",
        bf16=False,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        beta=0.0,
    )
    kwargs.update(overrides)
    return SwirlConfig(**kwargs)
