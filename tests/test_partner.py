"""PartnerReward against an independent, one-example-at-a-time computation of the same log-probabilities."""

import pytest
import torch
from conftest import ACTIONS, CORPUS, STATES

from trl_swirl import PartnerReward, SwirlTemplates
from trl_swirl.templates import DEFAULT_FWM_TEMPLATE, DEFAULT_IDM_TEMPLATE
from trl_swirl.tiny import build_tiny_causal_lm, build_word_tokenizer

TOL = 1e-4


def reference_logprob(model, tokenizer, context, target, *, reduction="mean", include_eos=True, add_special=True):
    """Unbatched, unpadded: one full forward pass per (context, target), log_softmax, gather."""
    ctx = tokenizer(context, add_special_tokens=add_special)["input_ids"]
    tgt = tokenizer(target, add_special_tokens=False)["input_ids"]
    if include_eos and tokenizer.eos_token_id is not None:
        tgt = tgt + [tokenizer.eos_token_id]
    ids = torch.tensor([ctx + tgt])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logps = torch.log_softmax(logits, dim=-1)
    values = [logps[len(ctx) + j - 1, tok].item() for j, tok in enumerate(tgt)]
    return sum(values) if reduction == "sum" else sum(values) / len(values)


def fwm_batch():
    """Phase fwm: completions are generated next states of different lengths (padding must not matter)."""
    states = [STATES[0], STATES[1], STATES[4], STATES[2], STATES[3]]
    completions = ["ball at 2 2 vel 1 0", "ball", "box at 0 0 vel 0 0 | ball at 4 4 vel 0 0", "", "gibberish"]
    actions = [ACTIONS[0], ACTIONS[2], ACTIONS[4], ACTIONS[1], ACTIONS[3]]
    return states, completions, actions


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fwm_phase_matches_independent_computation(idm, reduction):
    model, tok = idm
    reward = PartnerReward(model, tok, phase="fwm", reduction=reduction, clip_min=None)
    states, completions, actions = fwm_batch()
    got = reward(prompts=["p"] * 5, completions=completions, state=states, action=actions, next_state=["unused"] * 5)
    for s, c, a, g in zip(states, completions, actions, got):
        context = DEFAULT_IDM_TEMPLATE.format(state=s, next_state=c.strip())
        assert g == pytest.approx(reference_logprob(model, tok, context, a, reduction=reduction), abs=TOL)
    assert len(set(round(g, 6) for g in got)) > 1  # the completions really change the reward


def test_idm_phase_matches_independent_computation(fwm):
    model, tok = fwm
    reward = PartnerReward(model, tok, phase="idm", clip_min=None)
    states = [STATES[0], STATES[1], STATES[2]]
    next_states = [STATES[1], STATES[2], STATES[4]]
    completions = ["push ball right", "wait", "push box right jump ball"]
    got = reward(prompts=["p"] * 3, completions=completions, state=states, next_state=next_states)
    for s, z, y, g in zip(states, completions, next_states, got):
        context = DEFAULT_FWM_TEMPLATE.format(state=s, action=z)
        assert g == pytest.approx(reference_logprob(model, tok, context, y), abs=TOL)


def test_partner_with_a_different_tokenizer(tiny_dir):
    from trl_swirl.tiny import load_pretrained

    model, tok = load_pretrained(tiny_dir / "idm_other_tok")
    policy_tok = build_word_tokenizer(CORPUS)
    assert tok("ball")["input_ids"] != policy_tok("ball")["input_ids"]  # really another vocabulary, BOS added
    reward = PartnerReward(model, tok, phase="fwm", clip_min=None)
    states, completions, actions = fwm_batch()
    got = reward(completions=completions, state=states, action=actions)
    for s, c, a, g in zip(states, completions, actions, got):
        context = DEFAULT_IDM_TEMPLATE.format(state=s, next_state=c.strip())
        ref = reference_logprob(model, tok, context, a)
        assert g == pytest.approx(ref, abs=TOL)
    # the context carries BOS, the target does not: scoring with BOS before the target would differ
    ctx_ids, tgt_ids = reward.encode(["State:"], [ACTIONS[0]])[0]
    assert ctx_ids[0] == tok.bos_token_id and tok.bos_token_id not in tgt_ids


