"""Scoring options (`scoring_batch_size`, `partner_offload`, `partner_share_prefix`) change how the partner scores, never what it scores; and
the two-adapter mode trains the policy's adapter only."""

import pytest
import torch
from conftest import ACTIONS, STATES, tiny_args

from trl_swirl import PartnerReward, SwirlTrainer

TOL = 1e-5
BATCH_SIZES = [1, 2, 3, None]


def idm_batch():
    """Phase idm: 7 generated actions of different lengths (so batches of 2 and 3 leave a remainder)."""
    states = [STATES[i % 5] for i in range(7)]
    next_states = [STATES[(i + 1) % 5] for i in range(7)]
    completions = [
        "push ball right",
        "wait",
        "push box right jump ball push ball left",
        "",
        "gibberish",
        " jump ball ",
        "ball at 1 2 vel 0 0 wait",
    ]
    return states, next_states, completions


# ------------------------------------------------------------------------------------------------------ directly
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_batch_size_gives_the_default_rewards(fwm, batch_size):
    model, tok = fwm
    states, next_states, completions = idm_batch()
    default = PartnerReward(model, tok, phase="idm", clip_min=None)(
        completions=completions, state=states, next_state=next_states
    )
    reward = PartnerReward(model, tok, phase="idm", clip_min=None, batch_size=batch_size)
    assert reward.batch_size == batch_size
    got = reward(completions=completions, state=states, next_state=next_states)
    assert got == pytest.approx(default, abs=TOL)
    assert len({round(g, 5) for g in got}) > 1


@pytest.mark.parametrize("batch_size", [2, None])
def test_offload_gives_the_default_rewards_and_parks_the_partner_on_cpu(fwm, batch_size):
    model, tok = fwm
    states, next_states, completions = idm_batch()
    default = PartnerReward(model, tok, phase="idm")(completions=completions, state=states, next_state=next_states)
    reward = PartnerReward(model, tok, phase="idm", offload=True, batch_size=batch_size, device="cpu")
    got = reward(completions=completions, state=states, next_state=next_states)
    assert got == pytest.approx(default, abs=TOL)
    assert next(model.parameters()).device.type == "cpu"  # back on the CPU after the call
    # offload moves a separate partner model; an adapter of the policy cannot be offloaded on its own
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]), adapter_name="policy")
    peft_model.add_adapter("partner", LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="`offload` applies to a separate partner model"):
        PartnerReward(peft_model, tok, phase="idm", offload=True, adapter_name="partner")


# --------------------------------------------------------------------------------------- through the trainer
def _train_one_step(tmp_path, tiny_dir, transitions, **overrides):
    """One SWIRL step (phase fwm) from freshly loaded models; returns the trainer, its completions and rewards."""
    from trl_swirl.tiny import load_pretrained

    policy, tok = load_pretrained(tiny_dir / "fwm")
    partner, _ = load_pretrained(tiny_dir / "idm")
    args = tiny_args(tmp_path / "run", max_steps=1, **overrides)
    trainer = SwirlTrainer(
        model=policy, partner_model=partner, args=args, train_dataset=transitions, processing_class=tok
    )
    trainer.train()
    completions = list(trainer._logs["completion"])
    rewards = list(trainer._logs["rewards"]["swirl_partner_logprob"])
    assert len(completions) == len(rewards) == args.per_device_train_batch_size
    return trainer, completions, rewards


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, tiny_dir):
    from datasets import Dataset

    rows = {
        "state": [STATES[i % 4] for i in range(8)],
        "action": [ACTIONS[i % 3] for i in range(8)],
        "next_state": [STATES[(i + 1) % 4] for i in range(8)],
    }
    transitions = Dataset.from_dict(rows)
    trainer, completions, rewards = _train_one_step(tmp_path_factory.mktemp("default"), tiny_dir, transitions)
    assert trainer.partner_reward.batch_size is None and not trainer.partner_reward.offload
    return transitions, completions, rewards


