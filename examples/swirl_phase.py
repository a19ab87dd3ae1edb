# /// script
# dependencies = [
#     "trl-swirl",
# ]
# ///
"""One SWIRL phase with `SwirlTrainer`: train the FWM against a frozen IDM (`--phase fwm`) or the reverse.

With no model flags it runs on the embedded default (tiny models built locally on the built-in `physics`
environment; nothing is downloaded):

    python examples/swirl_phase.py --output_dir fwm-iter1 --phase fwm --max_steps 10

With real models (the dataset needs the columns `state`, `next_state` and, in phase `fwm`, `action` — the IDM's
labels, see `trl_swirl.loop.label_dataset`):

    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/swirl_phase.py \
        --model_name_or_path you/swirl-fwm@iter-1-fwm --partner_model_name_or_path you/swirl-idm@iter-1-idm \
        --dataset_name you/physics-labels --dataset_revision iter-2-labels \
        --phase fwm --output_dir fwm-iter2 --num_generations 8 --beta 0.04 --learning_rate 1e-6 --bf16 true

    python examples/swirl_phase.py --config recipe.yaml     # TrlParser YAML recipes
"""

from dataclasses import dataclass, field

import torch
from trl import TrlParser

from trl_swirl import SwirlConfig, SwirlTrainer


@dataclass
class ScriptArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "The policy (FWM in phase fwm, IDM in phase idm): Hub id[@revision] or folder."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id or a local `save_to_disk` folder with the transition columns."}
    )
    dataset_revision: str | None = field(default=None, metadata={"help": "Revision of the Hub dataset."})
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    environment: str = field(default="physics", metadata={"help": "Built-in environment of the embedded default."})


def main():
    parser = TrlParser((ScriptArguments, SwirlConfig))
    parser.set_defaults(bf16=torch.cuda.is_available(), report_to="none", output_dir="swirl-phase",
                        per_device_train_batch_size=8, num_generations=8)
    script_args, args = parser.parse_args_and_config()

    if script_args.model_name_or_path is None:
        from trl_swirl.tiny import tiny_world

        fwm, idm, tokenizer, dataset = tiny_world(script_args.environment)
        model, partner = (fwm, idm) if args.phase == "fwm" else (idm, fwm)
        partner_tokenizer = tokenizer
    else:
        import os

        from datasets import load_dataset, load_from_disk

        from trl_swirl.loop import load_model

        if script_args.dataset_name is None:
            raise ValueError("`--dataset_name` is required with `--model_name_or_path`.")
        if os.path.isdir(script_args.dataset_name):
            dataset = load_from_disk(script_args.dataset_name)
            if hasattr(dataset, "keys"):
                dataset = dataset[script_args.dataset_split]
        else:
            dataset = load_dataset(script_args.dataset_name, revision=script_args.dataset_revision,
                                   split=script_args.dataset_split)
        model, tokenizer = load_model(script_args.model_name_or_path, args)
        partner, partner_tokenizer = None, None  # loaded by the trainer from --partner_model_name_or_path

    trainer = SwirlTrainer(model=model, partner_model=partner, args=args, train_dataset=dataset,
                           processing_class=tokenizer, partner_processing_class=partner_tokenizer)
    trainer.train()
    trainer.save_model(args.output_dir)
    if args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


if __name__ == "__main__":
    main()
