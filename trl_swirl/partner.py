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
* pairs are scored in left-padded batches sorted by length (`batch_size` pairs per batch), under `no_grad`, with the
  partner in eval mode; the padding token is irrelevant (it is masked), so a tokenizer without one works;
* identical (context, target) pairs are scored once; with `share_prefix` (the default) contexts that start with the
  same tokens, as the completions of one GRPO group do (they share the rendered prompt), are grouped and their common
  prefix goes through the partner once per batch: its key/value cache serves every member, so each batch takes two
  forward passes and the prompt's tokens are computed once per group instead of once per completion;
* truncation: when context + target exceeds `max_length` (default: the partner's own limit), the context is
  truncated from the left; the target is never truncated: a target that does not fit with at least one context
  token raises a `ValueError`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer

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


def _has_windowed_attention(model) -> bool:
    """Whether any attention layer masks by index distance (sliding windows, chunked attention)."""
    config = getattr(model, "config", None)
    if config is None:
        return False
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(config, "attention_chunk_size", None):
        return True
    if getattr(config, "sliding_window", None) is None or getattr(config, "use_sliding_window", True) is False:
        return False
    layer_types = getattr(config, "layer_types", None)
    return layer_types is None or any("sliding" in str(t) or "chunk" in str(t) for t in layer_types)


_ATTENTION_LAYER_TYPES = {"full_attention", "sliding_attention", "chunked_attention", "attention"}


def _has_recurrent_layers(model) -> bool:
    """Whether the model has layers other than attention (Mamba, linear attention, short convolutions...): their
    cached state would run over padding, so the shared prefix could not be reused exactly."""
    config = getattr(model, "config", None)
    if config is None:
        return False
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("layer_types", "layers_block_type"):
        types = getattr(config, name, None)
        if types and any(str(t) not in _ATTENTION_LAYER_TYPES for t in types):
            return True
    return any("mamba" in key or "ssm" in key for key in config.to_dict())


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
        share_prefix (`bool`, defaults to `True`):
            Run a prefix that several contexts share (a GRPO group's prompt) through the partner once and reuse its
            key/value cache. Same rewards up to float rounding; needs a forward that takes a cache (`cache` or
            `past_key_values`) and `position_ids` (otherwise whole sequences are scored).
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
        share_prefix: bool = True,
        sync_forward_calls: bool = False,
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
        self._accepts_use_cache = "use_cache" in params
        self.share_prefix = share_prefix
        self._windowed = _has_windowed_attention(model)
        self.sync_forward_calls = sync_forward_calls
        #: called with `last_stats` after every scoring call (the trainer logs them)
        self.on_scored: Callable[[dict[str, int]], None] | None = None
        self._use_shared_prefix = share_prefix and self._supports_shared_prefix(params)
        self.last_stats: dict[str, int] = {}

    def _supports_shared_prefix(self, params: set[str]) -> bool:
        # transformers renamed the forward's `past_key_values` to `cache` (5.x); take whichever the model has
        self._cache_argument = next((name for name in ("cache", "past_key_values") if name in params), None)
        needed = {
            "cache": self._cache_argument,
            "position_ids": "position_ids" in params,
            "use_cache": "use_cache" in params,
        }
        missing = [name for name, ok in needed.items() if not ok]
        peft_config = getattr(self.model, "peft_config", None) or {}
        reason = None
        if missing:
            reason = f"its forward takes no {' or '.join(missing)}"
        elif any(getattr(c, "is_prompt_learning", False) for c in peft_config.values()):
            reason = "it has a prompt-learning adapter"
        elif _has_recurrent_layers(self.model):
            reason = (
                "it has recurrent layers (state-space, linear attention or convolution), whose state does not carry "
                "over padding exactly"
            )
        if reason is not None:
            logger.info("The partner scores whole sequences (no shared-prefix cache): %s.", reason)
            return False
        return True

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
        """Reduced (unclipped) log-probabilities of each target id list given its context id list.

        Identical pairs are scored once. With `share_prefix`, contexts that begin with the same tokens (the rows of a
        GRPO group share their whole prompt) are grouped, and each group's common prefix goes through the partner once
        per batch: its key/value cache is reused by every member's remaining tokens. Within a batch, rows are split
        into forward passes of similar length where that saves at least an eighth of the batch's tokens in padding
        per extra pass. `last_stats` records the work done: real and padded tokens fed, and forward passes.

        The passes are planned before the first one runs; with `sync_forward_calls`, the ranks agree on the largest
        number of passes and the others pad theirs with one-token passes, so a partner sharded with ZeRO-3, whose every
        forward pass is a collective, sees the same number of passes on every rank.
        """
        stats = dict.fromkeys(("unique_pairs", "tokens", "computed_tokens", "padded_tokens", "forward_calls"), 0)
        stats["pairs"] = len(pairs)
        self.last_stats = stats
        if not pairs and not self.sync_forward_calls:
            return []
        index: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
        unique: list[tuple[list[int], list[int]]] = []
        slot = []
        for ctx, tgt in pairs:
            key = (tuple(ctx), tuple(tgt))
            if key not in index:
                index[key] = len(unique)
                unique.append((list(ctx), list(tgt)))
            slot.append(index[key])
        length = [len(c) + len(t) for c, t in unique]
        stats["unique_pairs"], stats["tokens"] = len(unique), sum(length)
        if self._use_shared_prefix:
            groups = shared_prefix_groups([ctx for ctx, _ in unique])
        else:
            groups = [(0, [i]) for i in range(len(unique))]
        # length-sorted batches: groups by their longest member, members by length
        groups.sort(key=lambda g: max(length[i] for i in g[1]), reverse=True)
        rows = [(i, p) for p, members in groups for i in sorted(members, key=lambda i: -length[i])]
        batch_size = self.batch_size or max(1, len(rows))
        plans = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            plans.append(([i for i, _ in chunk], self._plan([unique[i] for i, _ in chunk], [p for _, p in chunk])))
        passes = sum(plan.passes for _, plan in plans)
        device = self.device or model_device(self.model)
        values: list[float] = [0.0] * len(unique)
        with contextlib.ExitStack() as stack:
            if self.offload:
                self.model.to(device)
                stack.callback(self.model.to, "cpu")
            stack.enter_context(_active_adapter(self.model, self.adapter_name))
            stack.enter_context(_eval_mode(self.model))
            all_passes = self._agree_on_passes(passes, device) if self.sync_forward_calls else passes
            for members, plan in plans:
                scores = self._run(plan, [unique[i] for i in members], device, stats)
                for i, value in zip(members, scores):
                    values[i] = value
            for _ in range(all_passes - passes):
                self._padding_pass(device, stats)
        if self.offload and device.type == "cuda":
            torch.cuda.empty_cache()
        if self.on_scored is not None:
            self.on_scored(stats)
        return [values[j] for j in slot]

    def _plan(self, pairs, prefix_lengths) -> _Plan:
        """How one batch is scored: whole sequences in length buckets, or the groups' prefixes in one pass and then
        the rest of every row in length buckets. Rows of one group are neighbours in `pairs`."""
        total = sum(len(c) + len(t) for c, t in pairs)
        group_of_row, prefixes = [], []
        for (ctx, _), p in zip(pairs, prefix_lengths):
            if not group_of_row or p == 0 or (p, ctx[:p]) != (group_of_row[-1][1], prefixes[-1]):
                prefixes.append(ctx[:p])
            group_of_row.append((len(prefixes) - 1, p))
        counts = [0] * len(prefixes)
        for g, _ in group_of_row:
            counts[g] += 1
        saved = sum((n - 1) * len(prefix) for n, prefix in zip(counts, prefixes))
        if saved * 8 >= total:  # enough shared to pay for the extra forward pass
            # a row without a group puts its context in the prefix pass, as far as that does not widen the pass
            longest = max(len(prefix) for prefix in prefixes)
            for row, ((ctx, _), (group, p)) in enumerate(zip(pairs, group_of_row)):
                if p == 0:
                    p = min(len(ctx) - 1, longest)
                    prefixes[group] = ctx[:p]
                    group_of_row[row] = (group, p)
            if all(prefixes):  # (a one-token context leaves nothing for the prefix pass)
                rests = [ctx[p:] + tgt for (ctx, tgt), (_, p) in zip(pairs, group_of_row)]
                return _Plan(length_buckets([len(r) for r in rests]), group_of_row, prefixes)
        return _Plan(length_buckets([len(c) + len(t) for c, t in pairs]))

    def _run(self, plan: _Plan, pairs, device, stats) -> list[float]:
        values: list[float] = [0.0] * len(pairs)
        if plan.prefixes is None:
            for bucket in plan.buckets:
                for row, value in zip(bucket, self._score_full([pairs[r] for r in bucket], device, stats)):
                    values[row] = value
        else:
            for row, value in self._score_shared(pairs, plan, device, stats):
                values[row] = value
        return values

    def _agree_on_passes(self, passes: int, device) -> int:
        """The largest number of forward passes any rank planned (this rank's own when not distributed)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return passes
        backend = dist.get_backend()
        count = torch.tensor([passes], dtype=torch.long, device=device if backend == "nccl" else "cpu")
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return int(count.item())

    def _padding_pass(self, device, stats) -> None:
        """A one-token forward pass whose output is discarded: it only takes part in a sharded model's collectives."""
        ids = torch.full((1, 1), self._pad_id, dtype=torch.long, device=device)
        mask = torch.ones_like(ids)
        self.model(**self._model_kwargs(ids, mask, torch.zeros_like(ids), 1, use_cache=False))
        stats["forward_calls"] += 1
        stats["padding_passes"] = stats.get("padding_passes", 0) + 1

    def _model_kwargs(self, input_ids, attention_mask, position_ids, logits_to_keep, use_cache) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._accepts_use_cache:
            kwargs["use_cache"] = use_cache
        if self._accepts_position_ids:
            kwargs["position_ids"] = position_ids
        if self._accepts_logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        return kwargs

    def _reduce(self, logits, pairs, max_target: int) -> list[float]:
        """Reduce the target tokens' log-probabilities when every row's target ends at the last column."""
        # position p predicts token p + 1: the last max_target + 1 positions but the very last
        return self._reduce_rows(logits[:, -(max_target + 1) : -1, :], pairs, [max_target - len(t) for _, t in pairs])

    def _count(self, stats, attention_mask) -> None:
        stats["computed_tokens"] += int(attention_mask.sum())
        stats["padded_tokens"] += attention_mask.numel()
        stats["forward_calls"] += 1

    def _score_full(self, pairs, device, stats) -> list[float]:
        """One forward pass over whole sequences, left-padded so that every target ends at the last column."""
        width = max(len(c) + len(t) for c, t in pairs)
        max_target = max(len(t) for _, t in pairs)
        input_ids, attention_mask = _padded([c + t for c, t in pairs], width, self._pad_id)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = self._model_kwargs(input_ids, attention_mask, position_ids, max_target + 1, use_cache=False)
        logits = self.model(**kwargs).logits
        self._count(stats, attention_mask)
        return self._reduce(logits, pairs, max_target)

    def _score_shared(self, pairs, plan: _Plan, device, stats):
        """The groups' prefixes in one forward pass (left-padded, cache kept), then each row's remaining context and
        target on top of a copy of its group's cache (padded between prefix and rest, so that targets end at the last
        column). Yields (row, value)."""
        group_of_row, prefixes = plan.group_of_row, plan.prefixes
        prefix_ids, prefix_mask = _padded(prefixes, max(len(p) for p in prefixes), self._pad_id)
        prefix_ids, prefix_mask = prefix_ids.to(device), prefix_mask.to(device)
        prefix_positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(**self._model_kwargs(prefix_ids, prefix_mask, prefix_positions, 1, use_cache=True))
        self._count(stats, prefix_mask)
        prefix_cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        del out
        if not _PrefixCacheView.supports(prefix_cache):
            kinds = sorted({type(layer).__name__ for layer in getattr(prefix_cache, "layers", None) or []})
            raise RuntimeError(
                f"The partner ({type(self.model).__name__}) returned {type(prefix_cache).__name__}"
                f"{' with ' + ', '.join(kinds) if kinds else ''}, not a cache of attention layers that the shared "
                "prefix can reuse exactly. Set `partner_share_prefix=False` (or `share_prefix=False`)."
            )
        rests = [ctx[p:] + tgt for (ctx, tgt), (_, p) in zip(pairs, group_of_row)]
        for b, bucket in enumerate(plan.buckets):
            group_index = torch.tensor([group_of_row[r][0] for r in bucket], dtype=torch.long, device=device)
            # each layer reads its rows' prefix keys/values and stores nothing: the cache keeps one copy per group
            cache = _PrefixCacheView(prefix_cache, group_index)
            bucket_pairs = [pairs[r] for r in bucket]
            bucket_rests = [rests[r] for r in bucket]
            width = max(len(rest) for rest in bucket_rests)
            if self._windowed:
                # right padding keeps each row's real tokens contiguous after its (left-padded) prefix, so index
                # distances equal position distances, as sliding-window and chunked attention masks assume
                rest_ids, rest_mask = _padded(bucket_rests, width, self._pad_id, left=False)
                # from each row's last context token to its second-to-last target token
                first = [len(rest) - len(tgt) - 1 for rest, (_, tgt) in zip(bucket_rests, bucket_pairs)]
                keep = width - min(first)
            else:
                # padding between prefix and rest, so that every target ends at the last column
                rest_ids, rest_mask = _padded(bucket_rests, width, self._pad_id)
                keep = max(len(tgt) for _, tgt in bucket_pairs) + 1
            rest_ids, rest_mask = rest_ids.to(device), rest_mask.to(device)
            attention_mask = torch.cat([prefix_mask.index_select(0, group_index), rest_mask], dim=1)
            starts = torch.tensor([group_of_row[r][1] for r in bucket], dtype=torch.long, device=device)
            position_ids = starts[:, None] + (rest_mask.cumsum(-1) - 1).clamp(min=0)  # right padding repeats the last
            kwargs = self._model_kwargs(rest_ids, attention_mask, position_ids, keep, use_cache=True)
            kwargs[self._cache_argument] = cache
            logits = self.model(**kwargs).logits
            self._count(stats, rest_mask)
            del cache
            if self._windowed:
                values = self._reduce_rows(logits[:, -keep:, :], bucket_pairs, [f - (width - keep) for f in first])
            else:
                values = self._reduce(logits, bucket_pairs, keep - 1)
            yield from zip(bucket, values)

    def _reduce_rows(self, logits, pairs, starts: list[int]) -> list[float]:
        """Each row's reduced target log-probability, from the logits at `starts[row]` onwards (one per target
        token)."""
        values = []
        for row, ((_, target), start) in enumerate(zip(pairs, starts)):
            row_logits = logits[row, start : start + len(target), :].float()
            target_ids = torch.tensor(target, device=logits.device)[:, None]
            token_logps = torch.gather(F.log_softmax(row_logits, dim=-1), 1, target_ids).squeeze(-1)
            values.append((token_logps.sum() if self.reduction == "sum" else token_logps.mean()).item())
        return values


class _PrefixCacheView(Cache):
    """A read-only view of the groups' prefix cache for one batch of rows.

    The prefix pass leaves one cache entry per group. Expanding it to one copy per row (as `reorder_cache` does)
    and letting the rows' own keys and values accumulate in it would hold rows x (prefix + rest) keys and values for
    every layer at once, a multiple of what scoring whole sequences needs (for a 7B model with full multi-head
    attention and 1024-token image states, tens of GB). Here each layer's `update` returns its rows' prefix states
    (gathered by group) followed by the new ones, and stores nothing, so they are freed with the layer's activations;
    the mask sizes come from the prefix layers, unchanged. Only caches of attention layers qualify (`supports`).
    """

    _LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)

    def __init__(self, prefix: Cache, rows: torch.Tensor):
        super().__init__(layers=prefix.layers)
        self.rows = rows

    @classmethod
    def supports(cls, cache) -> bool:
        layers = getattr(cache, "layers", None)
        return bool(layers) and all(type(layer) in cls._LAYERS for layer in layers)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        keys = layer.keys.index_select(0, self.rows)
        values = layer.values.index_select(0, self.rows)
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)


