"""Step time of SwirlTrainer vs GRPOTrainer with a constant reward: the cost of SWIRL's partner reward.

    python benchmarks/bench_step_time.py

Both trainers get the same policy (loaded from the same saved folder), the same prompts (the phase-`fwm` prompts
rendered by SWIRL's template), the same batch and the same completion length: `generation_kwargs={"min_new_tokens":
L}` with `max_completion_length=L` makes every completion exactly L tokens long, so both generate the same amount.
The only difference is the reward: GRPOTrainer's is a constant Python function, SwirlTrainer's is the frozen partner
(a second model of the same size) scoring every completion.

A step is timed from `on_step_begin` to `on_step_end` (generation, reward, loss, backward and optimizer step). Each
trainer runs `train()` for `--steps` steps per round, the rounds alternate (G, S, S, G, ...), the first step of each
round is dropped (warm-up), and the ratio is median(SWIRL) / median(GRPO). Writes `benchmarks/results/step_time.json`
with `step_time_ratio` (target <= 1.25), the raw step times and the partner's share of SWIRL's step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common


def constant_reward(completions, **kwargs):
    return [0.0] * len(completions)


class StepTimer:
    """A TrainerCallback that records the wall time of every optimizer step."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer.current.append(time.perf_counter() - timer._start)

        self.callback = _Callback()
        self.current: list[float] = []
        self._start = 0.0


class TimedReward:
    """Wraps a reward function and accumulates the time spent in it."""

    def __init__(self, fn):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "reward")
        self.calls: list[float] = []

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.fn(*args, **kwargs)
        self.calls.append(time.perf_counter() - start)
        return out


