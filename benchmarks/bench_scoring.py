"""PartnerReward's batched scoring vs a per-sample loop (one forward pass per completion, as in the paper's code).

    python benchmarks/bench_scoring.py

Each workload is one reward call of 32 completions, scored three ways by the same model:

* `per_sample`: for each pair, tokenize context + target, one forward pass over the whole sequence, log-softmax over
  the full logits, gather the target tokens, mean: what a straightforward per-example implementation does;
* `batched_no_share`: `PartnerReward(share_prefix=False)`: length-sorted, left-padded batch (`batch_size=None`: all 32
  in one forward pass), logits only for the target positions (`logits_to_keep`);
* `batched` (the default `PartnerReward`): the same, plus the shared-prefix cache: the contexts of one GRPO group share
  the rendered prompt, whose tokens go through the partner once per group instead of once per completion.

All three must agree (max absolute differences recorded). Timing alternates the sides and takes medians. Workloads
(fixed before measuring; the first is the main one):

* `grpo_fwm`: phase fwm, 4 prompts x 8 generations (the paper's forward phase uses 8), block-world text states;
* `ungrouped_fwm`: phase fwm, 32 different prompts (no groups: what batching alone gives);
* `grpo_idm`: phase idm, 2 prompts x 16 generations (the paper's inverse phase uses 16), short generated actions;
* `image_fwm`, `image_idm`: as above with states of 256 image tokens (the paper's images are 1024 VQ tokens).

Writes `benchmarks/results/scoring.json` with `scoring_speedup_ratio` = per_sample / batched (target >= 5) for the
main workload and model (hidden 256, 4 layers, vocabulary 4096), the ratios of every workload, and the main workload's
ratio for other model and vocabulary sizes.
"""

from __future__ import annotations

import argparse
import random
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common


def per_sample_scores(model, tokenizer, contexts, targets) -> list[float]:
    import torch

    values = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for context, target in zip(contexts, targets):
            ctx = tokenizer(context)["input_ids"]
            tgt = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = torch.tensor([ctx + tgt], device=device)
            logits = model(input_ids=ids).logits[0].float()
            logps = torch.log_softmax(logits, dim=-1)
            positions = torch.arange(len(ctx) - 1, len(ctx) + len(tgt) - 1, device=device)
            token_logps = logps[positions, torch.tensor(tgt, device=device)]
            values.append(token_logps.mean().item())
    return values


WORKLOADS = {  # name: (phase, prompts, generations per prompt, image tokens per state; 0 = block-world text)
    "grpo_fwm": ("fwm", 4, 8, 0),
    "ungrouped_fwm": ("fwm", 32, 1, 0),
    "grpo_idm": ("idm", 2, 16, 0),
    "image_fwm": ("fwm", 4, 8, 256),
    "image_idm": ("idm", 2, 16, 256),
}
MAIN_WORKLOAD = "grpo_fwm"


def workload_batch(tokenizer, *, phase: str, prompts: int, generations: int, image_tokens: int, seed: int = 0):
    """One reward call: the dataset columns repeated per generation, and generated completions of varying length
    (text: the true next state or action, cut and extended with random words; images: random image tokens)."""
    rng = random.Random(seed)
    words = sorted(w for w in tokenizer.get_vocab() if not w.startswith("<"))
    filler = [w for w in words if w.startswith("w")]  # stand-ins for image tokens
    rows = common.synthetic_rows(prompts, seed=seed)
    if image_tokens:

        def image() -> str:
            return " ".join(rng.choice(filler) for _ in range(image_tokens))

        rows["state"] = [image() for _ in range(prompts)]
        rows["next_state"] = [image() for _ in range(prompts)]
    columns = {key: [v for v in values for _ in range(generations)] for key, values in rows.items()}
    completions = []
    for i in range(prompts * generations):
        if phase == "fwm" and image_tokens:
            completions.append(image())
            continue
        base = columns["next_state" if phase == "fwm" else "action"][i].split()
        extra = [rng.choice(words) for _ in range(rng.randint(0, 24 if phase == "fwm" else 4))]
        completions.append(" ".join(base[: rng.randint(1 if phase == "idm" else 3, len(base))] + extra))
    return completions, columns


