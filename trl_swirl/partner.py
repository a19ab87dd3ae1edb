"""The partner: a frozen model that scores a target text given a context, used as SWIRL's reward.

[`PartnerReward`] is an ordinary TRL reward function (`prompts`, `completions` and the dataset columns as keyword
arguments, one float per completion), so it works with [`~trl.GRPOTrainer`] as well as with [`SwirlTrainer`]:

* phase `fwm` (the policy is the FWM): for each generated next state y^, the frozen IDM's log-probability of the
  row's `action` z given the IDM-direction context rendered from (`state`, y^);
* phase `idm` (the policy is the IDM): for each generated action z^, the frozen FWM's log-probability of the row's
  observed `next_state` y given the FWM-direction context rendered from (`state`, z^).

Scoring rules (also in the README):

* context and target are tokenized separately with the partner's tokenizer, so the boundary is exact: the context
  with the tokenizer's special tokens (e.g. BOS), the target without, followed by the partner's EOS token when
  `include_eos` is set (and the tokenizer has one);
* the reward is the mean (or sum) of the target tokens' log-probabilities, clipped below at `clip_min` (-10 by
  default, as in the paper's code);
* pairs are scored in left-padded batches sorted by length (`batch_size` pairs per forward pass), under `no_grad`,
  with the partner in eval mode; the padding token is irrelevant (it is masked), so a tokenizer without one works;
* truncation: when context + target exceeds `max_length` (default: the partner's own limit), the context is
  truncated from the left; the target is never truncated: a target that does not fit with at least one context
  token raises a `ValueError`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .evaluation import _eval_mode  # eval mode + no_grad, training flag restored
from .templates import DEFAULT_FWM_TEMPLATE, DEFAULT_IDM_TEMPLATE, PHASES, SwirlTemplates, completion_text


logger = logging.getLogger(__name__)

_UNBOUNDED = 1_000_000  # tokenizers without a limit report a huge model_max_length


def _is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def _forward_parameters(model) -> set[str]:
    base = model.get_base_model() if _is_peft_model(model) else model
    try:
        return set(inspect.signature(base.forward).parameters)
    except (TypeError, ValueError):  # pragma: no cover
        return set()


def model_device(model) -> torch.device:
    """Device of the model's input embeddings (where input ids must go)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


def partner_length_limit(model, tokenizer) -> int | None:
    limits = []
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < _UNBOUNDED:
        limits.append(tok_limit)
    config = getattr(model, "config", None)
    if config is not None:
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        max_pos = getattr(text_config, "max_position_embeddings", None)
        if isinstance(max_pos, int) and max_pos > 0:
            limits.append(max_pos)
    return min(limits) if limits else None


@contextlib.contextmanager
def _active_adapter(model, adapter_name: str | None):
    """Switch a PeftModel to `adapter_name` (frozen) for scoring, then restore the previously active adapter."""
    if adapter_name is None:
        yield
        return
    previous = model.active_adapter
    model.set_adapter(adapter_name, inference_mode=True)
    try:
        yield
    finally:
        # re-activating the policy's adapter makes it trainable again and leaves every other adapter frozen
        model.set_adapter(previous)


