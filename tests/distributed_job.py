"""A tiny SwirlTrainer job, run by `tests/test_distributed.py` under 1 and 2 CPU processes.

    CUDA_VISIBLE_DEVICES="" accelerate launch --multi_gpu --num_processes 2 tests/distributed_job.py --out DIR
    python tests/distributed_job.py --out DIR     # or accelerate launch --num_processes 1 ...

(2 ranks x 4 completions, then 1 rank x 8. With accelerate 1.15, `accelerate launch --cpu --num_processes 2` starts a
single process unless an MPI hostfile is given; `--multi_gpu` on a machine without visible GPUs starts 2 torchrun
processes, which form a gloo process group on the CPU.)

The global generation batch is the same in both layouts (8 completions = 2 prompts x `num_generations` 4 per step):
each rank gets `8 // world_size` completions per step. Every rank writes `DIR/rank{r}.json` with

* `calls`: what the partner reward saw on that rank (the dataset row `uid`, prompt, completion, state, action) and
  the rewards it returned, i.e. what that rank scored itself;
* `gathered`: the rewards after GRPO's all-gather (the partner column of `rewards_per_func`), and the (uid, prompt,
  completion, state, action) rows of every rank gathered in rank order with `gather_object`;
* `weights_sha256` of the trained policy, and the logged history;

and rank 0 writes the trained policy's tensors to `DIR/final_weights.safetensors`.

Layout-invariant sampling. GRPO seeds each rank differently (`set_seed(seed, device_specific=True)`) and samples the
whole local batch from the global RNG, so 1 x 8 and 2 x 4 completions would differ and so would the trajectories.
Greedy decoding would make the 4 completions of a group identical (zero advantages, nothing learned). The job
therefore samples with the Gumbel-max trick using noise drawn from a generator seeded by the sequence so far (prompt
without its left padding + tokens generated so far) and the completion's position in its group: a genuine random
sample from the model's distribution, different within a group, and the same whatever the process layout. It is
injected as a logits processor that leaves only the sampled token (the trainer's own sampling then has one choice).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

# the test suite's offline settings and tiny world (this script's folder is on sys.path when it runs)
from conftest import ACTIONS, CORPUS, STATES

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from transformers import LogitsProcessor, LogitsProcessorList

from trl_swirl import SwirlConfig, SwirlTrainer
from trl_swirl.tiny import build_tiny_causal_lm, build_word_tokenizer, load_pretrained, save_pretrained

GLOBAL_BATCH = 8  # completions per step, over all ranks
NUM_GENERATIONS = 4
MAX_COMPLETION_LENGTH = 8


def transitions():
    from datasets import Dataset

    rows = {
        "uid": list(range(8)),
        "state": [STATES[i % 4] for i in range(8)],
        "action": [ACTIONS[i % 3] for i in range(8)],
        "next_state": [STATES[(i + 1) % 4] for i in range(8)],
    }
    return Dataset.from_dict(rows)


def build_models(models_dir: str) -> None:
    """The FWM (policy) and the IDM (partner), sharing one word-level tokenizer, saved with safetensors."""
    tok = build_word_tokenizer(CORPUS)
    save_pretrained(build_tiny_causal_lm(tok, seed=0), tok, os.path.join(models_dir, "fwm"))
    save_pretrained(build_tiny_causal_lm(tok, seed=1), tok, os.path.join(models_dir, "idm"))


class LayoutInvariantSampler(LogitsProcessor):
    """Gumbel-max sampling with noise keyed by (sequence so far, position in the group): see the module docstring."""

    def __init__(self, pad_token_id: int, num_generations: int, seed: int = 0):
        self.pad_token_id = pad_token_id
        self.num_generations = num_generations
        self.seed = seed

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = torch.full_like(scores, float("-inf"))
        for row in range(input_ids.size(0)):
            ids = input_ids[row].tolist()
            start = 0
            while start < len(ids) and ids[start] == self.pad_token_id:  # strip the left padding (layout-dependent)
                start += 1
            key = json.dumps([self.seed, row % self.num_generations, ids[start:]]).encode()
            generator = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:7], "little"))
            uniform = torch.rand(scores.size(-1), generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
            gumbel = -torch.log(-torch.log(uniform))
            choice = int(torch.argmax(scores[row].double().cpu() + gumbel))
            out[row, choice] = 0.0
        return out


class RecordingReward:
    """Calls the partner reward unchanged and records what it was given and what it returned on this rank."""

    def __init__(self, reward, log: list):
        self.reward = reward
        self.log = log
        self.__name__ = reward.__name__

    def __call__(self, prompts=None, completions=None, **kwargs):
        rewards = self.reward(prompts=prompts, completions=completions, **kwargs)
        self.log.append(
            {
                "uids": list(kwargs["uid"]),
                "prompts": list(prompts),
                "completions": list(completions),
                "states": list(kwargs["state"]),
                "actions": list(kwargs["action"]),
                "rewards": [float(r) for r in rewards],
            }
        )
        return rewards


class RecordingSwirlTrainer(SwirlTrainer):
    """Records, after GRPO's gather, the rewards of all ranks and (via gather_object) the rows they belong to."""

    gathered_log: list

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        rows = [
            (x["uid"], p, c, x["state"], x["action"]) for x, p, c in zip(inputs, prompts, completions, strict=True)
        ]
        all_rows = gather_object(rows)
        self.gathered_log.append(
            {
                "rewards": rewards_per_func[:, 0].tolist(),
                "uids": [r[0] for r in all_rows],
                "prompts": [r[1] for r in all_rows],
                "completions": [r[2] for r in all_rows],
                "states": [r[3] for r in all_rows],
                "actions": [r[4] for r in all_rows],
            }
        )
        return rewards_per_func