def measure(*, hidden_size, num_layers, vocab_size, workload, repeats, device="cpu", dtype="float32") -> dict:
    import torch

    from trl_swirl import PartnerReward

    phase, prompts, generations, image_tokens = WORKLOADS[workload]
    tokenizer = common.build_tokenizer(vocab_size)
    model = common.build_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=1)
    model = model.to(device=device, dtype=getattr(torch, dtype)).eval()
    tolerance = 1e-4 if dtype == "float32" else 0.1  # low precision: the batched paths round differently
    completions, columns = workload_batch(
        tokenizer, phase=phase, prompts=prompts, generations=generations, image_tokens=image_tokens
    )
    # defaults (batch_size=None, mean) but no clipping, so the agreement check below is not vacuous: a random model
    # over a 32k vocabulary scores about -ln(32000) = -10.4, which the default clip would turn into -10 on both sides
    shared = PartnerReward(model, tokenizer, phase=phase, clip_min=None)
    unshared = PartnerReward(model, tokenizer, phase=phase, clip_min=None, share_prefix=False)
    contexts = [shared.context(state=s, completion=c) for s, c in zip(columns["state"], completions)]
    targets = columns[shared.target_column]

    sides = {
        "batched": lambda: shared(completions=completions, **columns),
        "batched_no_share": lambda: unshared(completions=completions, **columns),
        "per_sample": lambda: per_sample_scores(model, tokenizer, contexts, targets),
    }
    values = {name: fn() for name, fn in sides.items()}
    max_abs_diff = {
        name: max(abs(a - b) for a, b in zip(values[name], values["per_sample"]))
        for name in ("batched", "batched_no_share")
    }
    assert max(max_abs_diff.values()) < tolerance, f"batched and per-sample scores disagree: {max_abs_diff}"
    stats = dict(shared.last_stats)
    times = common.interleaved(sides, repeats=repeats, warmup=1)
    med = {name: common.median(t) for name, t in times.items()}
    lengths = [len(tokenizer(c)["input_ids"]) + len(tokenizer(t)["input_ids"]) + 1 for c, t in zip(contexts, targets)]
    return {
        "workload": workload,
        "phase": phase,
        "prompts": prompts,
        "generations": generations,
        "image_tokens": image_tokens,
        "scoring_speedup_ratio": med["per_sample"] / med["batched"],
        "speedup_ratio_without_prefix_sharing": med["per_sample"] / med["batched_no_share"],
        "prefix_sharing_ratio": med["batched_no_share"] / med["batched"],
        "model": {
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "vocab_size": len(tokenizer),
            "params": common.num_params(model),
        },
        "num_completions": len(completions),
        "sequence_tokens": {"min": min(lengths), "max": max(lengths), "mean": sum(lengths) / len(lengths)},
        "scoring_stats": stats,
        "max_abs_diff_vs_per_sample": max_abs_diff,
        "timings_s": times,
        **{name: common.summary(t) for name, t in times.items()},
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "dtype": dtype,
    }


MEMORY_MODES = {  # tensor memory of one reward call
    "whole_sequences": "PartnerReward(share_prefix=False)",
    "shared_prefix": "PartnerReward() (the default: the groups' prefix cache read through a view)",
}