@pytest.mark.parametrize(
    "overrides",
    [{"scoring_batch_size": b} for b in BATCH_SIZES]
    + [{"partner_offload": True}, {"partner_offload": True, "scoring_batch_size": 3}]
    + [{"partner_share_prefix": False}],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_trainer_scoring_options_give_the_default_rewards(tmp_path, tiny_dir, default_run, overrides):
    transitions, default_completions, default_rewards = default_run
    trainer, completions, rewards = _train_one_step(tmp_path, tiny_dir, transitions, **overrides)
    reward = trainer.partner_reward
    # the config reached the reward function the trainer uses
    assert reward.batch_size == overrides.get("scoring_batch_size")
    assert reward.offload == overrides.get("partner_offload", False)
    assert reward.share_prefix == overrides.get("partner_share_prefix", True)
    assert trainer.reward_funcs[0] is reward
    if reward.offload:
        assert reward.device == trainer.accelerator.device
        assert next(reward.model.parameters()).device.type == "cpu"
    # same seed, same models: the same completions, scored alike
    assert completions == default_completions
    assert rewards == pytest.approx(default_rewards, abs=TOL)
    assert all(-10.0 <= r < 0 for r in rewards)


# ---------------------------------------------------------------------------------------------- two adapters
def _two_adapter_policy(fwm):
    from peft import LoraConfig, get_peft_model

    model, tok = fwm
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules="all-linear",
        init_lora_weights=False,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(0)
    peft_model = get_peft_model(model, config, adapter_name="fwm")
    torch.manual_seed(1)
    peft_model.add_adapter("idm", config)
    peft_model.set_adapter("idm")  # phase idm: the IDM adapter is the policy
    return peft_model, tok


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_two_adapter_training_leaves_partner_and_base_untouched(tmp_path, fwm, transitions):
    peft_model, tok = _two_adapter_policy(fwm)
    before = _snapshot(peft_model)
    assert any(".fwm." in n for n in before) and any(".idm." in n for n in before)

    args = tiny_args(tmp_path, phase="idm", beta=0.04, max_steps=2, learning_rate=1e-2)
    trainer = SwirlTrainer(
        model=peft_model, partner_model="fwm", args=args, train_dataset=transitions, processing_class=tok
    )
    reward = trainer.partner_reward
    assert reward.adapter_name == "fwm" and reward.model is peft_model and trainer.partner_name == "adapter:fwm"
    # the partner adapter is not in the optimizer (built at train time; checked afterwards too)
    trainer.train()
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    named = dict(peft_model.named_parameters())
    assert optimized, "the optimizer holds no parameter"
    assert all(".idm." in n for n, p in named.items() if id(p) in optimized)

    after = _snapshot(peft_model)
    partner = [n for n in before if ".fwm." in n]
    base = [n for n in before if "lora_" not in n]
    policy = [n for n in before if ".idm." in n]
    assert partner and base and policy
    for n in partner + base:
        assert torch.equal(before[n], after[n]), f"{n} changed during training"
    changed = [n for n in policy if not torch.equal(before[n], after[n])]
    assert changed, "the policy adapter did not change"
    assert max((after[n] - before[n]).abs().max().item() for n in policy) > 1e-4
    # the reference adapter GRPO uses for the KL term is a frozen copy of the policy adapter as it was
    for n in policy:
        ref = n.replace(".idm.", ".ref.")
        assert ref in after and torch.equal(after[ref], before[n])
    # the policy adapter is active and trainable at the end, the partner's frozen
    assert peft_model.active_adapter == "idm"
    assert all(p.requires_grad for n, p in named.items() if ".idm." in n)
    assert not any(p.requires_grad for n, p in named.items() if ".fwm." in n or ".ref." in n)
    logged = trainer.state.log_history[0]
    assert -10.0 <= logged["rewards/swirl_partner_logprob/mean"] < 0
    assert "kl" in logged


def test_trainer_logs_what_scoring_computed(tmp_path, tiny_dir, transitions):
    trainer, completions, _ = _train_one_step(tmp_path, tiny_dir, transitions)
    stats = trainer.partner_reward.last_stats  # one step, one scoring call: the logged figures are this call's
    logged = next(entry for entry in trainer.state.log_history if "partner/computed_token_fraction" in entry)
    assert stats["pairs"] == len(completions)
    assert logged["partner/computed_token_fraction"] == pytest.approx(stats["computed_tokens"] / stats["tokens"])
    assert logged["partner/computed_token_fraction"] < 1  # the 4 completions of the prompt share its tokens
    padding = (stats["padded_tokens"] - stats["computed_tokens"]) / stats["padded_tokens"]
    assert logged["partner/padding_fraction"] == pytest.approx(padding)
    assert logged["partner/forward_passes"] == stats["forward_calls"] >= 2
