"""SWIRL on the built-in textual environments (physics, web, tools), from nothing, on CPU with tiny models.

For every environment and seed (the seed sets the data split, the model initialisation and the training seed):

1. warm start: SFT of a tiny FWM and a tiny IDM on the small labelled split -> the **SFT baseline**;
2. **SWIRL**: K iterations of (IDM labels the unlabelled pairs -> FWM GRPO phase rewarded by the frozen IDM ->
   IDM GRPO phase rewarded by the frozen FWM), every phase evaluated on the held-out test split;
3. **self-training** (the control): from the *same* warm-start checkpoints and the *same* data split, K iterations of
   (IDM labels the unlabelled pairs -> SFT of the FWM, then of the IDM, on pseudo-labels + labelled rows).

The phases are the building blocks of `trl_swirl.loop` (`sft`, `label_dataset`, `grpo_phase`, `evaluate_pair`), so
this is the loop of `trl-swirl loop`, driven here so that the warm start is shared by SWIRL and the control and the
pseudo-labels can optionally be filtered by the IDM's confidence (`--label_keep_fraction`).

    python benchmarks/swirl_textual.py --quick                     # smoke test, < 1 min
    python benchmarks/swirl_textual.py                             # the committed results (3 envs x 3 seeds)
    python benchmarks/swirl_textual.py --dev                       # validation seeds (100+): for tuning only

Writes `benchmarks/results/textual.json`, `textual.md` and `textual.png`; `--dev` writes `benchmarks/results/dev/...`
(validation seeds, never reported as a result) and `--quick` writes to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_default_arguments  # noqa: E402  (benchmarks/common.py)

HERE = Path(__file__).resolve().parent
ENVIRONMENTS = ("physics", "web", "tools")
FWM_KEYS = ("fwm_exact_match", "fwm_f1", "fwm_action_selection_accuracy")
IDM_KEYS = ("idm_exact_match", "idm_f1", "idm_consistency", "idm_invalid_rate")
SHOWN = ("fwm_exact_match", "fwm_f1", "fwm_action_selection_accuracy", "idm_exact_match", "idm_f1",
         "idm_consistency")
# the defaults below are the recommended settings from benchmarks/RESEARCH.md (tuned on validation seeds only)
DEFAULTS = dict(
    num_trajectories=120, trajectory_length=8, labelled_fraction=0.2, test_fraction=0.2,
    tiny_hidden_size=64, tiny_num_layers=2,
    warmstart_epochs=40.0, warmstart_learning_rate=3e-3, warmstart_batch_size=16,
    iterations=2, fwm_max_steps=60, idm_max_steps=60,
    fwm_learning_rate=2e-4, idm_learning_rate=2e-4, fwm_beta=0.1, idm_beta=0.04,
    temperature=0.5, num_generations=8, per_device_train_batch_size=32, scale_rewards="none",
    max_completion_length=40, label_keep_fraction=1.0,
    self_training_epochs=5.0, self_training_learning_rate=5e-4,
    eval_max_samples=None,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", nargs="+", default=list(ENVIRONMENTS), choices=ENVIRONMENTS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="smoke test: physics, one seed, tiny phases (< 1 min)")
    p.add_argument("--dev", action="store_true",
                   help="validation run: seeds are offset by 100 (never the reported seeds) and the outputs go to "
                   "benchmarks/results/dev/")
    p.add_argument("--no_self_training", action="store_true", help="skip the self-training control")
    p.add_argument("--work_dir", default=None, help="where the checkpoints go (default: a temporary folder)")
    p.add_argument("--keep_checkpoints", action="store_true")
    p.add_argument("--json", default=None, help="default: benchmarks/results/textual.json")
    p.add_argument("--md", default=None, help="default: benchmarks/results/textual.md")
    p.add_argument("--png", default=None, help="default: benchmarks/results/textual.png")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is much faster for these tiny models when the CPU is shared)")
    p.add_argument("--warmstart_cache", default=None,
                   help="reuse warm-start checkpoints from this folder (keyed by environment, seed and warm-start "
                   "settings); for studies that vary only the later phases")
    p.add_argument("--final_eval_only", action="store_true",
                   help="evaluate only the baseline and the final SWIRL phase (studies)")
    p.add_argument("--fwm_pseudo_sft", action="store_true",
                   help="variant: before each FWM GRPO phase, SFT the FWM on (state, IDM label, real next state) + "
                   "the labelled rows, as the self-training control does (self_training_epochs / _learning_rate)")
    p.add_argument("--per_seed_json", default=None, help="also write every seed's metrics and timings here")
    p.add_argument("--tag", default=None, help="a name for this configuration (recorded in the JSON)")
    add_default_arguments(p, DEFAULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.envs, args.seeds = [args.envs[0] if len(args.envs) == 1 else "physics"], args.seeds[:1]
        args.num_trajectories, args.warmstart_epochs, args.iterations = 40, 10.0, 2
        args.fwm_max_steps = args.idm_max_steps = 4
        args.self_training_epochs, args.eval_max_samples = 1.0, 32
    if args.dev:
        args.seeds = [s + 100 for s in args.seeds]
    out = HERE / "results" / ("dev" if args.dev else "")
    if args.quick:  # a smoke test never touches the committed results
        out = Path(tempfile.gettempdir()) / "swirl_textual_quick"
    args.json = args.json or str(out / "textual.json")
    args.md = args.md or str(Path(args.json).with_suffix(".md"))
    args.png = args.png or str(Path(args.json).with_suffix(".png"))
    return args


def config_of(args) -> dict:
    extra = {"fwm_pseudo_sft": args.fwm_pseudo_sft, "envs": args.envs, "seeds": args.seeds, "tag": args.tag,
             "quick": args.quick, "dev": args.dev}
    return {k: getattr(args, k) for k in DEFAULTS} | extra


# ------------------------------------------------------------------------------------------------------- one run
def _swirl_args(args, seed: int, output_dir: Path):
    from trl_swirl import SwirlConfig

    return SwirlConfig(
        output_dir=str(output_dir), report_to="none", logging_steps=10, disable_tqdm=True, use_cpu=True,
        bf16=False, seed=seed, num_generations=args.num_generations,
        per_device_train_batch_size=args.per_device_train_batch_size, learning_rate=args.fwm_learning_rate,
        beta=args.fwm_beta, temperature=args.temperature, max_completion_length=args.max_completion_length,
        scale_rewards=args.scale_rewards,
    )


def _loop_args(args, env: str, seed: int):
    from trl_swirl.loop import SwirlLoopConfig

    return SwirlLoopConfig(
        environment=env, num_trajectories=args.num_trajectories, trajectory_length=args.trajectory_length,
        labelled_fraction=args.labelled_fraction, test_fraction=args.test_fraction, env_seed=seed,
        swirl_iterations=args.iterations, warmstart_epochs=args.warmstart_epochs,
        warmstart_learning_rate=args.warmstart_learning_rate, warmstart_batch_size=args.warmstart_batch_size,
        self_training_epochs=args.self_training_epochs, self_training_learning_rate=args.self_training_learning_rate,
        fwm_max_steps=args.fwm_max_steps, idm_max_steps=args.idm_max_steps,
        fwm_learning_rate=args.fwm_learning_rate, idm_learning_rate=args.idm_learning_rate,
        fwm_beta=args.fwm_beta, idm_beta=args.idm_beta, fwm_temperature=args.temperature,
        idm_temperature=args.temperature, eval_max_samples=args.eval_max_samples,
        tiny_hidden_size=args.tiny_hidden_size, tiny_num_layers=args.tiny_num_layers,
    )


def pseudo_labels(idm_ref: str, unlabelled, templates, swirl_args, keep_fraction: float):
    """The IDM's greedy labels of the unlabelled pairs, optionally keeping only the `keep_fraction` of rows where the
    IDM is most confident (highest mean log-probability of its own label)."""
    from trl_swirl.evaluation import sequence_logprobs
    from trl_swirl.loop import label_dataset, load_model

    idm, tok = load_model(idm_ref, swirl_args)
    labelled = label_dataset(idm, tok, unlabelled, templates)
    if keep_fraction >= 1.0 or len(labelled) == 0:
        return labelled
    contexts = [templates.prompt_text("idm", state=s, next_state=n)
                for s, n in zip(labelled["state"], labelled["next_state"])]
    scores = sequence_logprobs(idm, tok, contexts, labelled["action"], batch_size=64)
    keep = max(1, int(round(keep_fraction * len(scores))))
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:keep]
    return labelled.select(sorted(order))


def run_env_seed(args, env: str, seed: int, work: Path, log) -> dict:
    """Warm start, SWIRL and self-training for one (environment, seed); returns {phase name: metrics}."""
    from datasets import concatenate_datasets

    from trl_swirl.data import make_splits
    from trl_swirl.loop import build_default_models, evaluate_pair, grpo_phase, sft
    from trl_swirl.templates import SwirlTemplates

    loop_args = _loop_args(args, env, seed)
    run = work / f"{env}-seed{seed}"
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    swirl_args = _swirl_args(args, seed, run)
    templates = SwirlTemplates(swirl_args.fwm_template, swirl_args.idm_template, swirl_args.prompt_format)
    splits = make_splits(env, num_trajectories=args.num_trajectories, length=args.trajectory_length,
                         labelled_fraction=args.labelled_fraction, test_fraction=args.test_fraction, seed=seed)
    test = splits["test"]
    out: dict[str, dict] = {"_sizes": {k: len(v) for k, v in splits.items()}}
    times: dict[str, float] = {}

    def evaluate(name, fwm, idm):
        t = time.time()
        out[name] = evaluate_pair(fwm, idm, test, templates, loop_args, swirl_args)
        times[f"eval/{name}"] = time.time() - t
        log(f"  {env} seed {seed} {name}: " + " ".join(f"{k}={out[name][k]:.3f}" for k in SHOWN if k in out[name]))

    t0 = time.time()
    ws_root = run
    if args.warmstart_cache:
        key = (f"{env}-s{seed}-n{args.num_trajectories}x{args.trajectory_length}-lf{args.labelled_fraction}-"
               f"tf{args.test_fraction}-h{args.tiny_hidden_size}l{args.tiny_num_layers}-e{args.warmstart_epochs}-"
               f"lr{args.warmstart_learning_rate}-bs{args.warmstart_batch_size}")
        ws_root = Path(args.warmstart_cache) / key
    ws_fwm, ws_idm = ws_root / "warmstart-fwm", ws_root / "warmstart-idm"
    cached = ws_root / "baseline.json"
    if cached.exists():
        out["baseline"] = json.loads(cached.read_text())
    else:
        ws_root.mkdir(parents=True, exist_ok=True)
        fwm0, idm0 = build_default_models(run, loop_args, splits)
        for ref, role, folder in ((fwm0, "fwm", ws_fwm), (idm0, "idm", ws_idm)):
            sft(ref, splits["labelled"], role, templates, folder, swirl_args, epochs=args.warmstart_epochs,
                learning_rate=args.warmstart_learning_rate, batch_size=args.warmstart_batch_size)
        times["warmstart"] = time.time() - t0
        evaluate("baseline", str(ws_fwm), str(ws_idm))
        if args.warmstart_cache:
            cached.write_text(json.dumps(out["baseline"]))

    # SWIRL
    t0 = time.time()
    fwm, idm = str(ws_fwm), str(ws_idm)
    for k in range(1, args.iterations + 1):
        pseudo = pseudo_labels(idm, splits["unlabelled"], templates, swirl_args, args.label_keep_fraction)
        if args.fwm_pseudo_sft:
            cols = ["state", "action", "next_state"]
            data = concatenate_datasets([pseudo.select_columns(cols), splits["labelled"].select_columns(cols)])
            folder = run / f"swirl-iter-{k}-fwm-sft"
            sft(fwm, data, "fwm", templates, folder, swirl_args, epochs=args.self_training_epochs,
                learning_rate=args.self_training_learning_rate, batch_size=args.warmstart_batch_size)
            fwm = str(folder)
        folder = run / f"swirl-iter-{k}-fwm"
        grpo_phase(fwm, idm, pseudo, "fwm", folder, swirl_args, loop_args)
        fwm = str(folder)
        if not args.final_eval_only:
            evaluate(f"iter-{k}-fwm", fwm, idm)
        folder = run / f"swirl-iter-{k}-idm"
        grpo_phase(idm, fwm, splits["unlabelled"], "idm", folder, swirl_args, loop_args)
        idm = str(folder)
        if not args.final_eval_only or k == args.iterations:
            evaluate(f"iter-{k}-idm", fwm, idm)
    times["swirl"] = time.time() - t0
    out["swirl"] = out[f"iter-{args.iterations}-idm"] if args.iterations else out["baseline"]

    # self-training control, from the same warm-start checkpoints and the same split
    if not args.no_self_training:
        t0 = time.time()
        fwm, idm = str(ws_fwm), str(ws_idm)
        cols = ["state", "action", "next_state"]
        for k in range(1, args.iterations + 1):
            pseudo = pseudo_labels(idm, splits["unlabelled"], templates, swirl_args, args.label_keep_fraction)
            data = concatenate_datasets([pseudo.select_columns(cols), splits["labelled"].select_columns(cols)])
            for role in ("fwm", "idm"):
                folder = run / f"st-iter-{k}-{role}"
                sft(fwm if role == "fwm" else idm, data, role, templates, folder, swirl_args,
                    epochs=args.self_training_epochs, learning_rate=args.self_training_learning_rate,
                    batch_size=args.warmstart_batch_size)
                if role == "fwm":
                    fwm = str(folder)
                else:
                    idm = str(folder)
        times["self_training"] = time.time() - t0
        evaluate("self_training", fwm, idm)
    out["_times"] = times
    log(f"  {env} seed {seed} times: " + " ".join(f"{k}={v:.0f}s" for k, v in times.items()))
    if not args.keep_checkpoints:
        shutil.rmtree(run, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------------- aggregation
def _stats(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def aggregate(per_seed: list[dict], iterations: int) -> dict:
    metric_keys = sorted({k for r in per_seed for k in r.get("baseline", {}) if k.startswith(("fwm_", "idm_"))})

    def block(name):
        return {m: _stats([r[name].get(m) for r in per_seed if name in r]) for m in metric_keys}

    result = {"baseline": block("baseline"), "swirl": block("swirl")}
    if all("self_training" in r for r in per_seed):
        result["self_training"] = block("self_training")
    result["iterations"] = [
        {"name": f"iter-{k}-{role}", **block(f"iter-{k}-{role}")}
        for k in range(1, iterations + 1) for role in ("fwm", "idm") if all(f"iter-{k}-{role}" in r for r in per_seed)
    ]
    return result


def markdown(results: dict, per_seed: dict | None = None) -> str:
    cfg = results["config"]
    lines = [
        "# SWIRL on the built-in textual environments",
        "",
        f"Tiny models from scratch on CPU; mean ± std over seeds {cfg['seeds']} (each seed sets the data split, the "
        f"model initialisation and the training seed); test split held out. SFT baseline = warm start on the "
        f"labelled split ({cfg['labelled_fraction']:.0%} of {cfg['num_trajectories']} trajectories); SWIRL = "
        f"{cfg['iterations']} iterations of FWM/IDM GRPO phases on the unlabelled pairs; self-training = the same "
        f"number of iterations of SFT on the IDM's pseudo-labels, from the same warm-start checkpoints.",
        "",
        f"Total wall time: {results['wall_time_s'] / 60:.1f} min. Produced by `python benchmarks/swirl_textual.py`; "
        "settings in `textual.json` (`config`), research in `benchmarks/RESEARCH.md`.",
    ]
    for env, res in results["environments"].items():
        rows = [("SFT baseline (warm start)", res["baseline"])]
        rows += [(f"SWIRL {it['name']}", it) for it in res["iterations"]]
        if "self_training" in res:
            rows.append(("self-training (control)", res["self_training"]))
        keys = [k for k in SHOWN if k in res["baseline"]]
        wall = cfg.get("wall_time_s_per_env", {}).get(env, float("nan"))
        lines += ["", f"## {env}", "", f"wall time: {wall:.0f} s", "",
                  "| phase | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for name, block in rows:
            lines.append(f"| {name} | " + " | ".join(
                f"{block[k]['mean']:.3f} ± {block[k]['std']:.3f}" for k in keys) + " |")
        if per_seed and env in per_seed:
            runs = per_seed[env]
            lines += ["", "Paired gain over the SFT baseline (same seed, same split, same warm start), mean ± std "
                      "over seeds:", "", "| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
            for label, name in (("SWIRL (final)", "swirl"), ("self-training", "self_training")):
                if all(name in r for r in runs):
                    cells = []
                    for k in keys:
                        d = _stats([r[name][k] - r["baseline"][k] for r in runs])
                        cells.append(f"{d['mean']:+.3f} ± {d['std']:.3f}")
                    lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines += ["", "Per seed (baseline → SWIRL final / self-training):", ""]
            for seed, r in zip(cfg["seeds"], per_seed[env]):
                cells = []
                for k in keys:
                    st = f" / {r['self_training'][k]:.2f}" if "self_training" in r else ""
                    cells.append(f"{k} {r['baseline'][k]:.2f} → {r['swirl'][k]:.2f}{st}")
                lines.append(f"- seed {seed}: " + "; ".join(cells))
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(results["environments"])
    fig, axes = plt.subplots(1, len(envs), figsize=(5.2 * len(envs), 4), squeeze=False)
    for ax, env in zip(axes[0], envs):
        res = results["environments"][env]
        names = ["baseline"] + [it["name"].removeprefix("iter-") for it in res["iterations"]]
        blocks = [res["baseline"]] + res["iterations"]
        xs = list(range(len(blocks)))
        for key, color in (("fwm_exact_match", "C0"), ("fwm_action_selection_accuracy", "C2"),
                           ("idm_exact_match", "C1"), ("idm_consistency", "C3")):
            if key not in res["baseline"]:
                continue
            means = [b[key]["mean"] for b in blocks]
            stds = [b[key]["std"] for b in blocks]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, color=color, label=key)
            if "self_training" in res:
                st = res["self_training"][key]
                ax.errorbar([xs[-1] + 0.35], [st["mean"]], yerr=[st["std"]], marker="s", color=color,
                            markerfacecolor="white", capsize=3)
        ax.set_xticks(xs + ([xs[-1] + 0.35] if "self_training" in res else []))
        ax.set_xticklabels(names + (["self-train"] if "self_training" in res else []), rotation=30, fontsize=8)
        ax.set_title(env)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test metric (mean ± std over seeds)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle("SWIRL phases (circles) vs self-training control (squares), from the same SFT warm start")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("transformers", "trl", "datasets", "trl_swirl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass

    import torch

    torch.set_num_threads(args.threads)

    def log(msg):
        print(msg, flush=True)

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="swirl-textual-"))
    start = time.time()
    log(f"config: {json.dumps(config_of(args))}")
    results = {"environments": {}, "config": config_of(args) | {"wall_time_s_per_env": {}}, "wall_time_s": None}
    per_seed_all = {}
    for env in args.envs:
        t_env = time.time()
        per_seed = [run_env_seed(args, env, seed, work, log) for seed in args.seeds]
        results["environments"][env] = aggregate(per_seed, args.iterations)
        results["config"]["wall_time_s_per_env"][env] = time.time() - t_env
        per_seed_all[env] = per_seed
        log(f"{env}: {time.time() - t_env:.0f} s")
    results["wall_time_s"] = time.time() - start
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)

    for path in (args.json, args.md, args.png):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    if args.per_seed_json:
        Path(args.per_seed_json).write_text(json.dumps(per_seed_all, indent=1, default=str) + "\n")
    md = markdown(results, per_seed_all)
    Path(args.md).write_text(md, encoding="utf-8")
    try:
        plot(results, args.png)
    except ImportError as err:  # matplotlib is optional
        log(f"(no plot: {err})")
    print(md)
    log(f"wrote {args.json}, {args.md}, {args.png} in {results['wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
