# Copyright 2025 The trl-swirl developers. Licensed under the Apache License, Version 2.0.
"""Model-based evaluation of SWIRL world models.

A SWIRL world model is a pair of causal LMs:

* the forward world model (FWM) reads ``(state, action)`` and generates the next state;
* the inverse dynamics model (IDM) reads ``(state, next_state)`` and generates the action.

This module generates with both models on a dataset of transitions (columns ``state``, ``action``, ``next_state``)
and scores the generations with the offline ``evaluate`` modules in :mod:`trl_swirl.metrics`:

* FWM: exact match and token F1 of the generated next state;
* IDM: exact match and token F1 of the generated action, plus -- given an environment -- action consistency (does
  executing the inferred action reproduce the observed next state?) and the rate of invalid actions;
* FWM multiple choice (WorldPrediction style): given an environment, the FWM ranks the true action against
  distractor actions by the likelihood it gives the observed next state.

Text normalisation, everywhere: :func:`normalize` strips the text and collapses every run of whitespace to a single
space; case and punctuation are kept.

``torch`` and ``transformers`` are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from typing import Any, Iterable, Sequence

from .templates import template_fields


__all__ = [
    "normalize",
    "exact_match",
    "token_f1",
    "render",
    "generate",
    "sequence_logprobs",
    "evaluate_world_model",
]


# --------------------------------------------------------------------------------------------------------------------
# Plain-python metrics (must agree with the evaluate modules in trl_swirl/metrics, which re-implement them because
# evaluate copies each module file on its own).
# --------------------------------------------------------------------------------------------------------------------


def normalize(text: Any) -> str:
    """Strip ``text`` and collapse every run of whitespace (spaces, tabs, newlines) into one space."""
    return " ".join(str(text).split())


def _check_lengths(preds: Sequence, refs: Sequence) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"Got {len(preds)} predictions but {len(refs)} references.")


def exact_match(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Mean of ``normalize(pred) == normalize(ref)``; 0.0 for empty inputs. Same as ``world_model_exact_match``."""
    preds, refs = list(preds), list(refs)
    _check_lengths(preds, refs)
    if not preds:
        return 0.0
    return sum(normalize(p) == normalize(r) for p, r in zip(preds, refs)) / len(preds)


def _f1_precision_recall(pred: str, ref: str) -> tuple[float, float, float]:
    pred_tokens, ref_tokens = normalize(pred).split(), normalize(ref).split()
    if not pred_tokens and not ref_tokens:
        return 1.0, 1.0, 1.0
    if not pred_tokens or not ref_tokens:
        return 0.0, 0.0, 0.0
    common = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if common == 0:
        return 0.0, 0.0, 0.0
    precision, recall = common / len(pred_tokens), common / len(ref_tokens)
    return 2 * precision * recall / (precision + recall), precision, recall