class _Plan(NamedTuple):
    """How one batch is scored: `buckets` of row indices, one forward pass each; with `prefixes` (one per group) and
    `group_of_row` (group index, prefix length), one more pass first for the prefixes."""

    buckets: list[list[int]]
    group_of_row: list[tuple[int, int]] | None = None
    prefixes: list[list[int]] | None = None

    @property
    def passes(self) -> int:
        return len(self.buckets) + (self.prefixes is not None)


def length_buckets(lengths: Sequence[int], overhead: float | None = None) -> list[list[int]]:
    """Split rows into forward passes of similar length: the partition of the length-sorted rows that minimises the
    padded tokens plus `overhead` tokens per extra pass (default: an eighth of the real tokens, so a split must save
    that much padding). Returns lists of row indices, longest rows first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    if n == 0:
        return []
    overhead = sum(lengths) / 8 if overhead is None else overhead
    cost = [0.0] + [float("inf")] * n  # cost[j]: best cost of the first j sorted rows
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # last pass: sorted rows i .. j-1, padded to the longest, lengths[order[i]]
            c = cost[i] + (j - i) * lengths[order[i]] + (overhead if i > 0 else 0.0)
            if c < cost[j]:
                cost[j], start[j] = c, i
    buckets = []
    j = n
    while j > 0:
        buckets.append([order[k] for k in range(start[j], j)])
        j = start[j]
    return buckets[::-1]


def _padded(
    sequences: Sequence[list[int]], width: int, pad_id: int, left: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask of `sequences` padded to `width`, on the left (default) or on the right."""
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            columns = slice(width - len(seq), width) if left else slice(0, len(seq))
            input_ids[row, columns] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, columns] = 1
    return input_ids, attention_mask


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def shared_prefix_groups(contexts: Sequence[Sequence[int]], window: int = 256) -> list[tuple[int, list[int]]]:
    """Partition contexts into groups that share a token prefix, maximising the tokens saved.

    Returns `(prefix_length, indices)` per group; a group of one has prefix length 0 (nothing shared). A group's prefix
    is shorter than each member's context, so every member keeps at least its last context token, whose logits predict
    the target's first token. Contexts are sorted, so a group is a run of neighbours; the partition of the sorted list
    that saves the most tokens, sum over groups of (size - 1) * prefix length, is found exactly by dynamic programming
    over runs of at most `window` neighbours.
    """
    order = sorted(range(len(contexts)), key=lambda i: list(contexts[i]))
    n = len(order)
    if n == 0:
        return []
    cap = [len(contexts[i]) - 1 for i in order]  # longest usable prefix of each context
    adjacent = [
        _common_prefix_length(contexts[order[k]], contexts[order[k + 1]]) for k in range(n - 1)
    ]  # adjacent[k]: shared by sorted contexts k and k + 1
    best = [0] * (n + 1)  # best[j]: most tokens saved on the first j sorted contexts
    split: list[tuple[int, int]] = [(0, 0)] * (n + 1)  # (start of the last run, its prefix length)
    for j in range(1, n + 1):
        best[j], split[j] = best[j - 1], (j - 1, 0)  # context j-1 alone
        prefix = cap[j - 1]
        for i in range(j - 2, max(-1, j - 1 - window), -1):  # run i .. j-1
            prefix = min(prefix, adjacent[i], cap[i])
            if prefix <= 0:
                break
            saved = best[i] + (j - 1 - i) * prefix
            if saved > best[j]:
                best[j], split[j] = saved, (i, prefix)
    groups = []
    j = n
    while j > 0:
        i, prefix = split[j]
        groups.append((prefix, [order[k] for k in range(i, j)]))
        j = i
    groups.reverse()
    return groups
