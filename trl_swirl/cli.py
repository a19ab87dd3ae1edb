"""The `trl-swirl` command line.

    trl-swirl loop [--config recipe.yaml] [flags]   run (or resume) the SWIRL loop; every SwirlLoopConfig and
                                                    SwirlConfig field is a flag; with no flags, the embedded default
                                                    (the physics environment and two tiny models, no download)
    trl-swirl push RUN --prefix user/name           push a run's finished phases to the Hub (what is missing)
"""

from __future__ import annotations

import json
import logging
import sys


def _loop(argv: list[str]) -> int:
    import torch
    from trl import TrlParser

    from .config import SwirlConfig
    from .loop import SwirlLoopConfig, run_loop

    parser = TrlParser((SwirlLoopConfig, SwirlConfig), prog="trl-swirl loop")
    on_gpu = torch.cuda.is_available()
    # defaults that work on a laptop CPU; every one of them is a flag
    parser.set_defaults(
        output_dir="swirl-run", bf16=on_gpu, report_to="none", logging_steps=5, num_generations=8,
        per_device_train_batch_size=16, learning_rate=2e-5, beta=0.04, max_completion_length=40, temperature=1.0,
        disable_tqdm=False,
    )
    loop_args, swirl_args = parser.parse_args_and_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    records = run_loop(loop_args, swirl_args)
    print(format_results(records))
    print(f"\nrun folder: {swirl_args.output_dir}")
    return 0


def format_results(records: list[dict]) -> str:
    """A Markdown table of the test metrics after each phase."""
    keys = sorted({k for r in records for k in (r.get("metrics") or {})})
    if not keys:
        return "(no test split: no metrics)"
    lines = ["| phase | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for r in records:
        if r.get("metrics"):
            lines.append(f"| {r['name']} | " + " | ".join(f"{r['metrics'].get(k, float('nan')):.3f}" for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "loop":
        return _loop(rest)
    if command == "push":
        from .hub import main_push

        return main_push(rest) or 0
    print(f"trl-swirl: unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
