"""The partner's scoring paths (shared-prefix cache, length buckets, plain batches) on the decoder architectures users
bring, built tiny from their configs: every reward must equal the one-pair-at-a-time computation. Sliding-window
models (Mistral, Gemma 2/3, Qwen2 with `use_sliding_window`) get windows shorter than the sequences, so the windowed
masks and the trimmed caches are exercised."""

import pytest
import torch
from conftest import CORPUS, STATES
from test_partner import reference_logprob

from trl_swirl import PartnerReward
from trl_swirl.templates import DEFAULT_FWM_TEMPLATE, DEFAULT_IDM_TEMPLATE
from trl_swirl.tiny import build_word_tokenizer

TOL = 1e-5
WINDOW = 12  # shorter than every sequence below
LONG = [" | ".join(STATES[i : i + 3]) for i in range(3)]
GENERATED = ["ball at 2 2 vel 1 0", "box at 0 0", "", "wait ball at 3 1 vel 0 -1 | box at 0 0 vel 0 0", "box"]
ARCHITECTURES = {
    "llama": {},
    "qwen2": {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 0},
    "qwen3": {"head_dim": 8},
    "mistral": {"sliding_window": WINDOW},
    "gemma2": {"head_dim": 8, "sliding_window": WINDOW},
    "gemma3_text": {"head_dim": 8, "sliding_window": WINDOW},
    "phi3": {},
    "gpt_neox": {},
    "gpt2": None,  # its own config names
}


def _model(name, tok):
    from transformers import AutoConfig, AutoModelForCausalLM

    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    if name == "gpt2":
        config = AutoConfig.for_model("gpt2", vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128, **ids)
    else:
        config = AutoConfig.for_model(
            name, vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, **ids, **ARCHITECTURES[name],
        )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer(CORPUS)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
@pytest.mark.parametrize("phase", ["fwm", "idm"])
def test_scoring_paths_match_the_reference(tok, name, phase):
    model = _model(name, tok)
    states = [s for s in LONG for _ in GENERATED]
    completions = GENERATED * len(LONG)
    if phase == "fwm":
        targets = ["push ball right", "wait", "jump ball"] * len(GENERATED)
        contexts = [DEFAULT_IDM_TEMPLATE.format(state=s, next_state=c) for s, c in zip(states, completions)]
        columns = {"state": states, "action": targets}
    else:
        targets = [STATES[i % 4] for i in range(len(states))]
        contexts = [DEFAULT_FWM_TEMPLATE.format(state=s, action=c) for s, c in zip(states, completions)]
        columns = {"state": states, "next_state": targets}
    expected = [reference_logprob(model, tok, c, t) for c, t in zip(contexts, targets)]
    assert max(len(tok(c)["input_ids"]) for c in contexts) > 2 * WINDOW
    for options in ({}, {"batch_size": 4}, {"share_prefix": False}):
        reward = PartnerReward(model, tok, phase=phase, clip_min=None, **options)
        got = reward(completions=completions, **columns)
        assert got == pytest.approx(expected, abs=TOL), (name, options)
        if not options:
            assert reward._use_shared_prefix
            assert reward.last_stats["computed_tokens"] < reward.last_stats["tokens"]


HYBRIDS = {  # models with recurrent layers beside attention: their state would run over padding
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 4, "num_experts": 1,
              "mamba_d_state": 4, "mamba_expand": 2, "mamba_dt_rank": 4},
    "qwen3_next": {"head_dim": 8, "linear_num_value_heads": 2, "linear_num_key_heads": 2, "linear_key_head_dim": 8,
                   "linear_value_head_dim": 8, "num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 32,
                   "shared_expert_intermediate_size": 32, "layer_types": ["linear_attention", "full_attention"]},
    "lfm2": {"layer_types": ["conv", "full_attention"], "block_dim": 32, "block_ff_dim": 64, "conv_L_cache": 3},
}  # fmt: skip


def _hybrid(name, tok):
    from transformers import AutoConfig, AutoModelForCausalLM

    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    config = AutoConfig.for_model(
        name, vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=128, **ids, **HYBRIDS[name],
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def _fwm_batch():
    states = [s for s in LONG for _ in GENERATED]
    targets = ["push ball right", "wait", "jump ball"] * len(GENERATED)
    return states, GENERATED * len(LONG), targets


@pytest.mark.parametrize("name", list(HYBRIDS))
def test_recurrent_layers_score_whole_sequences(tok, name):
    """Reusing a prefix's recurrent state over padding is not exact (errors of 1e-5 to 2e-3 were measured): such
    partners score whole sequences, and match the reference."""
    model = _hybrid(name, tok)
    states, completions, targets = _fwm_batch()
    reward = PartnerReward(model, tok, phase="fwm", clip_min=None)
    assert reward.share_prefix and not reward._use_shared_prefix
    got = reward(completions=completions, state=states, action=targets)
    assert reward.last_stats["computed_tokens"] == reward.last_stats["tokens"]
    contexts = [DEFAULT_IDM_TEMPLATE.format(state=s, next_state=c) for s, c in zip(states, completions)]
    assert got == pytest.approx([reference_logprob(model, tok, c, t) for c, t in zip(contexts, targets)], abs=TOL)


def test_unsupported_cache_is_a_clear_error(tok, monkeypatch):
    """Should a model with recurrent layers get past the configuration check, the shared path refuses its cache
    rather than return inexact rewards."""
    import trl_swirl.partner as partner

    monkeypatch.setattr(partner, "_has_recurrent_layers", lambda model: False)
    model = _hybrid("lfm2", tok)
    reward = PartnerReward(model, tok, phase="fwm", clip_min=None)
    assert reward._use_shared_prefix
    states, completions, targets = _fwm_batch()
    with pytest.raises(RuntimeError, match=r"not a cache of attention layers.*partner_share_prefix=False"):
        reward(completions=completions, state=states, action=targets)
