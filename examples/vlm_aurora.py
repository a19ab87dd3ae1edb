# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "trl-swirl",
#     "trl>=1.16",
#     "transformers>=5",
#     "accelerate",
#     "datasets",
#     "Pillow",
#     "scikit-image",
# ]
# ///
"""SWIRL on image editing: a forward world model that *draws* the edited image, an inverse dynamics model that names
the edit, trained alternately with GRPO, each rewarded by the other (arXiv 2602.06130, the AURORA setting).

Data in the AURORA format (https://huggingface.co/datasets/McGill-NLP/AURORA): one row per edit, with the columns

* `input`: the source image (a `datasets` Image, a PIL image, or a path);
* `instruction`: the edit, e.g. "move the cup to the left" (used *only* for the small labelled warm-start split
  and for evaluation: SWIRL itself learns from the unlabelled (source, target) pairs);
* `output`: the target image.

Other column names: `--input_column`, `--instruction_column`, `--output_column`. AURORA's `source` column is ignored.

Images are states as discrete tokens (`trl_swirl.codecs`): `--codec palette` (deterministic, no weights: a grid of
`--codec_grid`^2 patches, each one of 16 colours) or `--codec vq --vq_model PATH` (a transformers `JanusVQVAE` or
`Emu3VQVAE` checkpoint). Both models are token-based causal LMs whose tokenizer gets the codec's tokens (`<boi>`,
`<eoi>`, `<img_0>`...): `--fwm_model_name_or_path` / `--idm_model_name_or_path` (their embeddings are resized), or by
default two tiny models built locally. The FWM phase generates exactly one image per completion (only image tokens
can be sampled, `max_completion_length` = the codec's token count); see `trl_swirl.visual`.

With no `--dataset_name`, the data come from the built-in visual world (`--environment shapes` or `photos`, no
download), so this runs anywhere, e.g. on a laptop CPU in about two minutes (the defaults are the settings of
`benchmarks/swirl_visual.py`; its results are in `benchmarks/results/visual.md`):

    accelerate launch examples/vlm_aurora.py --output_dir runs/vlm-aurora-shapes
    accelerate launch --cpu --num_processes 1 examples/vlm_aurora.py --output_dir runs/vlm-aurora-shapes \\
        --swirl_iterations 1 --fwm_max_steps 4 --idm_max_steps 4 --warmstart_epochs 2
    accelerate launch --config_file examples/accelerate_configs/single_gpu.yaml examples/vlm_aurora.py \\
        --output_dir runs/vlm-aurora-photos --environment photos --environment_kwargs '{"grid": 4}' \\
        --trajectory_length 4

AURORA from the Hub (streams the first `--max_rows` rows; the palette codec reduces each photo to 8x8 patches):

    accelerate launch --config_file examples/accelerate_configs/single_gpu.yaml examples/vlm_aurora.py \\
        --dataset_name McGill-NLP/AURORA --max_rows 20000 --labelled_fraction 0.05 --test_fraction 0.05 \\
        --output_dir runs/vlm-aurora --codec palette --codec_grid 16 --tiny_hidden_size 256 --tiny_num_layers 6 \\
        --swirl_iterations 2 --fwm_max_steps 200 --idm_max_steps 200 --per_device_train_batch_size 32 \\
        --num_generations 8 --learning_rate 5e-5 --bf16

A local copy (a `save_to_disk` folder, a parquet file or folder, or a JSON Lines / CSV file with image paths):

    accelerate launch --config_file examples/accelerate_configs/single_gpu.yaml examples/vlm_aurora.py \\
        --dataset_name data/my_edits.jsonl --input_column before --output_column after --output_dir runs/my-edits

A token-based VLM for both roles (a causal LM with the codec's tokens added; the VQ-VAE must match how it was
trained to see images):

    accelerate launch --config_file examples/accelerate_configs/single_gpu.yaml examples/vlm_aurora.py \\
        --dataset_name McGill-NLP/AURORA --max_rows 50000 --codec vq --vq_model path/to/janus-vqvae \\
        --fwm_model_name_or_path path/to/lm --idm_model_name_or_path path/to/lm --output_dir runs/vlm-aurora-vq

Every `SwirlConfig` / `GRPOConfig` flag applies to both GRPO phases (per-phase steps, learning rates and KL
coefficients: `--fwm_max_steps`, `--idm_learning_rate`, ...; see `trl_swirl.visual.VisualLoopConfig`). With vLLM
(`--use_vllm`), the image-only constraint is vLLM's `allowed_token_ids` sampling parameter, set automatically.

Outputs in `--output_dir`: one folder per phase (`iter-0-warmstart-fwm`, ..., `iter-K-idm`), `results.json` (every
phase's record and test metrics) and `strip.png` (test cases: source | true next | FWM after the warm start | FWM
after SWIRL).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class AuroraArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "AURORA-format data: a Hub id (e.g. McGill-NLP/AURORA) or a local save_to_disk folder, "
                  "parquet file/folder, or JSON Lines / CSV file. Default: the built-in visual world."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to read (AURORA has only 'train')."})
    max_rows: int | None = field(default=None, metadata={"help": "Read at most this many rows (streams a Hub id)."})
    input_column: str = field(default="input", metadata={"help": "Column of the source image."})
    instruction_column: str = field(default="instruction", metadata={"help": "Column of the edit instruction."})
    output_column: str = field(default="output", metadata={"help": "Column of the target image."})
    image_root: str | None = field(
        default=None, metadata={"help": "Folder that relative image paths are resolved against (JSON/CSV data)."}
    )
    labelled_fraction: float = field(default=0.2, metadata={"help": "Fraction of rows/trajectories kept labelled."})
    test_fraction: float = field(default=0.2, metadata={"help": "Fraction of rows/trajectories held out."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the built-in world's data and of the splits."})
    environment: str = field(
        default="shapes", metadata={"help": "Built-in visual world for the default data: 'shapes' or 'photos'."}
    )
    environment_kwargs: str = field(
        default='{"grid": 3, "cell": 1}',
        metadata={"help": "JSON keyword arguments of the built-in world, e.g. '{\"grid\": 3, \"cell\": 3}' for 3x3 "
                  "pixel-art shapes (see trl_swirl.envs.visual)."},
    )
    num_trajectories: int = field(default=400, metadata={"help": "Trajectories of the built-in world."})
    trajectory_length: int = field(default=6, metadata={"help": "Edits per trajectory of the built-in world."})
    codec: str = field(default="palette", metadata={"help": "'palette' or 'vq' (for --dataset_name data)."})
    codec_grid: int = field(default=8, metadata={"help": "Palette codec: patches per side."})
    codec_patch_size: int = field(default=4, metadata={"help": "Palette codec: pixels per patch side."})
    vq_model: str | None = field(default=None, metadata={"help": "VQ codec: a JanusVQVAE / Emu3VQVAE checkpoint."})
    vq_image_size: int | None = field(default=None, metadata={"help": "VQ codec: image side (needed for Emu3)."})
    fwm_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Starting FWM (a token-based causal LM). Default: a tiny model built here."}
    )
    idm_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Starting IDM (a token-based causal LM). Default: a tiny model built here."}
    )
    strip_examples: int = field(default=6, metadata={"help": "Test cases drawn in strip.png (0: none)."})


def build_data(script_args: AuroraArguments):
    """(splits, codec, environment or None)."""
    from trl_swirl.codecs import get_codec
    from trl_swirl.data import make_splits
    from trl_swirl.envs.visual import get_visual_environment
    from trl_swirl.visual import edit_splits, edit_transitions, load_edit_dataset

    if script_args.dataset_name is None:
        env = get_visual_environment(script_args.environment, **json.loads(script_args.environment_kwargs or "{}"))
        splits = make_splits(
            env, num_trajectories=script_args.num_trajectories, length=script_args.trajectory_length,
            labelled_fraction=script_args.labelled_fraction, test_fraction=script_args.test_fraction,
            seed=script_args.split_seed,
        )
        from datasets import DatasetDict

        columns = ("state", "action", "next_state")
        splits = DatasetDict(
            {k: v.select_columns([c for c in columns if c in v.column_names]) for k, v in splits.items()}
        )
        return splits, env.codec, env
    if script_args.codec == "vq":
        if script_args.vq_model is None:
            raise ValueError("--codec vq needs --vq_model (a JanusVQVAE / Emu3VQVAE checkpoint).")
        codec = get_codec("vq", model=script_args.vq_model, image_size=script_args.vq_image_size)
    else:
        codec = get_codec("palette", grid=script_args.codec_grid, patch_size=script_args.codec_patch_size)
    rows = load_edit_dataset(script_args.dataset_name, split=script_args.dataset_split,
                             config_name=script_args.dataset_config, max_rows=script_args.max_rows)
    root = script_args.image_root
    if root is None and Path(script_args.dataset_name).suffix in (".json", ".jsonl", ".csv"):
        root = str(Path(script_args.dataset_name).parent)
    transitions = edit_transitions(rows, codec, input_column=script_args.input_column,
                                   instruction_column=script_args.instruction_column,
                                   output_column=script_args.output_column, image_root=root)
    splits = edit_splits(transitions, labelled_fraction=script_args.labelled_fraction,
                         test_fraction=script_args.test_fraction, seed=script_args.split_seed)
    return splits, codec, None


def prepare_model(name: str, codec, out: Path) -> str:
    """Load a causal LM, add the codec's tokens to its tokenizer, resize its embeddings, save it to `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_swirl.visual import is_main_process, wait_for_everyone

    if is_main_process() and not (out / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, use_safetensors=True)
        if codec.add_to_tokenizer(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
    wait_for_everyone()
    return str(out)


def main():
    from trl import TrlParser

    from trl_swirl import SwirlConfig
    from trl_swirl.visual import VisualLoopConfig, is_main_process, generate_images, run_visual_swirl, save_strip

    parser = TrlParser((AuroraArguments, VisualLoopConfig, SwirlConfig))
    # defaults: the settings of benchmarks/swirl_visual.py for the tiny models of the built-in demo (every one can
    # be overridden on the command line; real models need their own, e.g. a far lower warm-start learning rate)
    parser.set_defaults(
        output_dir="runs/vlm-aurora", learning_rate=5e-5, beta=0.04, num_generations=8,
        per_device_train_batch_size=32, logging_steps=10, save_strategy="no", report_to="none",
        warmstart_epochs=40.0, swirl_iterations=2, fwm_max_steps=40, idm_max_steps=40, eval_max_samples=128,
    )
    import torch

    if not torch.cuda.is_available():  # CPU-only machine: full precision on the CPU unless told otherwise
        parser.set_defaults(bf16=False, use_cpu=True)
    script_args, loop_args, swirl_args = parser.parse_args_and_config()

    splits, codec, env = build_data(script_args)
    if is_main_process():
        print(f"data: { {k: len(v) for k, v in splits.items()} }, codec: {codec}")
    run_dir = Path(swirl_args.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fwm = idm = None
    if script_args.fwm_model_name_or_path:
        fwm = prepare_model(script_args.fwm_model_name_or_path, codec, run_dir / "base-fwm")
    if script_args.idm_model_name_or_path:
        idm = prepare_model(script_args.idm_model_name_or_path, codec, run_dir / "base-idm")
    if (fwm is None) != (idm is None):
        raise ValueError("Give both --fwm_model_name_or_path and --idm_model_name_or_path, or neither.")

    def report(record):
        if is_main_process() and record.get("metrics"):
            shown = {k: round(v, 3) for k, v in record["metrics"].items() if isinstance(v, float)}
            print(f"[{record['name']}] {shown}", flush=True)

    records = run_visual_swirl(splits, codec, swirl_args, loop_args, environment=env, fwm=fwm, idm=idm,
                               on_phase=report)

    if is_main_process() and script_args.strip_examples > 0 and "test" in splits:
        from trl_swirl.loop import load_model
        from trl_swirl.templates import SwirlTemplates

        templates = SwirlTemplates(swirl_args.fwm_template, swirl_args.idm_template)
        test = splits["test"].select(range(min(script_args.strip_examples, len(splits["test"]))))
        prompts = [templates.prompt_text("fwm", state=s, action=a) for s, a in zip(test["state"], test["action"])]
        fwm_refs = [r["fwm"] for r in records if r["name"] == "iter-0-warmstart-idm"] + [records[-1]["fwm"]]
        columns = [list(test["state"]), list(test["next_state"])]
        for ref in dict.fromkeys(fwm_refs):
            model, tokenizer = load_model(ref)
            columns.append(generate_images(model, tokenizer, codec, prompts))
        headers = ["source", "true next"] + [Path(r).name.replace("iter-", "").replace("warmstart-", "ws-")
                                               for r in dict.fromkeys(fwm_refs)]
        path = save_strip(list(zip(*columns)), run_dir / "strip.png", codec, labels=list(test["action"]),
                          headers=headers)
        print(f"strip (source | true next | FWM {' | FWM '.join(Path(r).name for r in dict.fromkeys(fwm_refs))}): "
              f"{path}")
    if is_main_process():
        print(f"done: {run_dir / 'results.json'}")


if __name__ == "__main__":
    main()
