# Copyright 2025 The trl-swirl developers. Licensed under the Apache License, Version 2.0.
"""Tests for the offline evaluate modules (trl_swirl/metrics) and the model-based evaluation (trl_swirl/evaluation)."""

import math
import os
import random

import pytest


torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from trl_swirl import evaluation  # noqa: E402
from trl_swirl.evaluation import (  # noqa: E402
    evaluate_world_model,
    exact_match,
    generate,
    normalize,
    render,
    sequence_logprobs,
    token_f1,
)
from trl_swirl.metrics import METRIC_NAMES, load_metric, metric_path  # noqa: E402


# --------------------------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def em_metric():
    return load_metric("world_model_exact_match")


@pytest.fixture(scope="module")
def f1_metric():
    return load_metric("world_model_f1")


@pytest.fixture(scope="module")
def consistency_metric():
    return load_metric("action_consistency")


@pytest.fixture(scope="module")
def selection_metric():
    return load_metric("action_selection")


class InvalidAction(ValueError):
    """A ValueError subclass, like the ones trl_swirl's environments raise."""


class CounterEnv:
    """A tiny environment: the state is "n <k>" with k >= 0; "inc" adds one, "dec" subtracts one (clamped at 0),
    "noop" does nothing; any other action is invalid."""

    def _value(self, state):
        name, value = state.split()
        assert name == "n"
        return int(value)

    def valid_actions(self, state):
        return ["inc", "dec", "noop"]

    def apply(self, state, action):
        value = self._value(state)
        if action == "inc":
            return f"n {value + 1}"
        if action == "dec":
            return f"n {max(value - 1, 0)}"
        if action == "noop":
            return f"n {value}"
        raise InvalidAction(f"unknown action {action!r}")


WORDS = ["n", *[str(i) for i in range(10)], "inc", "dec", "noop", "state:", "action:", "next:", "the", "a", "b"]


def _make_tokenizer(with_pad=True):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<unk>", "<s>", "</s>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    kwargs = {"unk_token": "<unk>", "eos_token": "</s>", "bos_token": "<s>"}
    if with_pad:
        kwargs["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)


@pytest.fixture(scope="module")
def tokenizer():
    return _make_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return Qwen2ForCausalLM(config).eval()


# --------------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------------


def test_metric_path_and_unknown_name():
    for name in METRIC_NAMES:
        path = metric_path(name)
        assert os.path.isabs(path) and os.path.isfile(path) and path.endswith(f"{name}.py")
    with pytest.raises(ValueError, match="no_such_metric") as info:
        metric_path("no_such_metric")
    for name in METRIC_NAMES:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="valid names"):
        load_metric("bleu")


def test_normalize():
    assert normalize("  a \t b\n\nc  ") == "a b c"
    assert normalize("") == "" and normalize(" \n\t ") == ""
    assert normalize("Door Open.") == "Door Open."  # case and punctuation are kept


# --------------------------------------------------------------------------------------------------------------------
# world_model_exact_match / world_model_f1
# --------------------------------------------------------------------------------------------------------------------


def test_exact_match_hand_computed(em_metric):
    preds = ["n 4", "  n   4\n", "n 5", "", "N 4"]
    refs = ["n 4", "n 4", "n 4", "   ", "n 4"]
    # 1: equal; 2: equal after strip + collapse; 3: differs; 4: "" == "" after normalising; 5: case differs
    # -> 3 / 5 = 0.6
    result = em_metric.compute(predictions=preds, references=refs)
    assert result == {"exact_match": pytest.approx(0.6)}
    assert exact_match(preds, refs) == pytest.approx(0.6)
    assert em_metric.compute(predictions=[], references=[])["exact_match"] == 0.0


