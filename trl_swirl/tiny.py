"""Tiny models and tokenizers built locally, for the demo, the tests, the benchmarks and the Space's default.

Nothing here downloads anything: the tokenizer is built with the `tokenizers` library from a corpus of words and
wrapped in `PreTrainedTokenizerFast`; the model is a small Llama-style causal LM initialised from a config. Saving
both to a folder and loading them back goes through the same `from_pretrained` paths a Hub id takes.

(Llama rather than Qwen2: transformers 5 loads any tokenizer saved beside a `qwen2` config as `Qwen2Tokenizer`, which
rebuilds a byte-level BPE pipeline and silently breaks a word-level tokenizer; `llama` trusts the saved
`tokenizer.json`.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .templates import DEFAULT_FWM_TEMPLATE, DEFAULT_IDM_TEMPLATE

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>"]


def corpus_words(texts: Iterable[str]) -> list[str]:
    """Distinct whitespace-separated words of `texts`, in order of first appearance."""
    seen: dict[str, None] = {}
    for text in texts:
        for word in str(text).split():
            seen.setdefault(word, None)
    return list(seen)


def build_word_tokenizer(
    texts: Iterable[str],
    *,
    add_bos: bool = False,
    pad_token: str | None = "<pad>",
    model_max_length: int = 512,
    reverse_vocab: bool = False,
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the words of `texts` (plus the default templates' words).

    Args:
        add_bos: prepend `<s>` when `add_special_tokens=True` (exercises the context-vs-target boundary).
        pad_token: `None` builds a tokenizer without a pad token.
        reverse_vocab: assign ids in reverse order: a *different* tokenizer over the same words.
    """
    words = corpus_words(list(texts) + [DEFAULT_FWM_TEMPLATE, DEFAULT_IDM_TEMPLATE])
    words = [w for w in words if w not in SPECIAL_TOKENS]
    if reverse_vocab:
        words = words[::-1]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    kwargs = dict(unk_token="<unk>", eos_token="</s>", bos_token="<s>", model_max_length=model_max_length)
    if pad_token is not None:
        kwargs["pad_token"] = pad_token
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def build_tiny_causal_lm(
    tokenizer,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised Llama-style causal LM sized for `tokenizer` (seeded, deterministic)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=max(1, num_attention_heads // 2),
        max_position_embeddings=max_position_embeddings,
        head_dim=hidden_size // num_attention_heads,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def save_pretrained(model, tokenizer, path: str | os.PathLike) -> str:
    """Save model (safetensors) and tokenizer to `path` and return it as a string."""
    path = str(path)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def load_pretrained(path: str | os.PathLike):
    """Load (model, tokenizer) from a folder written by `save_pretrained` (safetensors only)."""
    model = AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model, tokenizer


def tiny_world(environment: str = "physics", *, num_trajectories: int = 40, length: int = 6, seed: int = 0,
               hidden_size: int = 64, num_hidden_layers: int = 2):
    """Everything the README's 10-line example needs, built locally: `(fwm, idm, tokenizer, transitions)`.

    `transitions` are (state, action, next_state) rows of a built-in environment; the FWM and IDM are two tiny,
    untrained Llama-style models sharing a word-level tokenizer over the environment's vocabulary."""
    from .data import transitions_from_trajectories
    from .envs import get_environment

    env = get_environment(environment)
    transitions = transitions_from_trajectories(env.trajectories(num_trajectories, length, seed=seed))
    texts = list(transitions["state"]) + list(transitions["next_state"]) + list(transitions["action"])
    if hasattr(env, "all_actions"):
        texts += env.all_actions()
    tokenizer = build_word_tokenizer(texts)
    kwargs = dict(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers)
    fwm = build_tiny_causal_lm(tokenizer, seed=seed, **kwargs)
    idm = build_tiny_causal_lm(tokenizer, seed=seed + 1, **kwargs)
    return fwm, idm, tokenizer, transitions.select_columns(["state", "action", "next_state"])
