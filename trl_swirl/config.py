"""`SwirlConfig`: GRPO's configuration plus the phase, the partner, the reward and the prompt templates."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig

from .templates import DEFAULT_FWM_TEMPLATE, DEFAULT_IDM_TEMPLATE, PHASES, validate_template


@dataclass
class SwirlConfig(GRPOConfig):
    r"""
    Configuration class for [`SwirlTrainer`].

    Everything of [`~trl.GRPOConfig`] applies unchanged; this class adds what SWIRL needs. Every field is a command-line
    flag through [`~trl.TrlParser`] / [`~transformers.HfArgumentParser`] (e.g. `--phase idm --reward_clip_min -5`).

    Parameters:
        phase (`str`, defaults to `"fwm"`):
            Which model is trained. `"fwm"`: the policy is the forward world model P(y | x, z), prompted with (state,
            action) and rewarded by the frozen IDM's log-probability of the action given (state, generated next state).
            `"idm"`: the policy is the inverse dynamics model Q(z | x, y), prompted with (state, next_state) and rewarded
            by the frozen FWM's log-probability of the observed next state given (state, generated action).
        partner_model_name_or_path (`str` or `None`):
            The frozen partner (the IDM in phase `fwm`, the FWM in phase `idm`): a Hub id or a local folder. Used when
            no `partner_model` is passed to the trainer.
        partner_model_init_kwargs (`dict` or `None`):
            Keyword arguments for `AutoModelForCausalLM.from_pretrained` when the partner is loaded from a path.
        partner_adapter_name (`str` or `None`):
            Two-adapter mode: the name of the partner's LoRA adapter on the policy's `PeftModel`.
        reward_reduction (`str`, defaults to `"mean"`):
            How per-token log-probabilities of the target are reduced: `"mean"` (as in the paper) or `"sum"`.
        reward_clip_min (`float` or `None`, defaults to `-10.0`):
            Lower clip of the partner reward, as in the paper's code. `None` disables clipping.
        partner_reward_weight (`float`, defaults to `1.0`):
            Weight of the partner reward in GRPO's `reward_weights`, beside any extra reward functions.
        reward_include_eos (`bool`, defaults to `True`):
            Whether the partner's end-of-sequence token is part of the scored target (the paper scores the image's
            end token too): it rewards targets that end where they should.
        partner_max_length (`int` or `None`):
            Longest context + target the partner scores, in partner tokens. Defaults to the smaller of the partner
            tokenizer's `model_max_length` and the model's `max_position_embeddings`. Contexts that do not fit are
            truncated from the left; a target that does not fit (with at least one context token) is an error.
        scoring_batch_size (`int` or `None`):
            How many (context, target) pairs the partner scores per batch (the memory bound of scoring). `None`: all
            at once. A batch takes one forward pass, one more for the shared prefix, and more where cutting it by
            length saves padding.
        partner_offload (`bool`, defaults to `False`):
            Keep a separate partner model on the CPU between scoring calls (for tight GPU memory).
        partner_share_prefix (`bool`, defaults to `True`):
            Compute a prefix that several scoring contexts share (a GRPO group's prompt) once per batch and reuse its
            key/value cache for every member. Same rewards up to float rounding; `False` scores whole sequences.
        fwm_template, idm_template (`str`):
            Format strings over `{state}`, `{action}`, `{next_state}` and optionally `{history}` for the two
            directions. The FWM template must not contain `{next_state}` and the IDM template not `{action}`.
        prompt_format (`str`, defaults to `"text"`):
            `"text"`: prompts are plain strings (base models). `"conversational"`: the rendered template is the
            content of one user message; prompts are chat messages and the partner's context goes through the partner
            tokenizer's chat template (chat models).
        state_column, action_column, next_state_column, history_column (`str`):
            Dataset column names.
    """

    _VALID_DICT_FIELDS = GRPOConfig._VALID_DICT_FIELDS + ["partner_model_init_kwargs"]

    phase: str = field(
        default="fwm",
        metadata={
            "help": "Which model is trained: 'fwm' (forward world model P(y|x,z), rewarded by the frozen IDM) or "
            "'idm' (inverse dynamics model Q(z|x,y), rewarded by the frozen FWM).",
            "choices": list(PHASES),
        },
    )
    partner_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The frozen partner model (the IDM in phase 'fwm', the FWM in phase 'idm'): a Hub id or a local "
            "folder, used when no `partner_model` is passed to the trainer."
        },
    )
    partner_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments (a dict, or a JSON string on the command line) for "
            "`AutoModelForCausalLM.from_pretrained` when the partner is loaded from a path, e.g. "
            "'{\"dtype\": \"bfloat16\", \"revision\": \"iter-1-idm\"}'."
        },
    )
    partner_adapter_name: str | None = field(
        default=None,
        metadata={
            "help": "Two-adapter mode: name of the partner's LoRA adapter on the policy's PeftModel (FWM and IDM as "
            "two adapters over one base model)."
        },
    )
    reward_reduction: str = field(
        default="mean",
        metadata={
            "help": "Reduction of the partner's per-token log-probabilities over the target: 'mean' (the paper) or "
            "'sum'.",
            "choices": ["mean", "sum"],
        },
    )
    reward_clip_min: float | None = field(
        default=-10.0,
        metadata={"help": "Lower clip of the partner reward (the paper's code uses -10). None disables clipping."},
    )
    partner_reward_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the partner reward in GRPO's `reward_weights`, beside extra reward functions."},
    )
    reward_include_eos: bool = field(
        default=True,
        metadata={
            "help": "Score the partner's end-of-sequence token as part of the target, so targets that end where they "
            "should are rewarded (the paper scores the end-of-image token)."
        },
    )
    partner_max_length: int | None = field(
        default=None,
        metadata={
            "help": "Longest context + target the partner scores, in partner tokens (default: the partner's own "
            "limit). Contexts are truncated from the left; a target that does not fit is an error."
        },
    )
    scoring_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Number of (context, target) pairs the partner scores per batch (bounds scoring memory). None: all "
            "at once. A batch takes one forward pass, plus one for the shared prefix and more where cutting it by "
            "length saves padding."
        },
    )
    partner_offload: bool = field(
        default=False,
        metadata={"help": "Keep a separate partner model on the CPU between scoring calls (for tight GPU memory)."},
    )
    partner_share_prefix: bool = field(
        default=True,
        metadata={
            "help": "Compute a prefix that several scoring contexts share (a GRPO group's prompt) once per batch and "
            "reuse its key/value cache for every member. Same rewards up to float rounding; False scores whole "
            "sequences."
        },
    )
    fwm_template: str = field(
        default=DEFAULT_FWM_TEMPLATE,
        metadata={
            "help": "Format string of the forward direction (x, z) over {state}, {action} and optionally {history}: "
            "the FWM's prompt, and its scoring context when it is the partner."
        },
    )
    idm_template: str = field(
        default=DEFAULT_IDM_TEMPLATE,
        metadata={
            "help": "Format string of the inverse direction (x, y) over {state}, {next_state} and optionally "
            "{history}: the IDM's prompt, and its scoring context when it is the partner."
        },
    )
    prompt_format: str = field(
        default="text",
        metadata={
            "help": "'text' for base models (prompts are strings) or 'conversational' for chat models (the rendered "
            "template is one user message, contexts go through the chat template).",
            "choices": ["text", "conversational"],
        },
    )
    state_column: str = field(default="state", metadata={"help": "Dataset column holding the source state x."})
    action_column: str = field(default="action", metadata={"help": "Dataset column holding the action z."})
    next_state_column: str = field(
        default="next_state", metadata={"help": "Dataset column holding the observed next state y."}
    )
    history_column: str = field(
        default="history",
        metadata={"help": "Optional dataset column with earlier states (multi-turn rows), used by '{history}'."},
    )

    def __post_init__(self):
        # Checked before GRPOConfig's own set-up, so a typo fails fast.
        if self.phase not in PHASES:
            raise ValueError(
                f"`phase` must be one of {list(PHASES)}, got {self.phase!r}: use 'fwm' to train the forward world "
                "model or 'idm' to train the inverse dynamics model."
            )
        if self.reward_reduction not in ("mean", "sum"):
            raise ValueError(f"`reward_reduction` must be 'mean' or 'sum', got {self.reward_reduction!r}.")
        if self.prompt_format not in ("text", "conversational"):
            raise ValueError(f"`prompt_format` must be 'text' or 'conversational', got {self.prompt_format!r}.")
        if self.scoring_batch_size is not None and self.scoring_batch_size < 1:
            raise ValueError(f"`scoring_batch_size` must be a positive integer or None, got {self.scoring_batch_size}.")
        if self.partner_max_length is not None and self.partner_max_length < 2:
            raise ValueError(f"`partner_max_length` must be at least 2, got {self.partner_max_length}.")
        validate_template(self.fwm_template, "fwm")
        validate_template(self.idm_template, "idm")
        if isinstance(self.partner_model_init_kwargs, str):
            try:
                self.partner_model_init_kwargs = json.loads(self.partner_model_init_kwargs)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"`partner_model_init_kwargs` must be a dict or a JSON object string, got "
                    f"{self.partner_model_init_kwargs!r} ({err})."
                ) from err
        columns = [self.state_column, self.action_column, self.next_state_column, self.history_column]
        if len(set(columns)) != len(columns):
            raise ValueError(f"The column names must be distinct, got {columns}.")
        super().__post_init__()