def test_f1_hand_computed(f1_metric):
    # "a b c" vs "a b d": common = 2 -> p = 2/3, r = 2/3, f1 = 2/3
    r = f1_metric.compute(predictions=["a b c"], references=["a b d"])
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3)

    # "a a b" vs "a b b c": multisets {a:2, b:1} & {a:1, b:2, c:1} = {a:1, b:1} -> common = 2
    # p = 2/3, r = 2/4 = 1/2, f1 = 2 * (2/3) * (1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7
    r = f1_metric.compute(predictions=["a a b"], references=["a b b c"])
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(1 / 2)
    assert r["f1"] == pytest.approx(4 / 7)

    # Edge cases, one per example:
    #   ""      vs "  "     -> both empty: p = r = f1 = 1
    #   ""      vs "a"      -> one empty:  p = r = f1 = 0
    #   "a"     vs ""       -> one empty:  p = r = f1 = 0
    #   "x y"   vs "a b"    -> no overlap: p = r = f1 = 0
    #   " a\tb" vs "a  b\n" -> identical after whitespace normalisation: p = r = f1 = 1
    # means: p = r = f1 = 2/5
    preds = ["", "", "a", "x y", " a\tb"]
    refs = ["  ", "a", "", "a b", "a  b\n"]
    r = f1_metric.compute(predictions=preds, references=refs)
    assert r == {"f1": pytest.approx(0.4), "precision": pytest.approx(0.4), "recall": pytest.approx(0.4)}
    assert token_f1(preds, refs) == pytest.approx(0.4)

    # Mean over examples: (2/3 + 4/7) / 2 for f1; (2/3 + 2/3) / 2 for p; (2/3 + 1/2) / 2 for r
    r = f1_metric.compute(predictions=["a b c", "a a b"], references=["a b d", "a b b c"])
    assert r["f1"] == pytest.approx((2 / 3 + 4 / 7) / 2)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_plain_python_metrics_agree_with_modules(em_metric, f1_metric):
    rng = random.Random(1234)
    alphabet = ["a", "b", "c", "n", "1", "inc"]
    spaces = [" ", "  ", "\t", "\n", " \n "]

    def random_text():
        tokens = [rng.choice(alphabet) for _ in range(rng.randint(0, 5))]
        text = "".join(tok + rng.choice(spaces) for tok in tokens)
        return rng.choice(["", " "]) + text

    for _ in range(5):
        preds = [random_text() for _ in range(40)]
        # half the references are whitespace variants of the prediction, so exact matches occur
        refs = [" ".join(p.split()) + " " if rng.random() < 0.5 else random_text() for p in preds]
        assert exact_match(preds, refs) == pytest.approx(
            em_metric.compute(predictions=preds, references=refs)["exact_match"]
        )
        assert token_f1(preds, refs) == pytest.approx(f1_metric.compute(predictions=preds, references=refs)["f1"])


# --------------------------------------------------------------------------------------------------------------------
# action_consistency
# --------------------------------------------------------------------------------------------------------------------


def test_action_consistency_hand_computed(consistency_metric):
    env = CounterEnv()
    states = ["n 3", "n 3", "n 3", "n 0", "n 5", "n 2"]
    preds = ["inc", " inc ", "dec", "noop", "jump", ""]
    refs = ["n 4", "n  4", "n 4", "n 0", "n 6", "n 2"]
    # 1: inc n3 -> n4 == n4                   consistent
    # 2: " inc " normalised -> n4 == "n  4"    consistent (whitespace normalised on both sides)
    # 3: dec n3 -> n2 != n4                   inconsistent
    # 4: noop n0 -> n0 == n0                  consistent
    # 5: "jump" -> InvalidAction (ValueError)  invalid, counted as inconsistent
    # 6: "" -> InvalidAction                  invalid, counted as inconsistent
    # consistency = 3/6, invalid_rate = 2/6 (failures are counted, never dropped)
    r = consistency_metric.compute(predictions=preds, references=refs, states=states, environment=env)
    assert r["consistency"] == pytest.approx(3 / 6)
    assert r["invalid_rate"] == pytest.approx(2 / 6)

    # A different action with the same effect is consistent: dec at n 0 is clamped, like noop -> 1/1
    r = consistency_metric.compute(predictions=["dec"], references=["n 0"], states=["n 0"], environment=env)
    assert r == {"consistency": 1.0, "invalid_rate": 0.0}


def test_action_consistency_requires_states_and_environment(consistency_metric):
    with pytest.raises(ValueError, match="states"):
        consistency_metric.compute(predictions=["inc"], references=["n 4"], environment=CounterEnv())
    with pytest.raises(ValueError, match="environment"):
        consistency_metric.compute(predictions=["inc"], references=["n 4"], states=["n 3"])
    with pytest.raises(ValueError, match="same length"):
        consistency_metric.compute(
            predictions=["inc"], references=["n 4"], states=["n 3", "n 4"], environment=CounterEnv()
        )


# --------------------------------------------------------------------------------------------------------------------
# action_selection
# --------------------------------------------------------------------------------------------------------------------


def test_action_selection_hand_computed(selection_metric):
    predictions = [
        [-1.0, -3.0, -2.0],  # true 0 is the unique max                         -> correct, rank 1
        [-1.0, -3.0, -2.0],  # true 2: only -1.0 beats it                        -> wrong,   rank 2
        [-2.0, -2.0, -5.0],  # true 0 ties with 1: ties count against the model  -> wrong,   rank 1 + 1 = 2
        [0.5, 0.5, 0.5, 0.5],  # all tied: the three others are >= the true one  -> wrong,   rank 4
        [-4.0, -0.5],  # a question with only two candidates, true 1 is max      -> correct, rank 1
    ]
    references = [0, 2, 0, 3, 1]
    # accuracy = 2/5; mean_rank = (1 + 2 + 2 + 4 + 1) / 5 = 10/5 = 2
    r = selection_metric.compute(predictions=predictions, references=references)
    assert r["accuracy"] == pytest.approx(2 / 5)
    assert r["mean_rank"] == pytest.approx(2.0)