class PartnerReward:
    """SWIRL's reward: the frozen partner model's log-probability of the row's target given a context built from the
    row's state and the policy's completion.

    Args:
        model (`PreTrainedModel` or `PeftModel`):
            The partner. In two-adapter mode, the policy's `PeftModel` itself, with `adapter_name` set.
        processing_class (`PreTrainedTokenizerBase`):
            The partner's tokenizer (it may differ from the policy's). A processor's `.tokenizer` is used.
        phase (`str`):
            `"fwm"` (score the row's action given the generated next state) or `"idm"` (score the row's next state
            given the generated action).
        templates (`SwirlTemplates`, *optional*):
            The prompt templates; defaults to the base-model templates.
        state_column, action_column, next_state_column, history_column (`str`):
            Dataset column names, passed by the trainer as keyword arguments.
        reduction (`str`, defaults to `"mean"`), clip_min (`float` or `None`, defaults to `-10.0`),
        include_eos (`bool`, defaults to `True`), max_length (`int`, *optional*), batch_size (`int`, *optional*):
            See the module docstring.
        offload (`bool`, defaults to `False`):
            Move the partner to `device` for each scoring call and back to the CPU afterwards.
        adapter_name (`str`, *optional*):
            Two-adapter mode: the partner's adapter on `model` (a `PeftModel`); the previously active adapter is
            restored after scoring.
        device (`torch.device`, *optional*):
            Where scoring runs; defaults to the model's device.
    """

    #: name TRL uses for the logged metrics: `rewards/swirl_partner_logprob/mean` and `/std`
    __name__ = "swirl_partner_logprob"

    def __init__(
        self,
        model,
        processing_class,
        *,
        phase: str,
        templates: SwirlTemplates | None = None,
        state_column: str = "state",
        action_column: str = "action",
        next_state_column: str = "next_state",
        history_column: str = "history",
        reduction: str = "mean",
        clip_min: float | None = -10.0,
        include_eos: bool = True,
        max_length: int | None = None,
        batch_size: int | None = None,
        offload: bool = False,
        adapter_name: str | None = None,
        device: torch.device | str | None = None,
    ):
        if phase not in PHASES:
            raise ValueError(f"`phase` must be one of {list(PHASES)}, got {phase!r}.")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"`reduction` must be 'mean' or 'sum', got {reduction!r}.")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer or None, got {batch_size}.")
        if adapter_name is not None:
            if not _is_peft_model(model):
                raise ValueError(
                    f"`adapter_name={adapter_name!r}` needs the partner to be a `PeftModel` holding that adapter, got "
                    f"{type(model).__name__}."
                )
            if adapter_name not in model.peft_config:
                raise ValueError(
                    f"The PeftModel has no adapter named {adapter_name!r}; its adapters are {list(model.peft_config)}."
                )
        if offload and adapter_name is not None:
            raise ValueError("`offload` applies to a separate partner model, not to an adapter of the policy.")
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if tokenizer is None:
            raise ValueError("The partner needs a tokenizer (`processing_class`).")
        self.model = model
        self.tokenizer = tokenizer
        self.phase = phase
        self.templates = templates or SwirlTemplates(DEFAULT_FWM_TEMPLATE, DEFAULT_IDM_TEMPLATE)
        self.state_column = state_column
        self.action_column = action_column
        self.next_state_column = next_state_column
        self.history_column = history_column
        self.reduction = reduction
        self.clip_min = clip_min
        self.include_eos = include_eos
        self.max_length = max_length if max_length is not None else partner_length_limit(model, tokenizer)
        self.batch_size = batch_size
        self.offload = offload
        self.adapter_name = adapter_name
        self.device = torch.device(device) if device is not None else None
        if offload:
            self.model.to("cpu")
        params = _forward_parameters(model)
        self._accepts_logits_to_keep = "logits_to_keep" in params
        self._accepts_position_ids = "position_ids" in params

    # ------------------------------------------------------------------------------------------------ reward API
    @property
    def target_column(self) -> str:
        """The dataset column whose text is scored: the action in phase `fwm`, the next state in phase `idm`."""
        return self.action_column if self.phase == "fwm" else self.next_state_column

    @property
    def required_columns(self) -> list[str]:
        return [self.state_column, self.target_column]

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        if completions is None:
            raise ValueError("PartnerReward needs `completions`.")
        for column in self.required_columns:
            if column not in kwargs:
                raise ValueError(
                    f"PartnerReward (phase '{self.phase}') needs the dataset column '{column}', which is missing from "
                    f"the batch (got columns {sorted(k for k in kwargs if not k.startswith(('trainer_', 'log_')))}). "
                    "Add it to the dataset, or set the matching `*_column` option."
                )
        states = kwargs[self.state_column]
        targets = kwargs[self.target_column]
        histories = kwargs.get(self.history_column) or [None] * len(completions)
        contexts = [
            self.context(state=state, completion=completion, history=history)
            for state, completion, history in zip(states, completions, histories, strict=True)
        ]
        return self.score(contexts, list(targets))

    def context(self, *, state: str, completion: Any, history=None) -> str:
        """The partner's context text for one completion (the chat template applied in conversational format)."""
        generated = completion_text(completion).strip()
        text = self.templates.partner_context_text(self.phase, state=state, generated=generated, history=history)
        if self.templates.prompt_format == "conversational":
            if getattr(self.tokenizer, "chat_template", None) is None:
                raise ValueError(
                    "`prompt_format='conversational'` needs a partner tokenizer with a chat template; this one has "
                    "none. Use `prompt_format='text'` or a chat model's tokenizer."
                )
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return text

    # ---------------------------------------------------------------------------------------------- tokenization
    def _encode_context(self, text: str) -> list[int]:
        # a rendered chat template already holds its special tokens
        add_special = self.templates.prompt_format != "conversational"
        return self.tokenizer(text, add_special_tokens=add_special)["input_ids"]

    def _encode_target(self, text: str, index: int) -> list[int]:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(
                f"The target '{self.target_column}' of row {index} is empty: SWIRL scores the partner's "
                f"log-probability of that text, so every row needs a non-empty '{self.target_column}'."
            )
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if self.include_eos and self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def encode(self, contexts: Sequence[str], targets: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """Token ids of each (context, target) pair after the truncation rule; targets are tokenized once each."""
        if len(contexts) != len(targets):
            raise ValueError(f"Got {len(contexts)} contexts but {len(targets)} targets.")
        target_cache: dict[str, list[int]] = {}
        context_cache: dict[str, list[int]] = {}
        pairs = []
        for i, (context, target) in enumerate(zip(contexts, targets)):
            if target not in target_cache:
                target_cache[target] = self._encode_target(target, i)
            if context not in context_cache:
                context_cache[context] = self._encode_context(context)
            tgt, ctx = target_cache[target], context_cache[context]
            if self.max_length is not None:
                if len(tgt) + 1 > self.max_length:
                    raise ValueError(
                        f"The target '{self.target_column}' of row {i} is {len(tgt)} partner tokens long, which "
                        f"leaves no room for its context within the partner's max length ({self.max_length}). "
                        "Shorten the target, or raise `partner_max_length` if the partner supports longer inputs."
                    )
                room = self.max_length - len(tgt)
                if len(ctx) > room:
                    ctx = ctx[len(ctx) - room :]  # keep the end of the context, next to the target
            if not ctx:
                # an empty context (e.g. an empty template render with no BOS) still needs one token to condition on
                ctx = [self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self._pad_id]
            pairs.append((ctx, tgt))
        return pairs

    @property
    def _pad_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0):
            if candidate is not None:
                return candidate
        return 0  # pragma: no cover

    # --------------------------------------------------------------------------------------------------- scoring
    def score(self, contexts: Sequence[str], targets: Sequence[str]) -> list[float]:
        """Reduced, clipped log-probability of each target given its context (one float per pair)."""
        pairs = self.encode(contexts, targets)
        logps = self.score_ids(pairs)
        rewards = []
        for value in logps:
            if self.clip_min is not None:
                value = max(value, self.clip_min)
            rewards.append(float(value))
        return rewards

    @torch.no_grad()
    def score_ids(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        """Reduced (unclipped) log-probabilities of each target id list given its context id list."""
        if not pairs:
            return []
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]), reverse=True)
        batch_size = self.batch_size or len(pairs)
        results: list[float] = [0.0] * len(pairs)
        device = self.device or model_device(self.model)
        with contextlib.ExitStack() as stack:
            if self.offload:
                self.model.to(device)
                stack.callback(self.model.to, "cpu")
            stack.enter_context(_active_adapter(self.model, self.adapter_name))
            stack.enter_context(_eval_mode(self.model))
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                values = self._score_batch([pairs[i] for i in chunk], device)
                for i, value in zip(chunk, values):
                    results[i] = value
        if self.offload and device.type == "cuda":
            torch.cuda.empty_cache()
        return results

    def _score_batch(self, pairs, device) -> list[float]:
        lengths = [len(c) + len(t) for c, t in pairs]
        width = max(lengths)
        max_target = max(len(t) for _, t in pairs)
        input_ids = torch.full((len(pairs), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for row, (ctx, tgt) in enumerate(pairs):  # left padding: every target ends at the last column
            seq = ctx + tgt
            input_ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, width - len(seq) :] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if self._accepts_position_ids:
            kwargs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        if self._accepts_logits_to_keep:
            kwargs["logits_to_keep"] = max_target + 1
        logits = self.model(**kwargs).logits
        logits = logits[:, -(max_target + 1) : -1, :].float()  # position p predicts token p + 1
        target_ids = input_ids[:, -max_target:]
        token_logps = torch.gather(F.log_softmax(logits, dim=-1), 2, target_ids.unsqueeze(-1)).squeeze(-1)
        values = []
        for row, (_, tgt) in enumerate(pairs):
            row_logps = token_logps[row, max_target - len(tgt) :]
            value = row_logps.sum() if self.reduction == "sum" else row_logps.mean()
            values.append(value.item())
        return values