def two_adapter_model(fwm):
    from peft import LoraConfig, get_peft_model

    model, tok = fwm
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, config, adapter_name="idm")
    torch.manual_seed(1)
    peft_model.add_adapter("fwm", config)
    peft_model.set_adapter("idm")
    return peft_model, tok


def test_two_adapter_case_matches_and_restores_policy_adapter(fwm):
    peft_model, tok = two_adapter_model(fwm)
    reward = PartnerReward(peft_model, tok, phase="idm", adapter_name="fwm", clip_min=None)
    states, next_states, completions = [STATES[0], STATES[1]], [STATES[1], STATES[2]], ["push ball right", "wait x"]
    peft_model.train()
    got = reward(completions=completions, state=states, next_state=next_states)
    # independent computation with the partner adapter switched on by hand
    peft_model.set_adapter("fwm")
    peft_model.eval()
    expected = [
        reference_logprob(peft_model, tok, DEFAULT_FWM_TEMPLATE.format(state=s, action=z), y)
        for s, z, y in zip(states, completions, next_states)
    ]
    peft_model.set_adapter("idm")
    assert got == pytest.approx(expected, abs=TOL)
    # the policy adapter's scores differ: the switch really happened
    policy_score = reference_logprob(peft_model, tok, DEFAULT_FWM_TEMPLATE.format(state=states[0], action=completions[0]), next_states[0])
    assert abs(policy_score - expected[0]) > 1e-3
    # and the policy's adapter is restored, trainable; the partner's frozen; train mode restored
    assert peft_model.active_adapter == "idm"
    peft_model.train()
    reward(completions=completions, state=states, next_state=next_states)
    assert peft_model.training
    grads = {n: p.requires_grad for n, p in peft_model.named_parameters() if "lora_" in n}
    assert all(v for n, v in grads.items() if ".idm." in n) and not any(v for n, v in grads.items() if ".fwm." in n)


def test_tokenizer_without_pad_token(idm):
    model, _ = idm
    tok = build_word_tokenizer(CORPUS, pad_token=None)
    assert tok.pad_token is None
    reward = PartnerReward(model, tok, phase="fwm", clip_min=None)
    states, completions, actions = fwm_batch()
    got = reward(completions=completions, state=states, action=actions)
    for s, c, a, g in zip(states, completions, actions, got):
        assert g == pytest.approx(reference_logprob(model, tok, DEFAULT_IDM_TEMPLATE.format(state=s, next_state=c), a), abs=TOL)
    assert tok.pad_token is None  # the user's tokenizer is left as it was


def test_clipping_and_batch_size_invariance(idm):
    model, tok = idm
    states, completions, actions = fwm_batch()
    unclipped = PartnerReward(model, tok, phase="fwm", clip_min=None)(completions=completions, state=states, action=actions)
    clip = sorted(unclipped)[2]  # clips some, not all
    clipped = PartnerReward(model, tok, phase="fwm", clip_min=clip)(completions=completions, state=states, action=actions)
    assert clipped == pytest.approx([max(u, clip) for u in unclipped], abs=1e-6)
    assert any(u < clip for u in unclipped)
    one_by_one = PartnerReward(model, tok, phase="fwm", clip_min=None, batch_size=1)
    assert one_by_one(completions=completions, state=states, action=actions) == pytest.approx(unclipped, abs=1e-5)
    default = PartnerReward(model, tok, phase="fwm")
    assert default.clip_min == -10.0


def test_eos_can_be_left_out(idm):
    model, tok = idm
    reward = PartnerReward(model, tok, phase="fwm", include_eos=False, clip_min=None)
    got = reward(completions=["ball"], state=[STATES[0]], action=[ACTIONS[0]])
    context = DEFAULT_IDM_TEMPLATE.format(state=STATES[0], next_state="ball")
    assert got[0] == pytest.approx(reference_logprob(model, tok, context, ACTIONS[0], include_eos=False), abs=TOL)


