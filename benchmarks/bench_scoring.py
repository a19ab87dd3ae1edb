"""PartnerReward's batched scoring vs a per-sample loop (one forward pass per completion, as in the paper's code).

    python benchmarks/bench_scoring.py

Both sides score the same 32 (context, target) pairs of phase `fwm` (the IDM partner scores the row's action given the
state and a generated next state) with the same model:

* `batched`: `PartnerReward(...)(completions=..., state=..., action=...)`: length-sorted, left-padded batches
  (`batch_size=None`: all 32 in one forward pass), logits only for the target positions (`logits_to_keep`);
* `per_sample`: for each pair, tokenize context + target, one forward pass over the whole sequence, log-softmax over
  the full logits, gather the target tokens, mean: what a straightforward per-example implementation does.

The two must agree (the max absolute difference is recorded). Timing alternates the sides (A, B, B, A, ...) and takes
medians. Writes `benchmarks/results/scoring.json` with `scoring_speedup_ratio` = per_sample / batched (target >= 5)
for the main configuration (hidden 256, 4 layers, vocabulary 4096), and the ratio for other model and vocabulary sizes:
on a CPU the forward pass is compute-bound, so batching saves the per-call overhead (and, with `logits_to_keep`, the
full-vocabulary logits), which matters more for small models and large vocabularies.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common


def per_sample_scores(model, tokenizer, contexts, targets) -> list[float]:
    import torch

    values = []
    with torch.no_grad():
        for context, target in zip(contexts, targets):
            ctx = tokenizer(context)["input_ids"]
            tgt = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = torch.tensor([ctx + tgt])
            logits = model(input_ids=ids).logits[0].float()
            logps = torch.log_softmax(logits, dim=-1)
            positions = torch.arange(len(ctx) - 1, len(ctx) + len(tgt) - 1)
            token_logps = logps[positions, torch.tensor(tgt)]
            values.append(token_logps.mean().item())
    return values


def completions_batch(n: int, tokenizer, rows, seed: int = 0) -> list[str]:
    """Generated next states: the true next state, perturbed, with lengths that vary (as sampling makes them)."""
    rng = random.Random(seed)
    words = [w for w in tokenizer.get_vocab() if not w.startswith("<")]
    out = []
    for i in range(n):
        base = rows["next_state"][i].split()
        extra = [rng.choice(words) for _ in range(rng.randint(0, 24))]
        out.append(" ".join(base[: rng.randint(3, len(base))] + extra))
    return out


def measure(*, hidden_size, num_layers, vocab_size, n, repeats) -> dict:
    import torch

    from trl_swirl import PartnerReward
    from trl_swirl.templates import DEFAULT_IDM_TEMPLATE

    tokenizer = common.build_tokenizer(vocab_size)
    model = common.build_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=1).eval()
    rows = common.synthetic_rows(n, seed=0)
    completions = completions_batch(n, tokenizer, rows)
    states, actions = rows["state"], rows["action"]
    contexts = [DEFAULT_IDM_TEMPLATE.format(state=s, next_state=c.strip()) for s, c in zip(states, completions)]
    # defaults (batch_size=None, mean) but no clipping, so the agreement check below is not vacuous: a random model
    # over a 32k vocabulary scores about -ln(32000) = -10.4, which the default clip would turn into -10 on both sides
    reward = PartnerReward(model, tokenizer, phase="fwm", clip_min=None)

    def batched():
        return reward(completions=completions, state=states, action=actions)

    def per_sample():
        return per_sample_scores(model, tokenizer, contexts, actions)

    got, ref = batched(), per_sample()
    max_abs_diff = max(abs(a - b) for a, b in zip(got, ref))
    assert max_abs_diff < 1e-4, f"batched and per-sample scores disagree by {max_abs_diff}"
    times = common.interleaved({"batched": batched, "per_sample": per_sample}, repeats=repeats, warmup=1)
    lengths = [len(tokenizer(c)["input_ids"]) + len(tokenizer(a)["input_ids"]) + 1 for c, a in zip(contexts, actions)]
    ratio = common.median(times["per_sample"]) / common.median(times["batched"])
    return {
        "scoring_speedup_ratio": ratio,
        "model": {
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "vocab_size": len(tokenizer),
            "params": common.num_params(model),
        },
        "num_completions": n,
        "sequence_tokens": {"min": min(lengths), "max": max(lengths), "mean": sum(lengths) / len(lengths)},
        "max_abs_diff_batched_vs_per_sample": max_abs_diff,
        "timings_s": times,
        "batched": common.summary(times["batched"]),
        "per_sample": common.summary(times["per_sample"]),
        "torch_threads": torch.get_num_threads(),
    }


CONFIGS = [  # (hidden_size, num_layers, vocab_size); the first is the main configuration
    (256, 4, 4096),
    (256, 4, 32000),
    (64, 2, 4096),
    (64, 2, 32000),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_completions", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--main_only", action="store_true", help="measure the main configuration only")
    args = parser.parse_args(argv)
    common.setup_threads(args.threads)

    runs = []
    for i, (hidden, layers, vocab) in enumerate(CONFIGS[:1] if args.main_only else CONFIGS):
        run = measure(
            hidden_size=hidden, num_layers=layers, vocab_size=vocab, n=args.num_completions,
            repeats=args.repeats if i == 0 else max(4, args.repeats // 2),
        )  # fmt: skip
        runs.append(run)
        m = run["model"]
        print(
            f"hidden {m['hidden_size']:>4} layers {m['num_layers']} vocab {m['vocab_size']:>6} "
            f"({m['params'] / 1e6:.1f}M params): batched {run['batched']['median_s'] * 1e3:7.1f} ms, per-sample "
            f"{run['per_sample']['median_s'] * 1e3:7.1f} ms -> ratio {run['scoring_speedup_ratio']:.2f}",
            flush=True,
        )
    main_run = runs[0]
    m = main_run["model"]
    print(
        f"scoring_speedup_ratio (main: hidden {m['hidden_size']}, {m['num_layers']} layers, vocab {m['vocab_size']}): "
        f"{main_run['scoring_speedup_ratio']:.2f}"
    )
    common.write_result(
        "scoring",
        {
            "scoring_speedup_ratio": main_run["scoring_speedup_ratio"],
            "target": ">= 5",
            "target_met": main_run["scoring_speedup_ratio"] >= 5,
            "method": (
                f"Same {args.num_completions} (context, target) pairs, same model. batched = PartnerReward "
                "(length-sorted left-padded batch, batch_size=None, logits_to_keep), per_sample = one full forward + "
                "full log-softmax per pair (no clipping on either side). Interleaved repetitions (A,B,B,A,...) after "
                f"one warm-up round, medians; torch threads = {args.threads}. The main configuration is the first of `configs`."
            ),
            "main": main_run,
            "configs": [
                {
                    "hidden_size": r["model"]["hidden_size"],
                    "num_layers": r["model"]["num_layers"],
                    "vocab_size": r["model"]["vocab_size"],
                    "params": r["model"]["params"],
                    "scoring_speedup_ratio": r["scoring_speedup_ratio"],
                    "batched_median_s": r["batched"]["median_s"],
                    "per_sample_median_s": r["per_sample"]["median_s"],
                    "max_abs_diff": r["max_abs_diff_batched_vs_per_sample"],
                    "timings_s": r["timings_s"],
                }
                for r in runs
            ],
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
