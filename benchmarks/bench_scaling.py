"""Step time of SwirlTrainer (and of GRPOTrainer with a constant reward) vs completion length, num_generations and
model size.

    python benchmarks/bench_scaling.py

Around a base point (hidden 256, 4 layers, vocabulary 4096, 8 completions per step, `num_generations` 4, completions
of exactly 32 tokens), one variable changes at a time:

* completion length: 16, 32, 64 tokens (`min_new_tokens == max_completion_length`);
* `num_generations`: 2, 4, 8 (8 completions per step: 4, 2, 1 prompts);
* model size: hidden 128 / 2 layers, 256 / 4, 512 / 8 (policy and partner the same size).

For each point, both trainers are built from the same saved policy (see `bench_step_time.py`), and rounds of
`--steps` steps alternate GRPO / SWIRL; the first step of every round is dropped. Prints a table and writes
`benchmarks/results/scaling.json` (step times, partner scoring time, ratio per point) and `benchmarks/results/scaling.png`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from bench_step_time import build_setup, quiet, run_round

BASE = {"hidden_size": 256, "num_layers": 4, "completion_length": 32, "num_generations": 4}
SWEEPS = {
    "completion_length": [{"completion_length": n} for n in (16, 32, 64)],
    "num_generations": [{"num_generations": g} for g in (2, 4, 8)],
    "model_size": [{"hidden_size": h, "num_layers": n} for h, n in ((128, 2), (256, 4), (512, 8))],
}


def measure_point(point: dict, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        trainers, timers, rewards, _tokenizer = build_setup(
            Path(tmp), hidden_size=point["hidden_size"], num_layers=point["num_layers"], vocab_size=args.vocab_size,
            completion_length=point["completion_length"], num_generations=point["num_generations"],
            batch_size=args.batch_size, steps=args.steps,
        )  # fmt: skip
        params = common.num_params(trainers["grpo"].model)
        steps = {"grpo": [], "swirl": []}
        partner = []
        for name in trainers:
            quiet(trainers[name])
        for r in range(args.rounds):
            order = ("grpo", "swirl") if r % 2 == 0 else ("swirl", "grpo")
            for name in order:
                s, calls = run_round(trainers[name], timers[name], rewards[name], point["completion_length"])
                steps[name].extend(s)
                if name == "swirl":
                    partner.extend(calls)
    med = {k: common.median(v) for k, v in steps.items()}
    return {
        **point,
        "policy_params": params,
        "grpo_step_s": med["grpo"],
        "swirl_step_s": med["swirl"],
        "partner_scoring_s": common.median(partner),
        "step_time_ratio": med["swirl"] / med["grpo"],
        "partner_share": common.median(partner) / med["swirl"],
        "raw_step_times_s": steps,
        "raw_partner_times_s": partner,
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    labels = {
        "completion_length": ("completion length (tokens)", lambda p: p["completion_length"]),
        "num_generations": ("num_generations (8 completions per step)", lambda p: p["num_generations"]),
        "model_size": ("policy parameters (M)", lambda p: p["policy_params"] / 1e6),
    }
    for ax, (sweep, points) in zip(axes, results.items()):
        xlabel, xf = labels[sweep]
        xs = [xf(p) for p in points]
        ax.plot(xs, [p["grpo_step_s"] for p in points], "o-", label="GRPOTrainer, constant reward")
        ax.plot(xs, [p["swirl_step_s"] for p in points], "s-", label="SwirlTrainer, partner reward")
        ax.plot(xs, [p["partner_scoring_s"] for p in points], "^--", label="of which partner scoring")
        for x, p in zip(xs, points):
            ax.annotate(f"x{p['step_time_ratio']:.2f}", (x, p["swirl_step_s"]), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=8)  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds per step")
        if sweep == "model_size":
            ax.set_xscale("log")
            ax.set_xticks(xs)
            ax.set_xticklabels([f"{x:.1f}" for x in xs])
            ax.minorticks_off()
        else:
            ax.set_xticks(xs)
        ax.set_ylim(bottom=0)
        ax.margins(y=0.15)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("SWIRL step time on CPU (8 completions per step; labels: SWIRL / GRPO step-time ratio)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab_size", type=int, default=4096)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="steps per round (the first is dropped)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per trainer and point, alternating")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    common.setup_threads(args.threads)

    cache: dict[tuple, dict] = {}
    results: dict[str, list[dict]] = {}
    header = (
        f"{'sweep':18s} {'point':22s} {'params':>8s} {'GRPO s':>8s} {'SWIRL s':>8s} {'partner s':>9s} {'ratio':>6s}"
    )
    print(header)
    print("-" * len(header))
    for sweep, points in SWEEPS.items():
        results[sweep] = []
        for change in points:
            point = {**BASE, **change}
            key = tuple(sorted(point.items()))
            if key not in cache:
                cache[key] = measure_point(point, args)
            r = cache[key]
            results[sweep].append(r)
            label = ", ".join(f"{k}={v}" for k, v in change.items())
            print(
                f"{sweep:18s} {label:22s} {r['policy_params'] / 1e6:7.1f}M {r['grpo_step_s']:8.3f} "
                f"{r['swirl_step_s']:8.3f} {r['partner_scoring_s']:9.3f} {r['step_time_ratio']:6.2f}",
                flush=True,
            )
    png = common.RESULTS_DIR / "scaling.png"
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    plot(results, png)
    print(f"wrote {png}")
    ratios = [p["step_time_ratio"] for p in cache.values()]
    common.write_result(
        "scaling",
        {
            "max_step_time_ratio": max(ratios),
            "median_step_time_ratio": common.median(ratios),
            "method": (
                "SwirlTrainer vs GRPOTrainer (constant reward), same saved policy, same prompts, completions of "
                f"exactly the given length; {args.rounds} alternating rounds of {args.steps} steps per trainer and "
                f"point, first step of each round dropped, medians. {args.batch_size} completions per step, vocabulary "
                f"{args.vocab_size}, torch threads {args.threads}. One variable changes at a time around {BASE}."
            ),
            "base": BASE,
            "sweeps": results,
            "plot": str(png.relative_to(common.RESULTS_DIR.parent.parent)),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
