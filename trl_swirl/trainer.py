"""`SwirlTrainer`: GRPO whose reward is the frozen partner world model, and whose prompts are the phase's transitions."""

from __future__ import annotations

import copy
import os
import textwrap

import torch
from datasets import Dataset, IterableDataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from trl import GRPOTrainer
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model, get_config_model_id

from .config import SwirlConfig
from .partner import PartnerReward, _is_peft_model
from .templates import SwirlTemplates, template_fields


SWIRL_PAPER = {
    "title": "Self-Improving World Modelling with Latent Actions",
    "id": "2602.06130",
    "citation": textwrap.dedent("""\
        @article{qiu2026swirl,
            title        = {{Self-Improving World Modelling with Latent Actions}},
            author       = {Qiu and Zhao and Li and Ziser and Korhonen and Cohen and Ponti},
            year         = 2026,
            eprint       = {arXiv:2602.06130},
        }"""),
}


def split_model_revision(name: str) -> tuple[str, str | None]:
    """`"org/model@iter-2-fwm"` -> `("org/model", "iter-2-fwm")`; a plain id or an existing local path is unchanged."""
    if "@" in name and not os.path.exists(name):
        repo, _, revision = name.rpartition("@")
        if repo and revision:
            return repo, revision
    return name, None


def load_model_and_tokenizer(name_or_path: str, init_kwargs: dict | None = None, trust_remote_code: bool = False):
    """(model, tokenizer) from a Hub id (optionally `id@revision`) or a local folder, with safetensors only;
    `init_kwargs` go to `AutoModelForCausalLM.from_pretrained` (a `dtype` may be given as a string)."""
    repo, revision = split_model_revision(name_or_path)
    kwargs = dict(init_kwargs or {})
    if revision is not None:
        if kwargs.get("revision") not in (None, revision):
            raise ValueError(
                f"The model {name_or_path!r} names revision {revision!r} but its init kwargs say "
                f"revision {kwargs['revision']!r}; give the revision in one place only."
            )
        kwargs["revision"] = revision
    kwargs.setdefault("trust_remote_code", trust_remote_code)
    kwargs.setdefault("use_safetensors", True)
    dtype = kwargs.get("dtype")
    if isinstance(dtype, str) and dtype in ("bfloat16", "float16", "float32"):
        kwargs["dtype"] = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(repo, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(
        repo, revision=kwargs.get("revision"), trust_remote_code=kwargs["trust_remote_code"]
    )
    return model, tokenizer


def load_partner(name_or_path: str, init_kwargs: dict | None = None, trust_remote_code: bool = False):
    """Load a partner (model, tokenizer) like `load_model_and_tokenizer`, frozen and in eval mode."""
    model, tokenizer = load_model_and_tokenizer(name_or_path, init_kwargs, trust_remote_code)
    freeze(model)
    return model, tokenizer


def freeze(model) -> None:
    for param in model.parameters():
        param.requires_grad_(False)
    model.eval()


class SwirlTrainer(GRPOTrainer):
    """
    Trainer for SWIRL, "Self-Improving World Modelling with Latent Actions" (https://huggingface.co/papers/2602.06130).

    One phase of SWIRL is GRPO with two changes w.r.t. [`~trl.GRPOTrainer`], and everything else (generation, KL to
    the reference, advantages, logging, checkpoints, vLLM, distributed training) is inherited unchanged:

    1. **The prompts** are built from the transition columns with the phase's template: (`state`, `action`) for
       `phase="fwm"` (the policy is the forward world model), (`state`, `next_state`) for `phase="idm"` (the policy is
       the inverse dynamics model). A dataset that already has a `prompt` column is used as it is.
    2. **The reward** is a [`PartnerReward`]: the frozen partner's log-probability of the row's action given the
       generated next state (phase `fwm`), or of the row's observed next state given the generated action (phase
       `idm`). Extra `reward_funcs` are added to it through GRPO's `reward_weights`.

    Args:
        model (`str`, `PreTrainedModel` or `PeftModel`):
            The policy: the FWM in phase `fwm`, the IDM in phase `idm`.
        partner_model (`str`, `PreTrainedModel` or `None`):
            The frozen partner: a Hub id or local folder (optionally `id@revision`), loaded frozen like TRL's reward
            models; a `PreTrainedModel` (frozen in place); or, with a `PeftModel` policy, the name of another LoRA
            adapter on it (two-adapter mode: FWM and IDM over one base). Defaults to `args.partner_adapter_name`, then
            `args.partner_model_name_or_path`.
        reward_funcs (callable or list, *optional*):
            Extra reward functions, added after the partner reward.
        args ([`SwirlConfig`], *optional*):
            Configuration; `phase` picks the direction.
        partner_processing_class (`PreTrainedTokenizerBase`, *optional*):
            The partner's tokenizer. Defaults to the one saved with the partner (loaded from its path), or to the
            policy's `processing_class` for an in-memory partner without a path, and in two-adapter mode.
        completion_decoder (`Callable[[list[int]], str]`, *optional*):
            Turns the token ids of each generated completion into the text the partner (and the logs) see, instead of
            TRL's `batch_decode(..., skip_special_tokens=True)`. For completions made of special tokens, e.g. an FWM
            generating image tokens: `trl_swirl.visual.ImageCompletionDecoder(codec, tokenizer)` writes them as the
            image's state text `<boi>...<eoi>`.
        Other arguments are those of [`~trl.GRPOTrainer`].
    """

    _tag_names = ["trl", "grpo", "swirl"]
    _name = "SWIRL"
    _paper = SWIRL_PAPER

    def __init__(
        self,
        model,
        partner_model=None,
        reward_funcs=None,
        args: SwirlConfig | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset=None,
        processing_class=None,
        partner_processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        completion_decoder=None,
        **kwargs,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            model_name = (model_name or "model").rstrip("/").split("/")[-1]
            args = SwirlConfig(f"{model_name}-SWIRL")
        elif not isinstance(args, SwirlConfig):
            raise TypeError(
                f"`args` must be a SwirlConfig (it carries the phase, partner and templates), got "
                f"{type(args).__name__}. Build one with SwirlConfig(output_dir=..., phase='fwm', ...)."
            )
        self.phase = args.phase
        self.completion_decoder = completion_decoder
        self.templates = SwirlTemplates(args.fwm_template, args.idm_template, args.prompt_format)

        # 1. Data first: cheap checks before any model is loaded
        if train_dataset is not None:
            train_dataset = self._prepare_phase_dataset(train_dataset, args, "train_dataset")
        if eval_dataset is not None:
            if isinstance(eval_dataset, dict):
                eval_dataset = type(eval_dataset)(
                    {k: self._prepare_phase_dataset(v, args, f"eval_dataset[{k!r}]") for k, v in eval_dataset.items()}
                )
            else:
                eval_dataset = self._prepare_phase_dataset(eval_dataset, args, "eval_dataset")

        # 2. The partner
        if partner_model is None:
            partner_model = args.partner_adapter_name or args.partner_model_name_or_path
        if partner_model is None:
            raise ValueError(
                f"SwirlTrainer (phase '{args.phase}') needs a partner: the frozen "
                f"{'IDM' if args.phase == 'fwm' else 'FWM'} that rewards the policy. Pass `partner_model=` (a model, "
                "a path or Hub id, or the name of another LoRA adapter of a PeftModel policy), or set "
                "`partner_model_name_or_path` / `partner_adapter_name` in the config."
            )
        adapter_name = None
        if isinstance(partner_model, str) and _is_peft_model(model) and partner_model in model.peft_config:
            adapter_name = partner_model
        elif isinstance(partner_model, str) and args.partner_adapter_name == partner_model:
            raise ValueError(
                f"`partner_adapter_name={partner_model!r}` needs a PeftModel policy holding that adapter, got "
                f"{type(model).__name__ if not isinstance(model, str) else repr(model)}."
            )
        if adapter_name is not None:
            if adapter_name == model.active_adapter:
                raise ValueError(
                    f"The partner adapter {adapter_name!r} is the policy's active (trained) adapter. Activate the "
                    "policy's own adapter with `model.set_adapter(...)` before building the trainer."
                )
            if adapter_name == "ref":
                raise ValueError("The partner adapter cannot be named 'ref': GRPO uses that name for its reference.")
            if args.deepspeed_plugin is not None and args.deepspeed_plugin.zero_stage == 3:
                raise ValueError(
                    "Two-adapter mode is not supported with DeepSpeed ZeRO-3 (the partner adapter is scored through "
                    "the policy's sharded weights). Use ZeRO-2 or DDP, or a separate partner model."
                )
            partner = model
            partner_tokenizer = partner_processing_class or processing_class
            if partner_tokenizer is None:
                raise ValueError("In two-adapter mode, pass `processing_class` (shared by both adapters).")
            self.partner_name = f"adapter:{adapter_name}"
        elif isinstance(partner_model, str):
            partner, loaded_tokenizer = load_partner(
                partner_model, args.partner_model_init_kwargs, trust_remote_code=args.trust_remote_code
            )
            partner_tokenizer = partner_processing_class or loaded_tokenizer
            self.partner_name = partner_model
        elif isinstance(partner_model, torch.nn.Module):
            partner = partner_model
            if partner is model:
                raise ValueError(
                    "`partner_model` is the policy itself. The partner must be the other model (the IDM in phase "
                    "'fwm', the FWM in phase 'idm'), or another adapter of a PeftModel policy."
                )
            freeze(partner)
            partner_tokenizer = partner_processing_class
            partner_path = get_config_model_id(partner.config) if hasattr(partner, "config") else ""
            if partner_tokenizer is None and partner_path and os.path.isdir(partner_path):
                partner_tokenizer = AutoTokenizer.from_pretrained(partner_path)
            if partner_tokenizer is None:
                partner_tokenizer = processing_class
            if partner_tokenizer is None:
                raise ValueError(
                    "Could not find the partner's tokenizer: pass `partner_processing_class=` (or `processing_class` "
                    "if partner and policy share a tokenizer)."
                )
            self.partner_name = partner_path or type(partner).__name__
        else:
            raise TypeError(
                f"`partner_model` must be a model, a path/Hub id, or an adapter name, got {type(partner_model).__name__}."
            )

        self.partner_reward = PartnerReward(
            partner,
            partner_tokenizer,
            phase=args.phase,
            templates=self.templates,
            state_column=args.state_column,
            action_column=args.action_column,
            next_state_column=args.next_state_column,
            history_column=args.history_column,
            reduction=args.reward_reduction,
            clip_min=args.reward_clip_min,
            include_eos=args.reward_include_eos,
            max_length=args.partner_max_length,
            batch_size=args.scoring_batch_size,
            offload=args.partner_offload,
            adapter_name=adapter_name,
            share_prefix=args.partner_share_prefix,
        )
        self._scoring_totals: dict[str, dict[str, int]] = {"train": {}, "eval": {}}
        self.partner_reward.on_scored = self._record_scoring
        for name, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            self._check_targets_fit(dataset, args, name)

        # 3. Rewards: the partner first, then the user's extras, weighted through GRPO's reward_weights
        extra = [] if reward_funcs is None else (list(reward_funcs) if isinstance(reward_funcs, list) else [reward_funcs])
        all_reward_funcs = [self.partner_reward, *extra]
        if args.reward_weights is None:
            args.reward_weights = [args.partner_reward_weight] + [1.0] * len(extra)
        elif len(args.reward_weights) == len(extra) and len(extra) > 0:
            args.reward_weights = [args.partner_reward_weight, *args.reward_weights]
        elif len(args.reward_weights) != len(all_reward_funcs):
            raise ValueError(
                f"`reward_weights` has {len(args.reward_weights)} values for {len(all_reward_funcs)} reward functions "
                f"(the partner reward + {len(extra)} extra). Give one weight per extra reward function (the partner's "
                "comes from `partner_reward_weight`), or one for each including the partner first."
            )
        if reward_processing_classes is not None:
            rpc = reward_processing_classes if isinstance(reward_processing_classes, list) else [reward_processing_classes]
            reward_processing_classes = [None, *rpc]

        # 4. The reference model. GRPOTrainer rebuilds it from `config._name_or_path`, which is empty for a model built
        # in memory and stale for one changed since it was loaded (e.g. by a previous SWIRL phase), and which reads
        # the adapter "default" of a PeftModel. In those cases the reference is a frozen copy of the policy as it is.
        defer_ref = None
        if args.beta != 0.0 and peft_config is None and not isinstance(model, str):
            quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
            if _is_peft_model(model):
                if model.active_adapter != "default":
                    defer_ref = "adapter"
            elif isinstance(model, PreTrainedModel) and not quantized:
                defer_ref = "copy"
        ref_copy = copy.deepcopy(model) if defer_ref == "copy" else None

        beta, sync_ref = args.beta, args.sync_ref_model
        if defer_ref is not None:
            args.beta, args.sync_ref_model = 0.0, False
        try:
            super().__init__(
                model,
                reward_funcs=all_reward_funcs,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                reward_processing_classes=reward_processing_classes,
                callbacks=callbacks,
                optimizers=optimizers,
                peft_config=peft_config,
                **kwargs,
            )
        finally:
            args.beta, args.sync_ref_model = beta, sync_ref
        self.beta = beta
        if defer_ref == "copy":
            self._setup_copied_reference(ref_copy, args)
        elif defer_ref == "adapter":
            self._setup_reference_adapter()

        # 5. Place the partner like TRL places reward models: frozen, evaluation mode, on every rank
        if adapter_name is not None and self.is_fsdp_enabled:
            raise ValueError(
                "Two-adapter mode is not supported with FSDP: the partner adapter is scored through the policy's "
                "unwrapped module, whose weights FSDP shards. Use DDP or ZeRO-2, or a separate partner model."
            )
        if adapter_name is None:
            if args.partner_offload:
                if self.is_deepspeed_enabled:
                    raise ValueError("`partner_offload` is not supported with DeepSpeed; ZeRO offload covers it.")
                self.partner_reward.device = self.accelerator.device
            else:
                if self.is_deepspeed_enabled:
                    prepared = prepare_deepspeed(partner, self.accelerator)
                else:
                    prepared = self.accelerator.prepare_model(partner, evaluation_mode=True, device_placement=True)
                self.partner_reward.model = prepared
                self.partner_reward.device = self.accelerator.device
                # under ZeRO-3 the partner is sharded and each forward pass is a collective: every rank must run as
                # many passes as the others (under FSDP, accelerate places a full copy of an evaluation model per rank)
                plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
                zero3 = self.is_deepspeed_enabled and getattr(plugin, "zero_stage", None) == 3
                self.partner_reward.sync_forward_calls = bool(zero3)

    # ------------------------------------------------------------------------------------------------- generation
    def _generate(self, prompts: list):
        """GRPO's generation; with a `completion_decoder`, the completions' text is rebuilt from their token ids."""
        outputs = super()._generate(prompts)
        if self.completion_decoder is None:
            return outputs
        if not isinstance(outputs, tuple) or len(outputs) < 4:
            raise RuntimeError(
                "`completion_decoder` expects GRPOTrainer._generate to return (prompt_ids, completion_ids, tool_mask, "
                "completions, ...); this TRL version returns something else."
            )
        outputs = list(outputs)
        completion_ids, completions = outputs[1], outputs[3]
        texts = [self.completion_decoder(list(ids)) for ids in completion_ids]
        if completions and not isinstance(completions[0], str):  # conversational: one assistant message each
            outputs[3] = [[{"role": "assistant", "content": text}] for text in texts]
        else:
            outputs[3] = texts
        return tuple(outputs)

    # ------------------------------------------------------------------------------------------------------- data
    def _phase_columns(self, args: SwirlConfig) -> list[str]:
        if args.phase == "fwm":
            return [args.state_column, args.action_column]
        return [args.state_column, args.next_state_column]

    def _prepare_phase_dataset(self, dataset, args: SwirlConfig, name: str):
        """Check the phase's columns and add the `prompt` column rendered from the template (unless present)."""
        needed = self._phase_columns(args)
        column_names = dataset.column_names
        if column_names is not None:
            missing = [c for c in needed if c not in column_names]
            if missing:
                role = "the action the FWM is conditioned on and the IDM scores" if args.phase == "fwm" else (
                    "the observed next state the IDM reads and the FWM scores"
                )
                raise ValueError(
                    f"Phase '{args.phase}' needs the column(s) {missing} in `{name}` ({needed[1]!r} is {role}); it "
                    f"has {column_names}. In phase 'fwm' the action is the IDM's label of the pair (see "
                    "`trl_swirl.loop.label_dataset`). Rename the columns, or set `state_column`/`action_column`/"
                    "`next_state_column`."
                )
            uses_history = "history" in template_fields(self.templates.template_for(args.phase)) or (
                "history" in template_fields(self.templates.template_for("idm" if args.phase == "fwm" else "fwm"))
            )
            if uses_history and args.history_column not in column_names:
                raise ValueError(
                    f"The templates use '{{history}}' but `{name}` has no '{args.history_column}' column; add it "
                    "(see `trl_swirl.data.multiturn_from_trajectories`) or remove '{history}' from the templates."
                )
        if isinstance(dataset, Dataset):
            if len(dataset) == 0:
                raise ValueError(f"`{name}` is empty: phase '{args.phase}' needs at least one transition.")
            for column in needed:
                for i, value in enumerate(dataset[column]):
                    if not isinstance(value, str) or not value.strip():
                        raise ValueError(
                            f"Row {i} of `{name}` has an empty or non-string '{column}' ({value!r}); phase "
                            f"'{args.phase}' needs a non-empty '{column}' in every row. Drop or fix such rows, e.g. "
                            f"`dataset.filter(lambda r: bool(r[{column!r}].strip()))`."
                        )
        if column_names is not None and "prompt" in column_names:
            return dataset
        templates, phase = self.templates, args.phase
        cols = (args.state_column, args.action_column, args.next_state_column, args.history_column)

        def add_prompt(row):
            state, action, next_state, history = (row.get(c) for c in cols)
            prompt = templates.prompt(phase, state=state, action=action, next_state=next_state, history=history)
            return {"prompt": prompt}

        return dataset.map(add_prompt)

    def _check_targets_fit(self, dataset, args: SwirlConfig, name: str):
        if dataset is None:
            return
        datasets_ = dataset.values() if isinstance(dataset, dict) else [dataset]
        reward = self.partner_reward
        if reward.max_length is None:
            return
        for ds in datasets_:
            if not isinstance(ds, Dataset):
                continue
            targets = sorted(set(ds[reward.target_column]), key=len, reverse=True)[:64]
            # encode() applies the truncation rule and raises a clear error for a target that cannot fit
            reward.encode(["x"] * len(targets), targets)

    # --------------------------------------------------------------------------------------------------- reference
    def _setup_copied_reference(self, ref_model, args: SwirlConfig):
        freeze(ref_model)
        if args.disable_dropout:
            disable_dropout_in_model(ref_model)
        add_fused_lm_head(ref_model, temperature=self.temperature, cast_lm_head_to_fp32=args.cast_lm_head_to_fp32)
        if self.is_deepspeed_enabled:
            ref_model = prepare_deepspeed(ref_model, self.accelerator)
        elif self.is_fsdp_enabled:
            ref_model = prepare_fsdp(ref_model, self.accelerator)
        else:
            ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        self.ref_model = ref_model
        if args.sync_ref_model:
            self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))

    def _setup_reference_adapter(self):
        """Add a frozen "ref" copy of the policy's active adapter, which GRPOTrainer uses as the reference."""
        model = self.accelerator.unwrap_model(self.model)
        if self.args.sync_ref_model:
            raise NotImplementedError("`sync_ref_model=True` is not supported with a PEFT policy (as in GRPOTrainer).")
        active = model.active_adapter
        model.add_adapter("ref", model.peft_config[active])
        for name, param in model.named_parameters():
            if f".{active}." in name:
                model.get_parameter(name.replace(f".{active}.", ".ref.")).data.copy_(param.data)
        model.set_adapter(active)  # the policy's adapter trainable, every other one (partner, ref) frozen

    # ----------------------------------------------------------------------------------------------------- logging
    def _record_scoring(self, stats: dict[str, int]) -> None:
        totals = self._scoring_totals["train" if self.model.training else "eval"]
        for key in ("calls", "pairs", "tokens", "computed_tokens", "padded_tokens", "forward_calls"):
            totals[key] = totals.get(key, 0) + (1 if key == "calls" else stats.get(key, 0))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """GRPO's logging, plus what partner scoring computed since the last log (this process's calls):
        `partner/computed_token_fraction` (tokens run through the partner / tokens of all pairs: below 1 when the
        shared-prefix cache or duplicates saved work), `partner/padding_fraction` (padding / tokens fed) and
        `partner/forward_passes` (per scoring call)."""
        mode = "train" if self.model.training else "eval"
        totals = self._scoring_totals[mode]
        if totals.get("tokens"):
            prefix = "eval_" if mode == "eval" else ""
            logs[f"{prefix}partner/computed_token_fraction"] = totals["computed_tokens"] / totals["tokens"]
            if totals["padded_tokens"]:
                padding = totals["padded_tokens"] - totals["computed_tokens"]
                logs[f"{prefix}partner/padding_fraction"] = padding / totals["padded_tokens"]
            logs[f"{prefix}partner/forward_passes"] = totals["forward_calls"] / totals["calls"]
        totals.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------------------ saving
    def _save(self, output_dir: str | None = None, state_dict=None):
        """Save as the Trainer does, but keep the training arguments as JSON instead of a pickle (`training_args.bin`):
        a SWIRL checkpoint holds no pickled file, so it can be shared and loaded safely (tokens are redacted)."""
        super()._save(output_dir, state_dict=state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        pickled = os.path.join(output_dir, "training_args.bin")
        if self.args.should_save and os.path.exists(pickled):
            with open(os.path.join(output_dir, "training_args.json"), "w", encoding="utf-8") as f:
                f.write(self.args.to_json_string())
            os.remove(pickled)

    # ----------------------------------------------------------------------------------------------- model card
    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None):
        if tags is None:
            tags = []
        elif isinstance(tags, str):
            tags = [tags]
        tags = list(tags) + ["swirl", "world-model", self.phase, f"swirl-{self.phase}", "arxiv:2602.06130"]
        partner_tag = self.partner_name.rstrip("/").split("/")[-1] if os.path.isdir(self.partner_name) else self.partner_name
        tags.append(f"partner:{partner_tag}")
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        path = os.path.join(self.args.output_dir, "README.md")
        if not os.path.exists(path):
            return
        role = "forward world model P(y | x, z)" if self.phase == "fwm" else "inverse dynamics model Q(z | x, y)"
        partner_role = "IDM" if self.phase == "fwm" else "FWM"
        template = self.templates.template_for(self.phase)
        section = (
            "\n## SWIRL\n\n"
            f"This checkpoint is the **{self.phase.upper()}**, the {role}, trained in the `{self.phase}` phase of "
            "SWIRL (arXiv 2602.06130) with the frozen "
            f"{partner_role} `{partner_tag}` as the partner that rewards it.\n\n"
            f"- reward: the partner's {self.args.reward_reduction} per-token log-probability of the "
            f"{'action' if self.phase == 'fwm' else 'observed next state'}, clipped below at {self.args.reward_clip_min}\n"
            f"- prompt template (`{self.phase}_template`):\n\n```\n{template}```\n"
        )
        with open(path, "a", encoding="utf-8") as f:
            f.write(section)
