"""SwirlTrainer: a few real training steps in each phase, the two-adapter mode, and bad input."""

import json
import os

import pytest
import torch
from conftest import ACTIONS, STATES, tiny_args
from datasets import Dataset

from trl_swirl import SwirlConfig, SwirlTrainer
from trl_swirl.templates import DEFAULT_FWM_TEMPLATE, DEFAULT_IDM_TEMPLATE


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before, model, select=lambda n: True):
    return [n for n, p in model.named_parameters() if select(n) and not torch.equal(before[n], p.detach())]


def test_fwm_phase_with_partner_path_trains_policy_only(tmp_path, tiny_dir, fwm, transitions):
    model, tok = fwm
    args = tiny_args(tmp_path / "out", phase="fwm", beta=0.04)
    before = snapshot(model)
    trainer = SwirlTrainer(
        model=model, partner_model=str(tiny_dir / "idm"), args=args, train_dataset=transitions, processing_class=tok
    )
    partner_before = snapshot(trainer.partner_reward.model)
    trainer.train()
    assert changed(before, model), "the FWM's weights did not change"
    assert not changed(partner_before, trainer.partner_reward.model), "the frozen partner changed"
    assert all(not p.requires_grad for p in trainer.partner_reward.model.parameters())
    assert not trainer.partner_reward.model.training
    logs = [log for log in trainer.state.log_history if "rewards/swirl_partner_logprob/mean" in log]
    assert len(logs) == 2 and all(-10.0 <= log["rewards/swirl_partner_logprob/mean"] <= 0.0 for log in logs)
    # the prompts are the FWM template over (state, action); the observed next state never enters them
    prompts = trainer.train_dataset["prompt"]
    for row, prompt in zip(transitions, prompts):
        assert prompt == DEFAULT_FWM_TEMPLATE.format(state=row["state"], action=row["action"])


def test_idm_phase_in_memory_models_with_kl(tmp_path, fwm, idm, transitions):
    """beta > 0 with models built in memory: GRPOTrainer alone would rebuild the reference from an empty path."""
    from trl_swirl.tiny import build_tiny_causal_lm

    _, tok = fwm
    policy = build_tiny_causal_lm(tok, seed=5)  # in memory, never saved
    partner = build_tiny_causal_lm(tok, seed=6)
    assert policy.config._name_or_path == ""
    args = tiny_args(tmp_path / "out", phase="idm", beta=0.1)
    before = snapshot(policy)
    trainer = SwirlTrainer(model=policy, partner_model=partner, args=args, train_dataset=transitions, processing_class=tok)
    assert trainer.ref_model is not None and trainer.ref_model is not policy
    assert trainer.beta == 0.1 and args.beta == 0.1
    trainer.train()
    assert changed(before, policy)
    # the reference is the policy as it was when the phase started
    ref_params = dict(trainer.ref_model.named_parameters())
    assert all(torch.equal(before[n], ref_params[n]) for n in before)
    assert any(log.get("kl", 0) > 0 for log in trainer.state.log_history)
    prompts = trainer.train_dataset["prompt"]
    assert prompts[0] == DEFAULT_IDM_TEMPLATE.format(state=transitions[0]["state"], next_state=transitions[0]["next_state"])


def test_two_adapter_mode_trains_only_the_policy_adapter(tmp_path, fwm, transitions):
    from peft import LoraConfig, get_peft_model

    base, tok = fwm
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(0)
    model = get_peft_model(base, config, adapter_name="fwm")
    model.add_adapter("idm", config)
    model.set_adapter("fwm")
    before = snapshot(model)
    args = tiny_args(tmp_path / "out", phase="fwm", beta=0.04)
    trainer = SwirlTrainer(model=model, partner_model="idm", args=args, train_dataset=transitions, processing_class=tok)
    assert trainer.partner_reward.adapter_name == "idm" and "ref" in model.peft_config
    trainer.train()
    assert changed(before, model, lambda n: ".fwm." in n), "the policy adapter did not change"
    assert not changed(before, model, lambda n: ".idm." in n), "the partner adapter changed"
    assert not changed(before, model, lambda n: "lora_" not in n), "the base weights changed"
    assert model.active_adapter == "fwm"


def test_prompt_column_is_used_as_given_and_extra_rewards_are_weighted(tmp_path, fwm, idm, transitions):
    model, tok = fwm
    partner, _ = idm
    dataset = transitions.map(lambda r: {"prompt": "Predict.\n" + r["state"] + "\n" + r["action"] + "\n"})

    def short_completion(completions, **kwargs):
        return [-len(c.split()) / 10 for c in completions]

    args = tiny_args(tmp_path / "out", phase="fwm", max_steps=1, partner_reward_weight=0.5)
    trainer = SwirlTrainer(
        model=model, partner_model=partner, reward_funcs=short_completion, args=args, train_dataset=dataset,
        processing_class=tok,
    )
    assert trainer.train_dataset["prompt"] == dataset["prompt"]
    assert trainer.reward_weights.tolist() == [0.5, 1.0]
    trainer.train()
    log = trainer.state.log_history[0]
    assert "rewards/swirl_partner_logprob/mean" in log and "rewards/short_completion/mean" in log
    expected = 0.5 * log["rewards/swirl_partner_logprob/mean"] + log["rewards/short_completion/mean"]
    assert log["reward"] == pytest.approx(expected, abs=1e-4)