def token_f1(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Mean SQuAD-style token F1 (whitespace tokens, multiset overlap); 0.0 for empty inputs.

    Both texts empty -> 1.0, exactly one empty -> 0.0. Same as the ``f1`` of ``world_model_f1``.
    """
    preds, refs = list(preds), list(refs)
    _check_lengths(preds, refs)
    if not preds:
        return 0.0
    return sum(_f1_precision_recall(p, r)[0] for p, r in zip(preds, refs)) / len(preds)


# --------------------------------------------------------------------------------------------------------------------
# Prompt templates
# --------------------------------------------------------------------------------------------------------------------


def render(template: str, **values: Any) -> str:
    """``template.format(...)`` with only the fields the template uses, taken from ``values``.

    Extra values are ignored; a field without a value raises a ``ValueError`` that names it.
    """
    fields = template_fields(template)
    for name in fields:
        if name not in values:
            raise ValueError(
                f"Template field {{{name}}} has no value (template: {template!r}; available: {sorted(values)})."
            )
    return template.format(**{name: values[name] for name in fields})


# --------------------------------------------------------------------------------------------------------------------
# Model helpers
# --------------------------------------------------------------------------------------------------------------------


def _model_device(model):
    device = getattr(model, "device", None)
    if device is None:
        device = next(model.parameters()).device
    return device


@contextlib.contextmanager
def _eval_mode(model):
    """Put ``model`` in eval mode under ``torch.no_grad()``, then restore its training flag."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _left_padding(tokenizer):
    """Temporarily pad on the left, with the EOS token when the tokenizer has no pad token; yields the pad id."""
    old_side = tokenizer.padding_side
    borrowed_pad = tokenizer.pad_token_id is None
    if borrowed_pad:
        if tokenizer.eos_token is None:
            raise ValueError("The tokenizer has neither a pad token nor an EOS token to pad with.")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    try:
        yield tokenizer.pad_token_id
    finally:
        tokenizer.padding_side = old_side
        if borrowed_pad:
            tokenizer.pad_token = None


def _batches(items: Sequence, batch_size: int) -> Iterable[Sequence]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
) -> list[str]:
    """Generate one completion per prompt, in batches, and return only the new text.

    Prompts are tokenized with the tokenizer's special tokens and left-padded (the tokenizer's ``padding_side`` is
    set to ``"left"`` for the call and restored afterwards; a tokenizer without a pad token pads with EOS, also only
    for the call). Decoding is greedy unless ``do_sample``. Only the generated tokens are decoded, with
    ``skip_special_tokens=True``, and stripped. The model runs in eval mode under ``torch.no_grad()``; its training
    flag is restored afterwards.
    """
    prompts = list(prompts)
    if not prompts:
        return []
    device = _model_device(model)
    gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
    if do_sample:
        gen_kwargs["temperature"] = temperature
    generation_config = getattr(model, "generation_config", None)
    if getattr(generation_config, "eos_token_id", None) is None and tokenizer.eos_token_id is not None:
        gen_kwargs["eos_token_id"] = tokenizer.eos_token_id

    outputs: list[str] = []
    with _eval_mode(model), _left_padding(tokenizer) as pad_id:
        gen_kwargs["pad_token_id"] = pad_id
        for batch in _batches(prompts, batch_size):
            enc = tokenizer(list(batch), return_tensors="pt", padding=True, add_special_tokens=True)
            if enc["input_ids"].shape[1] == 0:
                raise ValueError("Every prompt in a batch tokenizes to zero tokens; nothing to condition on.")
            input_ids = enc["input_ids"].to(device)
            attention_mask = enc["attention_mask"].to(device)
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **gen_kwargs)
            new_tokens = out[:, input_ids.shape[1] :]
            outputs.extend(text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return outputs


def sequence_logprobs(
    model,
    tokenizer,
    contexts: Sequence[str],
    targets: Sequence[str],
    *,
    batch_size: int = 16,
    reduction: str = "mean",
    add_eos: bool = True,
) -> list[float]:
    """Log-probability of each target given its context, under a causal LM.

    The context is tokenized with ``add_special_tokens=True`` and the target separately with
    ``add_special_tokens=False`` (plus the EOS token when ``add_eos`` and the tokenizer has one), so the token
    boundary between them is exact. The two are concatenated, right-padded into batches, and the log-softmax of the
    model's logits (in float32) is gathered at every target token. ``reduction="sum"`` gives the total log-probability,
    ``"mean"`` the mean per target token. A target with no tokens scores 0.0. A context with no tokens is replaced by
    the BOS token (or EOS when there is no BOS) so that the first target token has something to be predicted from.
    """
    import torch

    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")
    contexts, targets = list(contexts), list(targets)
    if len(contexts) != len(targets):
        raise ValueError(f"Got {len(contexts)} contexts but {len(targets)} targets.")

    eos_id = tokenizer.eos_token_id
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos_id
    encoded: list[tuple[list[int], list[int]]] = []
    for context, target in zip(contexts, targets):
        ctx_ids = list(tokenizer(context, add_special_tokens=True)["input_ids"])
        tgt_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
        if add_eos and eos_id is not None:
            tgt_ids.append(eos_id)
        if not ctx_ids:
            if start_id is None:
                raise ValueError(f"Context {context!r} has no tokens and the tokenizer has no BOS/EOS token.")
            ctx_ids = [start_id]
        encoded.append((ctx_ids, tgt_ids))

    pad_id = next((i for i in (tokenizer.pad_token_id, eos_id, 0) if i is not None))
    results = [0.0] * len(encoded)
    # Longest first: similar lengths share a batch (less padding), and an out-of-memory error shows up at once.
    order = sorted(
        (i for i, (_, tgt) in enumerate(encoded) if tgt), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1]))
    )
    device = _model_device(model)
    with _eval_mode(model):
        for batch in _batches(order, batch_size):
            max_len = max(len(encoded[i][0]) + len(encoded[i][1]) for i in batch)
            input_ids = torch.full((len(batch), max_len), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), max_len), dtype=torch.long)
            for row, i in enumerate(batch):
                ids = encoded[i][0] + encoded[i][1]
                input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, : len(ids)] = 1
            logits = model(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
            ).logits
            for row, i in enumerate(batch):
                ctx_len, tgt = len(encoded[i][0]), encoded[i][1]
                # logits at position p predict token p + 1: the target spans positions ctx_len .. ctx_len+len(tgt)-1
                step_logits = logits[row, ctx_len - 1 : ctx_len - 1 + len(tgt)].float()
                token_ids = torch.tensor(tgt, dtype=torch.long, device=step_logits.device)
                token_logprobs = step_logits.log_softmax(dim=-1).gather(-1, token_ids[:, None]).squeeze(-1)
                total = token_logprobs.sum().item()
                results[i] = total / len(tgt) if reduction == "mean" else total
    return results