def test_conversational_format(idm):
    model, tok = idm
    tok = build_word_tokenizer(CORPUS + ["user:", "assistant:"])
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}assistant:"
    model = build_tiny_causal_lm(tok, seed=3)
    templates = SwirlTemplates(prompt_format="conversational")
    reward = PartnerReward(model, tok, phase="fwm", templates=templates, clip_min=None)
    completion = [{"role": "assistant", "content": "ball at 2 2 vel 1 0"}]
    got = reward(completions=[completion], state=[STATES[0]], action=[ACTIONS[0]])
    text = tok.apply_chat_template(
        [{"role": "user", "content": DEFAULT_IDM_TEMPLATE.format(state=STATES[0], next_state="ball at 2 2 vel 1 0")}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text.startswith("user: State:")
    assert got[0] == pytest.approx(reference_logprob(model, tok, text, ACTIONS[0], add_special=False), abs=TOL)


def test_truncation_rule(idm):
    model, tok = idm
    reward = PartnerReward(model, tok, phase="fwm", clip_min=None, max_length=12)
    long_completion = " ".join([STATES[4]] * 3)
    got = reward(completions=[long_completion], state=[STATES[0]], action=[ACTIONS[0]])
    # the context keeps its last 12 - len(target) tokens; the target (3 words + EOS) is whole
    ctx = tok(DEFAULT_IDM_TEMPLATE.format(state=STATES[0], next_state=long_completion))["input_ids"]
    tgt = tok(ACTIONS[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([ctx[-(12 - len(tgt)) :] + tgt])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0], -1)
    n_ctx = 12 - len(tgt)
    expected = sum(logps[n_ctx + j - 1, t].item() for j, t in enumerate(tgt)) / len(tgt)
    assert got[0] == pytest.approx(expected, abs=TOL)
    # the default limit is the partner's own (the tokenizer's model_max_length / max_position_embeddings)
    assert PartnerReward(model, tok, phase="fwm").max_length == 512


def test_target_longer_than_partner_context_is_an_error(idm):
    model, tok = idm
    reward = PartnerReward(model, tok, phase="idm", max_length=6)
    with pytest.raises(ValueError, match=r"target 'next_state' of row 0 is 17 partner tokens long.*partner_max_length"):
        reward(completions=["wait"], state=[STATES[0]], next_state=[STATES[4] + " x"])


def test_missing_column_and_empty_target_errors(idm):
    model, tok = idm
    reward = PartnerReward(model, tok, phase="fwm")
    with pytest.raises(ValueError, match=r"phase 'fwm'.*needs the dataset column 'action'"):
        reward(completions=["x"], state=[STATES[0]], next_state=[STATES[1]])
    with pytest.raises(ValueError, match=r"target 'action' of row 1 is empty"):
        reward(completions=["x", "y"], state=[STATES[0]] * 2, action=["wait", "  "])
    with pytest.raises(ValueError, match="`phase` must be one of"):
        PartnerReward(model, tok, phase="forward")
    with pytest.raises(ValueError, match="needs the partner to be a `PeftModel`"):
        PartnerReward(model, tok, phase="fwm", adapter_name="idm")


def test_usable_as_a_plain_trl_reward_function(tmp_path, fwm, idm, transitions):
    """PartnerReward plugs into TRL's own GRPOTrainer as an ordinary reward function."""
    from trl import GRPOConfig, GRPOTrainer

    policy, tok = fwm
    partner, partner_tok = idm
    dataset = transitions.map(lambda r: {"prompt": DEFAULT_FWM_TEMPLATE.format(state=r["state"], action=r["action"])})
    reward = PartnerReward(partner, partner_tok, phase="fwm")
    args = GRPOConfig(
        output_dir=str(tmp_path), num_generations=4, per_device_train_batch_size=4, max_steps=1,
        max_completion_length=6, report_to="none", bf16=False, save_strategy="no", logging_steps=1,
    )
    trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tok)
    trainer.train()
    logged = trainer.state.log_history[0]
    assert -10.0 <= logged["rewards/swirl_partner_logprob/mean"] < 0