def test_action_selection_nan_and_bad_index(selection_metric):
    # NaN counts as -inf: the true candidate (index 1) beats a NaN -> correct, rank 1; a NaN true score -> rank 2
    r = selection_metric.compute(predictions=[[float("nan"), -1.0], [float("nan"), -1.0]], references=[1, 0])
    assert r == {"accuracy": 0.5, "mean_rank": 1.5}
    with pytest.raises(ValueError, match="out of range"):
        selection_metric.compute(predictions=[[0.0, 1.0]], references=[2])


# --------------------------------------------------------------------------------------------------------------------
# render
# --------------------------------------------------------------------------------------------------------------------


def test_render():
    assert render("state: {state} action: {action}", state="n 1", action="inc", next_state="unused") == (
        "state: n 1 action: inc"
    )
    assert render("{{literal}} {state}", state="s") == "{literal} s"
    with pytest.raises(ValueError, match="next_state"):
        render("{state} -> {next_state}", state="n 1", action="inc")
    with pytest.raises(ValueError, match="positional"):
        render("{} {state}", state="n 1")


# --------------------------------------------------------------------------------------------------------------------
# sequence_logprobs
# --------------------------------------------------------------------------------------------------------------------


def _reference_logprob(model, tokenizer, context, target, reduction):
    """One example at a time, no padding: full forward pass and log_softmax gathered at the target tokens."""
    ctx = tokenizer(context, add_special_tokens=True)["input_ids"]
    tgt = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([ctx + tgt])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    total = sum(logprobs[len(ctx) + k - 1, tok].item() for k, tok in enumerate(tgt))
    return total / len(tgt) if reduction == "mean" else total


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_sequence_logprobs_matches_unbatched(model, tokenizer, reduction):
    contexts = [
        "state: n 3 action: inc next:",
        "n",
        "state: n 1 action: dec next: the a b the a b",
        "state: n 9 action: noop next:",
        "a b",
    ]
    targets = ["n 4", "n 1", "n 0", "n 9 the", "inc dec noop 1 2 3"]
    got = sequence_logprobs(model, tokenizer, contexts, targets, batch_size=4, reduction=reduction)
    expected = [_reference_logprob(model, tokenizer, c, t, reduction) for c, t in zip(contexts, targets)]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g == pytest.approx(e, abs=1e-4)
    # batch composition / padding does not change the scores
    one_by_one = sequence_logprobs(model, tokenizer, contexts, targets, batch_size=1, reduction=reduction)
    assert one_by_one == pytest.approx(got, abs=1e-4)


def test_sequence_logprobs_options(model, tokenizer):
    contexts, targets = ["state: n 3 action: inc next:"] * 2, ["n 4", "n 5"]
    mean = sequence_logprobs(model, tokenizer, contexts, targets, reduction="mean")
    total = sequence_logprobs(model, tokenizer, contexts, targets, reduction="sum")
    # 2 target tokens + EOS = 3 tokens each
    assert total == pytest.approx([3 * m for m in mean], abs=1e-5)
    # without EOS only the 2 target tokens are scored, so the sum is larger (less negative)
    no_eos = sequence_logprobs(model, tokenizer, contexts, targets, reduction="sum", add_eos=False)
    assert all(n > t for n, t in zip(no_eos, total))
    assert all(math.isfinite(x) and x < 0 for x in mean + total + no_eos)
    with pytest.raises(ValueError, match="reduction"):
        sequence_logprobs(model, tokenizer, contexts, targets, reduction="max")
    with pytest.raises(ValueError):
        sequence_logprobs(model, tokenizer, contexts, targets[:1])


# --------------------------------------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------------------------------------

PROMPTS = [
    "state: n 3 action: inc next:",
    "n",
    "state: n 1 action: dec next: the a b",
    "state: n 9 action: noop next:",
    "a b a b a b",
    "state: n 0 action: dec next:",
]


def test_generate_padding_invariant_and_restores_tokenizer(model, tokenizer):
    tokenizer.padding_side = "right"
    one = generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=1)
    four = generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4)
    assert tokenizer.padding_side == "right"
    assert len(one) == len(PROMPTS) and all(isinstance(x, str) for x in one)
    assert one == four
    assert all(x == x.strip() and "<pad>" not in x and "</s>" not in x for x in one)
    assert generate(model, tokenizer, [], max_new_tokens=6) == []


def test_generate_without_pad_token(model):
    tok = _make_tokenizer(with_pad=False)
    assert tok.pad_token is None
    tok.padding_side = "right"
    out = generate(model, tok, PROMPTS[:3], max_new_tokens=4, batch_size=3)
    assert tok.pad_token is None and tok.pad_token_id is None and tok.padding_side == "right"
    assert out == generate(model, tok, PROMPTS[:3], max_new_tokens=4, batch_size=1)