# --------------------------------------------------------------------------------------------------------------------
# End-to-end evaluation
# --------------------------------------------------------------------------------------------------------------------

_METRICS: dict[str, Any] = {}


def _metric(name: str):
    """Load a bundled evaluate module once per process (kept in memory: no cache files)."""
    if name not in _METRICS:
        from trl_swirl.metrics import load_metric

        _METRICS[name] = load_metric(name, keep_in_memory=True)
    return _METRICS[name]


_COLUMNS = ("state", "action", "next_state")


def _columns(dataset) -> tuple[list[str], list[str], list[str]]:
    """(states, actions, next_states) from a ``datasets.Dataset``, a dict of columns, or a list of row dicts."""
    if hasattr(dataset, "column_names") or isinstance(dataset, dict):
        available = list(dataset.column_names if hasattr(dataset, "column_names") else dataset.keys())
        missing = [c for c in _COLUMNS if c not in available]
        if missing:
            raise ValueError(f"The dataset lacks the column(s) {missing}; it has {available}.")
        states, actions, next_states = (list(dataset[c]) for c in _COLUMNS)
        return states, actions, next_states
    rows = list(dataset)
    for i, row in enumerate(rows):
        missing = [c for c in _COLUMNS if c not in row]
        if missing:
            raise ValueError(f"Row {i} of the dataset lacks the key(s) {missing}.")
    return [r["state"] for r in rows], [r["action"] for r in rows], [r["next_state"] for r in rows]


def _histories(dataset, n: int) -> list[str]:
    """The `history` column (multi-turn rows), one earlier state per line; empty strings when there is none."""
    try:
        column = dataset["history"] if "history" in (getattr(dataset, "column_names", None) or dataset) else None
    except (TypeError, KeyError):
        column = None
    if column is None:
        return [""] * n
    return [h if isinstance(h, str) else "\n".join(h or []) for h in column]


def _distractors(environment, state: str, action: str, next_state: str) -> list[str]:
    """Valid actions other than ``action`` whose result differs from ``next_state`` (sorted, deduplicated)."""
    found = set()
    for candidate in environment.valid_actions(state):
        if normalize(candidate) == normalize(action) or candidate in found:
            continue
        try:
            result = environment.apply(state, candidate)
        except ValueError:
            continue
        if normalize(result) != normalize(next_state):
            found.add(candidate)
    return sorted(found)