def build_setup(workdir: Path, *, hidden_size: int, num_layers: int, vocab_size: int, completion_length: int,
                num_generations: int, batch_size: int, steps: int, n_rows: int = 64):  # fmt: skip
    """Save policy + partner, build a GRPOTrainer and a SwirlTrainer; return both with their timers."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from trl_swirl import SwirlConfig, SwirlTemplates, SwirlTrainer
    from trl_swirl.tiny import load_pretrained, save_pretrained

    tokenizer = common.build_tokenizer(vocab_size)
    policy_dir = workdir / "policy"
    partner_dir = workdir / "partner"
    save_pretrained(
        common.build_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=0), tokenizer, policy_dir
    )
    save_pretrained(
        common.build_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=1), tokenizer, partner_dir
    )

    rows = common.synthetic_rows(n_rows, seed=0)
    templates = SwirlTemplates()
    rows["prompt"] = [templates.prompt("fwm", state=s, action=a) for s, a in zip(rows["state"], rows["action"])]
    dataset = Dataset.from_dict(rows)
    common_kwargs = {
        "per_device_train_batch_size": batch_size,
        "num_generations": num_generations,
        "max_completion_length": completion_length,
        "generation_kwargs": {"min_new_tokens": completion_length},
        "max_steps": steps,
        "learning_rate": 1e-5,
        "report_to": "none",
        "bf16": False,
        "use_cpu": True,
        "logging_steps": 1000,
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
        "dataloader_num_workers": 0,
    }
    trainers = {}
    timers = {}
    rewards = {}

    policy, tok = load_pretrained(policy_dir)
    timers["grpo"] = StepTimer()
    rewards["grpo"] = TimedReward(constant_reward)
    trainers["grpo"] = GRPOTrainer(
        model=policy,
        reward_funcs=rewards["grpo"],
        args=GRPOConfig(output_dir=str(workdir / "grpo"), **common_kwargs),
        train_dataset=dataset,
        processing_class=tok,
        callbacks=[timers["grpo"].callback],
    )

    policy, tok = load_pretrained(policy_dir)
    timers["swirl"] = StepTimer()
    trainers["swirl"] = SwirlTrainer(
        model=policy,
        partner_model=str(partner_dir),
        args=SwirlConfig(output_dir=str(workdir / "swirl"), phase="fwm", **common_kwargs),
        train_dataset=dataset,
        processing_class=tok,
        callbacks=[timers["swirl"].callback],
    )
    rewards["swirl"] = TimedReward(trainers["swirl"].reward_funcs[0])
    trainers["swirl"].reward_funcs[0] = rewards["swirl"]
    return trainers, timers, rewards, tokenizer


def run_round(trainer, timer, reward, completion_length: int):
    timer.current = []
    reward.calls = []
    trainer.train()
    logged = [h for h in trainer.state.log_history if "completions/min_length" in h]
    assert logged, "no completion length was logged"
    for h in logged:  # every completion of the round had exactly `completion_length` tokens
        assert h["completions/min_length"] == h["completions/max_length"] == completion_length, h
    steps = timer.current[1:]  # drop the first (warm-up) step of each round
    calls = reward.calls[1:]
    return steps, calls


def quiet(trainer):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--vocab_size", type=int, default=4096)
    parser.add_argument("--completion_length", type=int, default=32)
    parser.add_argument("--num_generations", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=8, help="per-device batch (completions per step)")
    # short rounds, many alternations: on a shared machine the load changes over seconds, so fine interleaving
    # matters more than long rounds
    parser.add_argument("--steps", type=int, default=2, help="steps per round (the first is dropped)")
    parser.add_argument("--rounds", type=int, default=16, help="rounds per trainer, alternating")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    common.setup_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        trainers, timers, rewards, tokenizer = build_setup(
            Path(tmp), hidden_size=args.hidden_size, num_layers=args.num_layers, vocab_size=args.vocab_size,
            completion_length=args.completion_length, num_generations=args.num_generations,
            batch_size=args.batch_size, steps=args.steps,
        )  # fmt: skip
        params = common.num_params(trainers["grpo"].model)
        # warm-up round for each (first-call costs), then alternating timed rounds
        for name in ("grpo", "swirl"):
            quiet(trainers[name])
            run_round(trainers[name], timers[name], rewards[name], args.completion_length)
        step_times = {"grpo": [], "swirl": []}
        reward_times = {"grpo": [], "swirl": []}
        for r in range(args.rounds):
            order = ("grpo", "swirl") if r % 2 == 0 else ("swirl", "grpo")
            for name in order:
                steps, calls = run_round(trainers[name], timers[name], rewards[name], args.completion_length)
                step_times[name].extend(steps)
                reward_times[name].extend(calls)

    med = {name: common.median(v) for name, v in step_times.items()}
    ratio = med["swirl"] / med["grpo"]
    partner_share = common.median(reward_times["swirl"]) / med["swirl"]
    print(
        f"policy {params / 1e6:.1f}M params, {args.batch_size} completions x {args.completion_length} tokens per step\n"
        f"GRPOTrainer (constant reward): {med['grpo'] * 1e3:.1f} ms/step\n"
        f"SwirlTrainer (partner reward): {med['swirl'] * 1e3:.1f} ms/step "
        f"(partner scoring {common.median(reward_times['swirl']) * 1e3:.1f} ms = {partner_share:.1%})\n"
        f"step_time_ratio: {ratio:.3f}"
    )
    common.write_result(
        "step_time",
        {
            "step_time_ratio": ratio,
            "target": "<= 1.25",
            "target_met": ratio <= 1.25,
            "method": (
                "Same policy (saved once, loaded for each trainer), same prompts, same batch; every completion exactly "
                f"{args.completion_length} tokens (min_new_tokens == max_completion_length, checked). Step = "
                "on_step_begin..on_step_end (generation, reward, loss, backward, optimizer). Rounds of "
                f"{args.steps} steps alternate GRPO/SWIRL ({args.rounds} timed rounds each after one warm-up round); "
                "the first step of every round is dropped; ratio of medians. "
                f"torch threads = {args.threads}."
            ),
            "config": {
                "hidden_size": args.hidden_size,
                "num_layers": args.num_layers,
                "vocab_size": len(tokenizer),
                "policy_params": params,
                "partner_params": params,
                "per_device_train_batch_size": args.batch_size,
                "num_generations": args.num_generations,
                "completion_length": args.completion_length,
                "beta": 0.0,
            },
            "median_step_s": med,
            "partner_scoring_median_s": common.median(reward_times["swirl"]),
            "partner_share_of_swirl_step": partner_share,
            "constant_reward_median_s": common.median(reward_times["grpo"]),
            "step_times_s": step_times,
            "reward_call_times_s": reward_times,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