def test_generate_restores_training_mode(model, tokenizer):
    model.train()
    try:
        generate(model, tokenizer, PROMPTS[:2], max_new_tokens=2)
        assert model.training
    finally:
        model.eval()


# --------------------------------------------------------------------------------------------------------------------
# evaluate_world_model
# --------------------------------------------------------------------------------------------------------------------

FWM_TEMPLATE = "state: {state} action: {action} next:"
IDM_TEMPLATE = "state: {state} next: {next_state} action:"


def _transitions():
    env = CounterEnv()
    rows = []
    for value, action in [(3, "inc"), (1, "dec"), (0, "noop"), (5, "noop"), (0, "inc"), (2, "dec")]:
        state = f"n {value}"
        rows.append({"state": state, "action": action, "next_state": env.apply(state, action)})
    return rows


def test_distractors_exclude_same_effect():
    env = CounterEnv()
    # at n 0, dec is clamped and has the same effect as the true action noop: only inc is a distractor
    assert evaluation._distractors(env, "n 0", "noop", "n 0") == ["inc"]
    assert evaluation._distractors(env, "n 3", "inc", "n 4") == ["dec", "noop"]


def test_evaluate_world_model_end_to_end(model, tokenizer):
    from datasets import Dataset

    rows = _transitions()
    dataset = Dataset.from_list(rows)
    env = CounterEnv()
    results = evaluate_world_model(
        model,
        tokenizer,
        model,
        tokenizer,
        dataset,
        fwm_template=FWM_TEMPLATE,
        idm_template=IDM_TEMPLATE,
        environment=env,
        max_new_tokens=4,
        batch_size=4,
        num_choices=3,
        seed=0,
    )
    expected_keys = {
        "fwm_exact_match",
        "fwm_f1",
        "idm_exact_match",
        "idm_f1",
        "idm_consistency",
        "idm_invalid_rate",
        "fwm_action_selection_accuracy",
    }
    assert set(results) == expected_keys
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in results.values())

    # independent recomputation from the generations
    states = [r["state"] for r in rows]
    actions = [r["action"] for r in rows]
    next_states = [r["next_state"] for r in rows]
    fwm_preds = generate(
        model, tokenizer, [FWM_TEMPLATE.format(state=s, action=a) for s, a in zip(states, actions)], max_new_tokens=4
    )
    assert results["fwm_exact_match"] == pytest.approx(exact_match(fwm_preds, next_states))
    assert results["fwm_f1"] == pytest.approx(token_f1(fwm_preds, next_states))
    idm_preds = generate(
        model,
        tokenizer,
        [IDM_TEMPLATE.format(state=s, next_state=n) for s, n in zip(states, next_states)],
        max_new_tokens=4,
    )
    assert results["idm_exact_match"] == pytest.approx(exact_match(idm_preds, actions))
    consistent = invalid = 0
    for s, p, n in zip(states, idm_preds, next_states):
        try:
            consistent += normalize(env.apply(s, normalize(p))) == n
        except ValueError:
            invalid += 1
    assert results["idm_consistency"] == pytest.approx(consistent / len(rows))
    assert results["idm_invalid_rate"] == pytest.approx(invalid / len(rows))

    # same seed -> same multiple-choice draw -> same accuracy
    again = evaluate_world_model(
        model, tokenizer, None, None, rows, fwm_template=FWM_TEMPLATE, idm_template=IDM_TEMPLATE,
        environment=env, max_new_tokens=4, num_choices=3, seed=0,
    )  # fmt: skip
    assert set(again) == {"fwm_exact_match", "fwm_f1", "fwm_action_selection_accuracy"}
    assert again["fwm_action_selection_accuracy"] == results["fwm_action_selection_accuracy"]


def test_evaluate_world_model_skips_and_errors(model, tokenizer):
    rows = _transitions()
    only_idm = evaluate_world_model(
        None, None, model, tokenizer, rows, fwm_template=FWM_TEMPLATE, idm_template=IDM_TEMPLATE, max_new_tokens=2
    )
    assert set(only_idm) == {"idm_exact_match", "idm_f1"}
    with pytest.raises(ValueError, match=r"\{act\}"):
        evaluate_world_model(
            model, tokenizer, None, None, rows, fwm_template="{state} {act}", idm_template=IDM_TEMPLATE
        )
    with pytest.raises(ValueError, match="next_state"):
        evaluate_world_model(
            model, tokenizer, None, None, [{"state": "n 1", "action": "inc"}],
            fwm_template=FWM_TEMPLATE, idm_template=IDM_TEMPLATE,
        )  # fmt: skip