def _action_selection_accuracy(
    fwm, tokenizer, states, actions, next_states, *, fwm_template, environment, num_choices, batch_size, seed,
    histories=None,
) -> float:
    """WorldPrediction-style multiple choice: does the FWM give the observed next state the highest likelihood
    under the true action, against up to ``num_choices - 1`` distractors? Rows without distractors are skipped
    (NaN when every row is skipped)."""
    rng = random.Random(seed)
    contexts, targets, spans, answers = [], [], [], []
    histories = histories or [""] * len(states)
    for state, action, next_state, history in zip(states, actions, next_states, histories):
        others = _distractors(environment, state, action, next_state)
        if not others:
            continue
        candidates = [action] + rng.sample(others, min(num_choices - 1, len(others)))
        rng.shuffle(candidates)
        answers.append(candidates.index(action))
        spans.append((len(contexts), len(contexts) + len(candidates)))
        contexts.extend(render(fwm_template, state=state, action=c, history=history) for c in candidates)
        targets.extend([next_state] * len(candidates))
    if not spans:
        return float("nan")
    scores = sequence_logprobs(fwm, tokenizer, contexts, targets, batch_size=batch_size)
    predictions = [scores[start:end] for start, end in spans]
    return _metric("action_selection").compute(predictions=predictions, references=answers)["accuracy"]


def evaluate_world_model(
    fwm,
    fwm_tokenizer,
    idm,
    idm_tokenizer,
    dataset,
    *,
    fwm_template: str,
    idm_template: str,
    environment=None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    num_choices: int = 0,
    seed: int = 0,
) -> dict[str, float]:
    """Evaluate a forward world model and/or an inverse dynamics model on transitions.

    ``dataset`` has the columns ``state``, ``action`` and ``next_state``. FWM prompts are
    ``render(fwm_template, state=..., action=...)`` and IDM prompts
    ``render(idm_template, state=..., next_state=...)``; both models decode greedily.

    Returns (a model that is ``None`` has its keys skipped):

    * ``fwm_exact_match``, ``fwm_f1``: generated next states against ``next_state``;
    * ``idm_exact_match``, ``idm_f1``: generated actions against ``action``;
    * with ``environment``: ``idm_consistency`` (the inferred action, executed with ``environment.apply``, reproduces
      ``next_state``) and ``idm_invalid_rate`` (``apply`` raised a ``ValueError``);
    * with ``environment``, an FWM and ``num_choices > 1``: ``fwm_action_selection_accuracy``, multiple-choice action
      selection scored by the FWM. Per row, the candidates are the true action plus up to ``num_choices - 1``
      actions from ``environment.valid_actions(state)`` whose result differs from ``next_state`` (drawn with
      ``random.Random(seed)``); each candidate is scored by the FWM's mean log-probability of ``next_state`` after
      the FWM prompt for (state, candidate), and the row is correct when the true action is the unique argmax.
    """
    states, actions, next_states = _columns(dataset)
    histories = _histories(dataset, len(states))
    results: dict[str, float] = {}

    if fwm is not None:
        if fwm_tokenizer is None:
            raise ValueError("fwm_tokenizer is required when fwm is given.")
        prompts = [render(fwm_template, state=s, action=a, history=h) for s, a, h in zip(states, actions, histories)]
        predictions = generate(fwm, fwm_tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        em = _metric("world_model_exact_match").compute(predictions=predictions, references=next_states)
        f1 = _metric("world_model_f1").compute(predictions=predictions, references=next_states)
        results["fwm_exact_match"] = em["exact_match"]
        results["fwm_f1"] = f1["f1"]

    if idm is not None:
        if idm_tokenizer is None:
            raise ValueError("idm_tokenizer is required when idm is given.")
        prompts = [
            render(idm_template, state=s, next_state=n, history=h) for s, n, h in zip(states, next_states, histories)
        ]
        predictions = generate(idm, idm_tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        em = _metric("world_model_exact_match").compute(predictions=predictions, references=actions)
        f1 = _metric("world_model_f1").compute(predictions=predictions, references=actions)
        results["idm_exact_match"] = em["exact_match"]
        results["idm_f1"] = f1["f1"]
        if environment is not None:
            consistency = _metric("action_consistency").compute(
                predictions=predictions, references=next_states, states=states, environment=environment
            )
            results["idm_consistency"] = consistency["consistency"]
            results["idm_invalid_rate"] = consistency["invalid_rate"]

    if fwm is not None and environment is not None and num_choices > 1:
        results["fwm_action_selection_accuracy"] = _action_selection_accuracy(
            fwm,
            fwm_tokenizer,
            states,
            actions,
            next_states,
            fwm_template=fwm_template,
            environment=environment,
            num_choices=num_choices,
            batch_size=batch_size,
            seed=seed,
            histories=histories,
        )
    return results