def peak_tensor_memory(fn):
    """(peak, final) bytes of tensor memory allocated while `fn` runs, and its result: the running sum of the torch
    profiler's allocation and release events, in time order (CPU tensors; deterministic, unlike the process's RSS)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak, current, result


def measure_memory(hidden_size: int, num_layers: int, workload: str) -> dict:
    from trl_swirl import PartnerReward

    phase, prompts, generations, image_tokens = WORKLOADS[workload]
    tokenizer = common.build_tokenizer(4096)
    model = common.build_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=1).eval()
    completions, columns = workload_batch(
        tokenizer, phase=phase, prompts=prompts, generations=generations, image_tokens=image_tokens
    )
    results = {}
    for mode in MEMORY_MODES:
        reward = PartnerReward(model, tokenizer, phase=phase, clip_min=None, share_prefix=mode != "whole_sequences")
        peak, final, values = peak_tensor_memory(partial(reward, completions=completions, **columns))
        results[mode] = {
            "peak_mb": peak / 2**20, "final_mb": final / 2**20, "stats": reward.last_stats,
            "sum_of_rewards": sum(values),
        }  # fmt: skip
    return results


MODELS = [  # (hidden_size, num_layers, vocab_size); the first is the main model
    (256, 4, 4096),
    (256, 4, 32000),
    (64, 2, 4096),
    (64, 2, 32000),
]


def _line(run) -> str:
    m = run["model"]
    return (
        f"{run['workload']:<14} hidden {m['hidden_size']:>4} layers {m['num_layers']} vocab {m['vocab_size']:>6} "
        f"({m['params'] / 1e6:.1f}M): per-sample {run['per_sample']['median_s'] * 1e3:7.1f} ms, batched "
        f"{run['batched_no_share']['median_s'] * 1e3:7.1f} ms, + shared prefix {run['batched']['median_s'] * 1e3:7.1f} "
        f"ms ({run['scoring_stats']['computed_tokens']}/{run['scoring_stats']['tokens']} tokens) -> ratio "
        f"{run['scoring_speedup_ratio']:.2f} (without sharing {run['speedup_ratio_without_prefix_sharing']:.2f})"
    )


def _row(run) -> dict:
    return {
        "workload": run["workload"],
        **{k: run["model"][k] for k in ("hidden_size", "num_layers", "vocab_size", "params")},
        "scoring_speedup_ratio": run["scoring_speedup_ratio"],
        "speedup_ratio_without_prefix_sharing": run["speedup_ratio_without_prefix_sharing"],
        "prefix_sharing_ratio": run["prefix_sharing_ratio"],
        "per_sample_median_s": run["per_sample"]["median_s"],
        "batched_no_share_median_s": run["batched_no_share"]["median_s"],
        "batched_median_s": run["batched"]["median_s"],
        "tokens": run["scoring_stats"]["tokens"],
        "computed_tokens": run["scoring_stats"]["computed_tokens"],
        "sequence_tokens": run["sequence_tokens"],
        "max_abs_diff": run["max_abs_diff_vs_per_sample"],
        "timings_s": run["timings_s"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--main_only", action="store_true", help="measure the main workload and model only")
    parser.add_argument(
        "--model", default=None, help="HIDDEN,LAYERS,VOCAB: the main model (default 256,4,4096); other sizes skipped"
    )
    parser.add_argument("--device", default="cpu", help="e.g. cuda (run with CUDA_VISIBLE_DEVICES set: "
                        "benchmarks/common.py hides GPUs unless it is)")  # fmt: skip
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--results_dir", default=None, help="where scoring.json goes (default benchmarks/results)")
    parser.add_argument("--memory_model", default="512,8", help="HIDDEN,LAYERS of the memory measurement")
    parser.add_argument("--memory_workload", default="image_idm", choices=list(WORKLOADS))
    args = parser.parse_args(argv)
    common.setup_threads(args.threads)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no GPU visible (benchmarks/common.py sets CUDA_VISIBLE_DEVICES='' unless set).")
    models = MODELS
    if args.model:
        try:
            hidden_, layers_, vocab_ = (int(v) for v in args.model.split(","))
        except ValueError:
            parser.error(f"--model must be HIDDEN,LAYERS,VOCAB (three integers), got {args.model!r}")
        models = [(hidden_, layers_, vocab_)]
    hidden, layers, vocab = models[0]
    short = max(4, args.repeats // 2)
    where = {"device": args.device, "dtype": args.dtype}

    main_run = measure(
        hidden_size=hidden, num_layers=layers, vocab_size=vocab, workload=MAIN_WORKLOAD, repeats=args.repeats, **where
    )
    print(_line(main_run), flush=True)
    workload_runs, model_runs = [main_run], [main_run]
    if not args.main_only:
        for workload in [w for w in WORKLOADS if w != MAIN_WORKLOAD]:
            run = measure(
                hidden_size=hidden, num_layers=layers, vocab_size=vocab, workload=workload, repeats=short, **where
            )
            print(_line(run), flush=True)
            workload_runs.append(run)
        for hidden_, layers_, vocab_ in models[1:]:
            run = measure(
                hidden_size=hidden_, num_layers=layers_, vocab_size=vocab_, workload=MAIN_WORKLOAD, repeats=short,
                **where,
            )  # fmt: skip
            print(_line(run), flush=True)
            model_runs.append(run)
    ratio = main_run["scoring_speedup_ratio"]
    memory = None
    if not args.main_only and args.device == "cpu":
        mem_hidden, mem_layers = (int(v) for v in args.memory_model.split(","))
        memory = {
            "model": {"hidden_size": mem_hidden, "num_layers": mem_layers, "vocab_size": 4096},
            "workload": args.memory_workload,
            "method": "peak tensor memory allocated during one reward call (torch profiler allocation events in time "
            "order): " + "; ".join(f"{k} = {v}" for k, v in MEMORY_MODES.items()),
            "modes": measure_memory(mem_hidden, mem_layers, args.memory_workload),
        }
        print("peak memory of one reward call (" + args.memory_workload + "): " + ", ".join(
            f"{k} {v['peak_mb']:.0f} MB" for k, v in memory["modes"].items()))  # fmt: skip
    print(f"scoring_speedup_ratio (main: {MAIN_WORKLOAD}, hidden {hidden}, {layers} layers, vocab {vocab}): {ratio:.2f}")
    common.write_result(
        "scoring",
        {
            "scoring_speedup_ratio": ratio,
            "target": ">= 5",
            "target_met": ratio >= 5,
            "method": (
                "One reward call of 32 completions per workload, same model on all sides. per_sample = one full "
                "forward + full log-softmax per pair; batched_no_share = PartnerReward(share_prefix=False) (one "
                "length-sorted left-padded batch, logits_to_keep); batched = PartnerReward defaults (plus the "
                "shared-prefix cache); no clipping. Interleaved repetitions after one warm-up round, medians; torch "
                f"threads = {args.threads}; device {args.device}, {args.dtype}. Main: workload {MAIN_WORKLOAD}, the "
                "first model of `models`."
            ),
            "main": main_run,
            "workloads": [_row(r) for r in workload_runs],
            "models": [_row(r) for r in model_runs],
            "memory": memory,
        },
        results_dir=args.results_dir,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