def two_adapter_policy(base):
    """One base, two LoRA adapters (non-zero at init, seeded): 'fwm' (the policy, active) and 'idm' (the partner)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, lora_dropout=0.0)
    torch.manual_seed(10)
    model = get_peft_model(base, config, adapter_name="fwm")
    torch.manual_seed(11)
    model.add_adapter("idm", config)
    model.set_adapter("fwm")
    return model


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default=None, help="folder with fwm/ and idm/ (built there if missing)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--learning_rate", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--two_adapter",
        action="store_true",
        help="two-adapter mode: the policy is the 'fwm' LoRA adapter and the partner the 'idm' adapter of one base",
    )
    args = parser.parse_args(argv)

    # Without CUDA, torchrun-launched processes only form a process group (gloo) if the state is told to use the CPU
    cpu = not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    world, rank = state.num_processes, state.process_index
    if GLOBAL_BATCH % (world * NUM_GENERATIONS) != 0:
        raise SystemExit(f"world size {world} must divide {GLOBAL_BATCH // NUM_GENERATIONS} (whole groups per rank)")
    os.makedirs(args.out, exist_ok=True)
    models_dir = args.models or os.path.join(args.out, "models")
    with state.main_process_first():
        if not os.path.isdir(os.path.join(models_dir, "idm")) and state.is_main_process:
            build_models(models_dir)

    policy, tokenizer = load_pretrained(os.path.join(models_dir, "fwm"))
    partner_model = os.path.join(models_dir, "idm")  # loaded from its folder, frozen, like a TRL reward model
    if args.two_adapter:
        policy = two_adapter_policy(policy)
        partner_model = "idm"
    initial = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}
    config = SwirlConfig(
        output_dir=os.path.join(args.out, "trainer"),
        phase="fwm",
        num_generations=NUM_GENERATIONS,
        per_device_train_batch_size=GLOBAL_BATCH // world,
        max_steps=args.steps,
        max_completion_length=MAX_COMPLETION_LENGTH,
        # SGD, not Adam: Adam's first update is ~lr * sign(grad), so a gradient that is 0 up to rounding could move a
        # weight by +-lr in one layout and -+lr in the other; with SGD the weight difference is lr * (rounding noise)
        optim="sgd",
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        beta=0.04,  # exercises the reference model (a frozen copy, prepared on every rank)
        report_to="none",
        bf16=False,
        logging_steps=1,
        save_strategy="no",
        seed=args.seed,
        use_cpu=cpu,
        dataloader_num_workers=0,
    )
    trainer = RecordingSwirlTrainer(
        model=policy,
        partner_model=partner_model,
        args=config,
        train_dataset=transitions(),
        processing_class=tokenizer,
    )
    calls: list = []
    trainer.gathered_log = []
    trainer.reward_funcs[0] = RecordingReward(trainer.reward_funcs[0], calls)
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    sampler = LayoutInvariantSampler(tokenizer.pad_token_id, NUM_GENERATIONS, seed=args.seed)
    original_generate = unwrapped.generate

    def generate(*a, **kw):
        kw["logits_processor"] = LogitsProcessorList([sampler])
        return original_generate(*a, **kw)

    unwrapped.generate = generate
    trainer.train()

    # the full state dict on every layout (under FSDP, `get_state_dict` gathers the shards: a collective)
    sharded = any(type(p).__name__ == "DTensor" for p in trainer.model.parameters())
    final = {k: v.detach().cpu().clone() for k, v in trainer.accelerator.get_state_dict(trainer.model).items()}
    if args.two_adapter:  # the partner is the 'idm' adapter of the policy's own module
        partner_params = [p for n, p in unwrapped.named_parameters() if ".idm." in n]
        assert trainer.partner_reward.adapter_name == "idm" and partner_params
    else:
        partner_params = list(trainer.partner_reward.model.parameters())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    record = {
        "rank": rank,
        "world_size": world,
        "two_adapter": args.two_adapter,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "policy_sharded": sharded,
        "per_device_train_batch_size": GLOBAL_BATCH // world,
        "num_generations": NUM_GENERATIONS,
        "calls": calls,
        "gathered": trainer.gathered_log,
        "weights_sha256": weights_sha256(final),
        "partner_frozen": all(not p.requires_grad for p in partner_params),
        "partner_in_optimizer": any(id(p) in optimized for p in partner_params),
        "log_history": trainer.state.log_history,
    }
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump(record, f, indent=1)
    if state.is_main_process:
        from safetensors.torch import save_file

        save_file(final, os.path.join(args.out, "final_weights.safetensors"))
        save_file(initial, os.path.join(args.out, "initial_weights.safetensors"))
    state.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