def test_model_card_tags(tmp_path, tiny_dir, fwm, transitions):
    from huggingface_hub import ModelCard

    model, tok = fwm
    args = tiny_args(tmp_path / "fwm-iter1", phase="fwm", max_steps=1)
    trainer = SwirlTrainer(
        model=model, partner_model=str(tiny_dir / "idm"), args=args, train_dataset=transitions, processing_class=tok
    )
    trainer.train()
    trainer.save_model()
    trainer.create_model_card(model_name="fwm-iter1")
    card = ModelCard.load(os.path.join(args.output_dir, "README.md"))
    tags = card.data.tags
    for tag in ("swirl", "fwm", "arxiv:2602.06130", "partner:idm", "trl", "grpo"):
        assert tag in tags, f"missing tag {tag!r} in {tags}"
    assert "2602.06130" in card.text and "frozen IDM" in card.text
    assert os.path.exists(os.path.join(args.output_dir, "model.safetensors"))
    assert not any(f.endswith(".bin") for f in os.listdir(args.output_dir))  # no pickle: training_args as JSON
    saved_args = json.load(open(os.path.join(args.output_dir, "training_args.json")))
    assert saved_args["phase"] == "fwm" and saved_args["reward_clip_min"] == -10.0


def test_every_config_field_is_a_cli_flag():
    from dataclasses import fields

    from transformers import HfArgumentParser

    own = [f for f in fields(SwirlConfig) if f.name in SwirlConfig.__dataclass_fields__ and f.name not in
           __import__("trl").GRPOConfig.__dataclass_fields__]
    assert {f.name for f in own} >= {"phase", "partner_model_name_or_path", "reward_clip_min", "fwm_template"}
    for f in own:
        assert f.metadata.get("help"), f"{f.name} has no help"
    parser = HfArgumentParser(SwirlConfig)
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", "x", "--bf16", "false", "--phase", "idm", "--reward_clip_min", "-5", "--scoring_batch_size",
         "4", "--partner_model_init_kwargs", json.dumps({"dtype": "float32"}), "--state_column", "obs"]
    )
    assert (args.phase, args.reward_clip_min, args.scoring_batch_size) == ("idm", -5.0, 4)
    assert args.partner_model_init_kwargs == {"dtype": "float32"} and args.state_column == "obs"


# ------------------------------------------------------------------------------------------------------ bad input
def test_unknown_phase_and_bad_templates(tmp_path):
    with pytest.raises(ValueError, match=r"`phase` must be one of \['fwm', 'idm'\], got 'forward'"):
        tiny_args(tmp_path, phase="forward")
    with pytest.raises(ValueError, match=r"`fwm_template` must not contain '\{next_state\}'"):
        tiny_args(tmp_path, fwm_template="{state} {action} {next_state}")
    with pytest.raises(ValueError, match=r"`idm_template` must contain the field\(s\) \['\{next_state\}'\]"):
        tiny_args(tmp_path, idm_template="{state} ->")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['goal'\]"):
        tiny_args(tmp_path, idm_template="{state} {next_state} {goal}")


def test_missing_column_names_column_and_phase(tmp_path, fwm, idm):
    model, tok = fwm
    partner, _ = idm
    no_action = Dataset.from_dict({"state": STATES[:2], "next_state": STATES[1:3]})
    with pytest.raises(ValueError, match=r"Phase 'fwm' needs the column\(s\) \['action'\] in `train_dataset`"):
        SwirlTrainer(model=model, partner_model=partner, args=tiny_args(tmp_path, phase="fwm"),
                     train_dataset=no_action, processing_class=tok)
    no_next = Dataset.from_dict({"state": STATES[:2], "action": ACTIONS[:2]})
    with pytest.raises(ValueError, match=r"Phase 'idm' needs the column\(s\) \['next_state'\]"):
        SwirlTrainer(model=model, partner_model=partner, args=tiny_args(tmp_path, phase="idm"),
                     train_dataset=no_next, processing_class=tok)


def test_empty_strings_are_refused_before_training(tmp_path, fwm, idm):
    model, tok = fwm
    partner, _ = idm
    data = Dataset.from_dict({"state": STATES[:3], "action": ["wait", " ", "wait"], "next_state": STATES[1:4]})
    with pytest.raises(ValueError, match=r"Row 1 of `train_dataset` has an empty or non-string 'action'"):
        SwirlTrainer(model=model, partner_model=partner, args=tiny_args(tmp_path, phase="fwm"),
                     train_dataset=data, processing_class=tok)
    # the idm phase does not read the action, but needs non-empty states
    data = Dataset.from_dict({"state": ["", STATES[0]], "next_state": STATES[1:3]})
    with pytest.raises(ValueError, match=r"Row 0 of `train_dataset` has an empty or non-string 'state'"):
        SwirlTrainer(model=model, partner_model=partner, args=tiny_args(tmp_path, phase="idm"),
                     train_dataset=data, processing_class=tok)


def test_target_too_long_and_missing_partner(tmp_path, fwm, idm, transitions):
    model, tok = fwm
    partner, _ = idm
    args = tiny_args(tmp_path, phase="idm", partner_max_length=8)
    with pytest.raises(ValueError, match=r"target 'next_state' of row \d+ is \d+ partner tokens long.*"
                                         r"partner_max_length"):
        SwirlTrainer(model=model, partner_model=partner, args=args, train_dataset=transitions, processing_class=tok)
    with pytest.raises(ValueError, match=r"needs a partner: the frozen IDM"):
        SwirlTrainer(model=model, args=tiny_args(tmp_path, phase="fwm"), train_dataset=transitions,
                     processing_class=tok)
    with pytest.raises(ValueError, match="is the policy itself"):
        SwirlTrainer(model=model, partner_model=model, args=tiny_args(tmp_path, phase="fwm"),
                     train_dataset=transitions, processing_class=tok)
