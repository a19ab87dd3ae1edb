"""SWIRL on images: image states as tokens, FWM phases that generate exactly one image, image metrics, and the loop.

States are images written by an [`~trl_swirl.codecs.ImageCodec`] as `"<boi><img_3>...<img_9><eoi>"`; actions are
text. Both models are token-based causal LMs (unified autoregressive VLMs such as Liquid, Chameleon, Janus or Emu3,
or the tiny ones built here) whose tokenizer holds the codec's tokens (`codec.add_to_tokenizer`). The SWIRL pieces
are those of the textual case, unchanged:

* **templates**: the default ones. The FWM's scoring context is
  `"State:\\n{state}\\nAction:\\n{action}\\nNext state:\\n"` and its target the next state's full text
  `<boi>...<eoi>` (+ EOS); the IDM reads both images and writes the action.
* **FWM generation (phase `fwm`)**: the *generation* prompt is the context followed by `<boi>`
  ([`fwm_generation_prompt`]); every token but the image tokens is suppressed ([`image_generation_kwargs`]: the
  GenerationConfig's `suppress_tokens` for transformers, `allowed_token_ids` in vLLM's `SamplingParams` with
  `use_vllm=True`), and `max_completion_length == codec.num_tokens`. EOS cannot be sampled, so every completion is
  exactly `num_tokens` image tokens: one well-formed image, by construction rather than by rejection.
  [`ImageCompletionDecoder`] (the `SwirlTrainer(completion_decoder=...)` hook) turns the completion's ids into the
  state text `<boi>...<eoi>` that the partner IDM reads (the image tokens are special tokens, which TRL's
  `skip_special_tokens=True` decode would drop). GRPO's log-probabilities are those of the image tokens under the
  policy's full softmax (the suppression only shapes sampling).
* **The partner on images** is the generic `PartnerReward`: in phase `fwm` the frozen IDM scores the row's action
  given (source image, generated image); in phase `idm` the frozen FWM scores the row's target image
  (`<boi>` + tokens + `<eoi>` + EOS) given (source image, generated action). IDM phases suppress the image tokens
  ([`text_generation_kwargs`]) so actions are text.
* **Metrics** ([`image_metrics`], [`evaluate_visual`]): image-token accuracy, exact image match, PSNR, L1 and SSIM
  between predicted and true next images, CLIP image similarity when a CLIP model is given; for the IDM, action
  exact match / token F1 and, with an environment, action consistency; FWM multiple-choice action selection.

Supported model combinations: token-based models for both roles (the FWM must emit image tokens; the IDM reads
them). An IDM that is a native pixel-reading VLM (TRL's image prompts) is not wired in: the partner reward scores
text contexts, and a pixel IDM would need image inputs in the partner's forward pass too.

[`run_visual_swirl`] runs the loop (warm start, then K x (label -> FWM phase -> IDM phase)), evaluating every phase;
`examples/vlm_aurora.py` and `benchmarks/swirl_visual.py` drive it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .codecs import ImageCodec
from .templates import DEFAULT_FWM_TEMPLATE, DEFAULT_IDM_TEMPLATE, SwirlTemplates

logger = logging.getLogger(__name__)

__all__ = [
    "ImageCompletionDecoder",
    "VisualLoopConfig",
    "action_metrics",
    "build_visual_models",
    "build_visual_tokenizer",
    "clip_image_similarity",
    "edit_splits",
    "edit_transitions",
    "evaluate_visual",
    "fwm_generation_prompt",
    "generate_actions",
    "generate_images",
    "image_generation_kwargs",
    "image_metrics",
    "image_phase_config",
    "label_pairs",
    "load_edit_dataset",
    "run_visual_swirl",
    "save_strip",
    "text_generation_kwargs",
    "visual_trainer",
]

PSNR_CAP_DB = 60.0  # PSNR of an exact match (infinite) is reported as this value


# ------------------------------------------------------------------------------------------------ tokenizer/models
def strip_images(text: str, codec: ImageCodec) -> str:
    """`text` with every `<boi>...<eoi>` span replaced by a space (the words around images)."""
    pattern = re.escape(codec.boi_token) + r".*?" + re.escape(codec.eoi_token)
    return re.sub(pattern, " ", text, flags=re.S)


def build_visual_tokenizer(texts, codec: ImageCodec, **kwargs):
    """A word-level tokenizer over the words of `texts` (images removed) plus the codec's tokens (special)."""
    from .tiny import build_word_tokenizer

    tokenizer = build_word_tokenizer([strip_images(t, codec) for t in texts], **kwargs)
    codec.add_to_tokenizer(tokenizer)
    return tokenizer


def build_visual_models(tokenizer, codec: ImageCodec, *, hidden_size: int = 64, num_layers: int = 2, seed: int = 0,
                        max_position_embeddings: int | None = None):
    """Two tiny Llama-style causal LMs (FWM, IDM) over `tokenizer`, long enough for two images and their text."""
    from .tiny import build_tiny_causal_lm

    if max_position_embeddings is None:
        max_position_embeddings = max(512, 2 ** math.ceil(math.log2(2 * codec.num_tokens + 96)))
    kwargs = dict(hidden_size=hidden_size, num_hidden_layers=num_layers,
                  max_position_embeddings=max_position_embeddings)
    fwm = build_tiny_causal_lm(tokenizer, seed=seed, **kwargs)
    idm = build_tiny_causal_lm(tokenizer, seed=seed + 1, **kwargs)
    return fwm, idm


# ---------------------------------------------------------------------------------------------------- generation
def _vocab_size(tokenizer, vocab_size: int | None) -> int:
    return max(len(getattr(tokenizer, "tokenizer", tokenizer)), vocab_size or 0)


def image_generation_kwargs(codec: ImageCodec, tokenizer, *, vocab_size: int | None = None,
                            backend: str = "transformers") -> dict:
    """Generation kwargs (for `SwirlConfig.generation_kwargs`) that allow only the image tokens.

    `backend="transformers"`: `{"suppress_tokens": [every other id]}` (GenerationConfig), over
    `max(len(tokenizer), vocab_size)` ids: pass the model's `config.vocab_size` when its embedding matrix is larger
    than the tokenizer. `backend="vllm"`: `{"allowed_token_ids": [image ids]}` (vLLM's `SamplingParams`).
    With `max_completion_length = codec.num_tokens` every completion is then exactly one image's tokens."""
    allowed = codec.image_token_ids(tokenizer)
    if backend == "vllm":
        return {"allowed_token_ids": list(allowed)}
    if backend != "transformers":
        raise ValueError(f"`backend` must be 'transformers' or 'vllm', got {backend!r}.")
    allowed_set = set(allowed)
    return {"suppress_tokens": [i for i in range(_vocab_size(tokenizer, vocab_size)) if i not in allowed_set]}


def text_generation_kwargs(codec: ImageCodec, tokenizer, *, vocab_size: int | None = None,
                           backend: str = "transformers") -> dict:
    """Generation kwargs that forbid the codec's tokens (image tokens and markers), for text completions (actions).
    vLLM: `allowed_token_ids` = every other id."""
    banned = set(codec.image_token_ids(tokenizer)) | set(codec.marker_token_ids(tokenizer))
    if backend == "vllm":
        return {"allowed_token_ids": [i for i in range(_vocab_size(tokenizer, vocab_size)) if i not in banned]}
    if backend != "transformers":
        raise ValueError(f"`backend` must be 'transformers' or 'vllm', got {backend!r}.")
    return {"suppress_tokens": sorted(banned)}


class ImageCompletionDecoder:
    """`SwirlTrainer(completion_decoder=...)` hook: the ids of a generated image completion -> its state text.

    The image tokens among the ids are written as `<boi><img_i>...<eoi>` (no spaces), the text form of every state.
    With the generation constraints of [`image_generation_kwargs`] there are exactly `codec.num_tokens` of them; a
    completion generated without the constraints may hold another count (`strict=True` raises then)."""

    def __init__(self, codec: ImageCodec, tokenizer, strict: bool = False):
        self.codec = codec
        self.strict = strict
        self._lookup = {tid: code for code, tid in enumerate(codec.image_token_ids(tokenizer))}

    def codes(self, ids: Sequence[int]) -> list[int]:
        return [self._lookup[int(i)] for i in ids if int(i) in self._lookup]

    def __call__(self, ids: Sequence[int]) -> str:
        codes = self.codes(ids)
        if len(codes) == self.codec.num_tokens:
            return self.codec.codes_to_text(codes)
        if self.strict:
            raise ValueError(f"The completion holds {len(codes)} image tokens, expected {self.codec.num_tokens}.")
        return self.codec.boi_token + "".join(self.codec.token(c) for c in codes) + self.codec.eoi_token


def fwm_generation_prompt(templates: SwirlTemplates, codec: ImageCodec, *, state: str, action: str,
                          history=None) -> str:
    """The FWM's generation prompt: its scoring context (the FWM template) followed by `<boi>`."""
    return templates.prompt_text("fwm", state=state, action=action, history=history) + codec.boi_token


def image_phase_config(args, codec: ImageCodec, tokenizer, *, vocab_size: int | None = None, **overrides):
    """A copy of a `SwirlConfig` set up for images in its phase (after `overrides`, e.g. `phase="fwm"`).

    Phase `fwm`: `max_completion_length = codec.num_tokens` and the image-only generation kwargs. Phase `idm`: the
    codec's tokens suppressed. Existing `generation_kwargs` are kept (ours win on the same keys)."""
    from .loop import phase_config

    args = phase_config(args, **overrides)
    backend = "vllm" if args.use_vllm else "transformers"
    if args.phase == "fwm":
        if args.prompt_format != "text":
            raise ValueError("Image FWM phases need `prompt_format='text'` (the generation prompt ends with <boi>).")
        extra = image_generation_kwargs(codec, tokenizer, vocab_size=vocab_size, backend=backend)
        args.max_completion_length = codec.num_tokens
    else:
        extra = text_generation_kwargs(codec, tokenizer, vocab_size=vocab_size, backend=backend)
    args.generation_kwargs = {**(args.generation_kwargs or {}), **extra}
    return args


def visual_trainer(policy, partner, dataset, args, codec: ImageCodec, tokenizer, *, partner_tokenizer=None,
                   **kwargs):
    """A `SwirlTrainer` for an image phase (`args.phase`): the config from [`image_phase_config`] and, in phase
    `fwm`, a `prompt` column ending with `<boi>` and the [`ImageCompletionDecoder`] hook."""
    from .trainer import SwirlTrainer

    vocab = getattr(getattr(policy, "config", None), "vocab_size", None)
    args = image_phase_config(args, codec, tokenizer, vocab_size=vocab)
    decoder = None
    if args.phase == "fwm":
        templates = SwirlTemplates(args.fwm_template, args.idm_template, args.prompt_format)
        s, a = args.state_column, args.action_column
        h = args.history_column

        def add_prompt(row):
            return {"prompt": fwm_generation_prompt(templates, codec, state=row[s], action=row[a], history=row.get(h))}

        dataset = dataset.map(add_prompt)
        decoder = ImageCompletionDecoder(codec, tokenizer)
    return SwirlTrainer(
        model=policy, partner_model=partner, args=args, train_dataset=dataset, processing_class=tokenizer,
        partner_processing_class=partner_tokenizer, completion_decoder=decoder, **kwargs,
    )


def generate_images(model, tokenizer, codec: ImageCodec, prompts: Sequence[str], *, batch_size: int = 16,
                    do_sample: bool = False, temperature: float = 1.0) -> list[str]:
    """One image per prompt (the FWM's scoring context; `<boi>` is appended), as state text. Greedy unless
    `do_sample`; only image tokens can be generated, exactly `codec.num_tokens` of them."""
    import torch

    from .evaluation import _eval_mode, _left_padding, _model_device

    prompts = [p + codec.boi_token for p in prompts]
    if not prompts:
        return []
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    kwargs = image_generation_kwargs(codec, tokenizer, vocab_size=vocab)
    kwargs.update(max_new_tokens=codec.num_tokens, min_new_tokens=codec.num_tokens, do_sample=do_sample)
    if do_sample:
        kwargs["temperature"] = temperature
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    decoder = ImageCompletionDecoder(codec, tokenizer, strict=True)
    device = _model_device(model)
    outputs: list[str] = []
    with _eval_mode(model), _left_padding(tokenizer) as pad_id:
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=True)
            with torch.no_grad():
                out = model.generate(input_ids=enc["input_ids"].to(device),
                                     attention_mask=enc["attention_mask"].to(device), pad_token_id=pad_id, **kwargs)
            for row in out[:, enc["input_ids"].shape[1] :].tolist():
                outputs.append(decoder(row))
    return outputs


def generate_actions(model, tokenizer, codec: ImageCodec, prompts: Sequence[str], *, max_new_tokens: int = 12,
                     batch_size: int = 32) -> list[str]:
    """One action per prompt (the IDM's prompt), greedy, as text: the codec's tokens cannot be generated, and at
    least one token is (so an IDM never answers with an empty action)."""
    import torch

    from .evaluation import _eval_mode, _left_padding, _model_device

    prompts = list(prompts)
    if not prompts:
        return []
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    kwargs = text_generation_kwargs(codec, tokenizer, vocab_size=vocab)
    kwargs.update(max_new_tokens=max_new_tokens, min_new_tokens=1, do_sample=False, temperature=None, top_p=None,
                  top_k=None)
    device = _model_device(model)
    outputs: list[str] = []
    with _eval_mode(model), _left_padding(tokenizer) as pad_id:
        if getattr(model.generation_config, "eos_token_id", None) is None and tokenizer.eos_token_id is not None:
            kwargs["eos_token_id"] = tokenizer.eos_token_id
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=True)
            with torch.no_grad():
                out = model.generate(input_ids=enc["input_ids"].to(device),
                                     attention_mask=enc["attention_mask"].to(device), pad_token_id=pad_id, **kwargs)
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            outputs.extend(" ".join(t.split()) for t in texts)
    return outputs


def label_pairs(idm, tokenizer, dataset, codec: ImageCodec, templates: SwirlTemplates | None = None, *,
                state_column: str = "state", next_state_column: str = "next_state", action_column: str = "action",
                max_new_tokens: int = 12, batch_size: int = 64):
    """Label every (state, next_state) pair with the IDM's greedy action ([`generate_actions`]); the label becomes
    `action_column` (an existing one is replaced). Rows whose label is blank are dropped."""
    templates = templates or SwirlTemplates()
    prompts = [templates.prompt_text("idm", state=s, next_state=n)
               for s, n in zip(dataset[state_column], dataset[next_state_column])]
    labels = generate_actions(idm, tokenizer, codec, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    if action_column in dataset.column_names:
        dataset = dataset.remove_columns(action_column)
    labelled = dataset.add_column(action_column, labels)
    return labelled.filter(lambda row: bool(row[action_column].strip()))


def action_metrics(predictions: Sequence[str], references: Sequence[str], states: Sequence[str] | None = None,
                   next_states: Sequence[str] | None = None, environment=None) -> dict[str, float]:
    """`exact_match` and `f1` (token F1) of predicted actions (whitespace-normalised, as in `trl_swirl.evaluation`);
    with an environment, `consistency` (executing the predicted action on the state gives the observed next state)
    and `invalid_rate` (the environment rejects the predicted action)."""
    from .evaluation import exact_match, token_f1

    out = {"exact_match": exact_match(predictions, references), "f1": token_f1(predictions, references)}
    if environment is not None and states is not None and next_states is not None and len(predictions):
        consistent = invalid = 0
        for state, pred, nxt in zip(states, predictions, next_states):
            try:
                consistent += environment.apply(state, pred) == nxt
            except ValueError:
                invalid += 1
        out["consistency"] = consistent / len(predictions)
        out["invalid_rate"] = invalid / len(predictions)
    return out


# -------------------------------------------------------------------------------------------------------- metrics
def _arrays(texts: Sequence[str], codec: ImageCodec):
    import numpy as np

    return [np.asarray(codec.decode(t).convert("RGB"), dtype=np.float64) for t in texts]


def _ssim(a, b) -> float | None:
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return None
    side = min(a.shape[0], a.shape[1])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        return None
    return float(structural_similarity(a, b, data_range=255.0, channel_axis=-1, win_size=win))


def image_metrics(predictions: Sequence[str], references: Sequence[str], codec: ImageCodec) -> dict[str, float]:
    """Compare predicted and true images, both as state text.

    * `valid_rate`: predictions that are a well-formed image of the codec (an invalid one scores 0 token accuracy,
      no exact match, and is compared as a mid-gray image for the pixel metrics);
    * `token_accuracy`: fraction of positions whose image token is right; `exact_match`: every token right;
    * `psnr` (dB, per image, an exact match counts as 60), `l1` (mean absolute pixel error, pixels in [0, 1]) and
      `ssim` (scikit-image, 7x7 windows; only when scikit-image is installed), on decoded RGB images."""
    import numpy as np

    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
    if not predictions:
        return {}
    valid, token_acc, exact, psnr, l1, ssim = [], [], [], [], [], []
    ref_arrays = _arrays(references, codec)
    for pred, ref, ref_array in zip(predictions, references, ref_arrays):
        ref_codes = codec.text_to_codes(ref)
        try:
            pred_codes = codec.text_to_codes(pred)
        except ValueError:
            pred_codes = None
        valid.append(pred_codes is not None)
        if pred_codes is None:
            pred_array = np.full_like(ref_array, 127.5)
            token_acc.append(0.0)
            exact.append(0.0)
        else:
            pred_array = np.asarray(codec.decode_codes(pred_codes).convert("RGB"), dtype=np.float64)
            token_acc.append(sum(p == r for p, r in zip(pred_codes, ref_codes)) / len(ref_codes))
            exact.append(float(pred_codes == ref_codes))
        mse = float(((pred_array - ref_array) ** 2).mean())
        psnr.append(PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10 * math.log10(255.0**2 / mse)))
        l1.append(float(np.abs(pred_array - ref_array).mean() / 255.0))
        s = _ssim(pred_array, ref_array)
        if s is not None:
            ssim.append(s)
    out = {
        "valid_rate": sum(valid) / len(valid),
        "token_accuracy": sum(token_acc) / len(token_acc),
        "exact_match": sum(exact) / len(exact),
        "psnr": sum(psnr) / len(psnr),
        "l1": sum(l1) / len(l1),
    }
    if ssim:
        out["ssim"] = sum(ssim) / len(ssim)
    return out


def clip_image_similarity(predicted, references, model="openai/clip-vit-base-patch32", processor=None, *,
                          batch_size: int = 16) -> float:
    """Mean cosine similarity of CLIP image embeddings (CLIP-I) between predicted and reference PIL images (decode
    state texts with `codec.decode` first). `model` is a `CLIPModel` or a Hub id / folder (downloaded once);
    `processor` its `CLIPImageProcessor` / `CLIPProcessor` (loaded from `model` when a string). Only the code path is
    tested offline (a tiny random CLIP); no CLIP score is in the committed results."""
    import torch
    from transformers import AutoProcessor, CLIPModel

    if isinstance(model, str):
        processor = processor or AutoProcessor.from_pretrained(model)
        model = CLIPModel.from_pretrained(model, use_safetensors=True)
    if processor is None:
        raise ValueError("Pass the CLIP `processor` with an in-memory `model`.")
    image_processor = getattr(processor, "image_processor", processor)
    predicted, references = list(predicted), list(references)
    if len(predicted) != len(references):
        raise ValueError(f"Got {len(predicted)} predicted but {len(references)} reference images.")
    device = next(model.parameters()).device
    sims = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(predicted), batch_size):
                images = predicted[start : start + batch_size] + references[start : start + batch_size]
                pixels = image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
                feats = model.get_image_features(pixel_values=pixels["pixel_values"].to(device))
                feats = getattr(feats, "pooler_output", feats)
                feats = torch.nn.functional.normalize(feats.float(), dim=-1)
                n = len(images) // 2
                sims.extend((feats[:n] * feats[n:]).sum(-1).tolist())
    finally:
        model.train(was_training)
    return sum(sims) / len(sims) if sims else float("nan")


def evaluate_visual(fwm, fwm_tokenizer, idm, idm_tokenizer, dataset, codec: ImageCodec, *,
                    templates: SwirlTemplates | None = None, environment=None, num_choices: int = 4,
                    batch_size: int = 32, max_new_tokens: int = 16, clip_model=None, clip_processor=None,
                    seed: int = 0, return_predictions: bool = False) -> dict[str, Any]:
    """Evaluate an image FWM and/or an IDM on transitions (`state`, `action`, `next_state`, images as state text).

    FWM (greedy, image tokens only): `fwm_` + the keys of [`image_metrics`], `fwm_clip_similarity` with a CLIP model,
    and, with an environment and `num_choices > 1`, `fwm_action_selection_accuracy` (the FWM ranks the true action
    against distractors by the likelihood of the observed next image). IDM (greedy, [`generate_actions`]):
    `idm_exact_match`, `idm_f1` (token F1 of the action) and, with an environment, `idm_consistency` /
    `idm_invalid_rate` ([`action_metrics`]). With `return_predictions`, also `predictions`:
    `{"fwm": [...], "idm": [...]}`."""
    from .evaluation import _action_selection_accuracy

    templates = templates or SwirlTemplates(DEFAULT_FWM_TEMPLATE, DEFAULT_IDM_TEMPLATE)
    states, actions, next_states = (list(dataset[c]) for c in ("state", "action", "next_state"))
    results: dict[str, Any] = {}
    predictions: dict[str, list] = {}
    if fwm is not None:
        prompts = [templates.prompt_text("fwm", state=s, action=a) for s, a in zip(states, actions)]
        images = generate_images(fwm, fwm_tokenizer, codec, prompts, batch_size=batch_size)
        predictions["fwm"] = images
        results.update({f"fwm_{k}": v for k, v in image_metrics(images, next_states, codec).items()})
        if clip_model is not None:
            results["fwm_clip_similarity"] = clip_image_similarity(
                [codec.decode(t) for t in images], [codec.decode(t) for t in next_states], clip_model, clip_processor
            )
        if environment is not None and num_choices > 1:
            results["fwm_action_selection_accuracy"] = _action_selection_accuracy(
                fwm, fwm_tokenizer, states, actions, next_states, fwm_template=templates.fwm_template,
                environment=environment, num_choices=num_choices, batch_size=batch_size, seed=seed,
            )
    if idm is not None:
        prompts = [templates.prompt_text("idm", state=s, next_state=n) for s, n in zip(states, next_states)]
        inferred = generate_actions(idm, idm_tokenizer, codec, prompts, max_new_tokens=max_new_tokens,
                                    batch_size=batch_size)
        predictions["idm"] = inferred
        metrics = action_metrics(inferred, actions, states, next_states, environment)
        results.update({f"idm_{k}": v for k, v in metrics.items()})
    if return_predictions:
        results["predictions"] = predictions
    return results


def save_strip(rows: Sequence[Sequence[Any]], path: str | os.PathLike, codec: ImageCodec | None = None, *,
               labels: Sequence[str] | None = None, headers: Sequence[str] | None = None, scale: int = 4,
               gap: int = 4) -> str:
    """Save a PNG grid: one row per case, e.g. (source, true next, predicted next, ...), each cell an image or a
    state text (decoded with `codec`; an invalid one is drawn gray). `labels` (one per row) are drawn on the left,
    `headers` (one per column) on top."""
    from PIL import Image, ImageDraw

    def as_image(cell):
        if isinstance(cell, str):
            try:
                return codec.decode(cell)
            except ValueError:
                return Image.new("RGB", codec.image_size, (128, 128, 128))
        return cell.convert("RGB")

    grid = [[as_image(c) for c in row] for row in rows]
    w = max(im.width for row in grid for im in row) * scale
    h = max(im.height for row in grid for im in row) * scale
    label_w = 0
    if labels:
        label_w = 7 * max(len(str(x)) for x in labels) + 2 * gap
    columns = max(len(row) for row in grid)
    top = 14 if headers else 0
    canvas = Image.new("RGB", (label_w + columns * (w + gap) + gap, top + len(grid) * (h + gap) + gap), (96, 96, 96))
    draw = ImageDraw.Draw(canvas)
    for c, header in enumerate(headers or []):
        draw.text((label_w + gap + c * (w + gap), 2), str(header)[: max(1, (w + gap) // 6)], fill=(255, 255, 255))
    for r, row in enumerate(grid):
        y = top + gap + r * (h + gap)
        if labels:
            draw.text((gap, y + h // 2 - 5), str(labels[r]), fill=(255, 255, 255))
        for c, im in enumerate(row):
            canvas.paste(im.resize((w, h), Image.Resampling.NEAREST), (label_w + gap + c * (w + gap), y))
    path = str(path)
    canvas.save(path)
    return path


# ----------------------------------------------------------------------------------------- image-editing datasets
AURORA_COLUMNS = {"input": "input", "instruction": "instruction", "output": "output"}


def _open_image(value, root: str | None):
    """A PIL image from a `datasets` Image value, a PIL image, a path (relative to `root`), bytes or an array."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):  # {"bytes": ..., "path": ...} (an Image feature not decoded)
        if value.get("bytes"):
            import io

            return Image.open(io.BytesIO(value["bytes"]))
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        import io

        return Image.open(io.BytesIO(value))
    if isinstance(value, str):
        path = value if root is None or os.path.isabs(value) else os.path.join(root, value)
        return Image.open(path)
    import numpy as np

    return Image.fromarray(np.asarray(value).astype("uint8"))


def load_edit_dataset(name_or_path: str, *, split: str = "train", config_name: str | None = None,
                      max_rows: int | None = None, streaming: bool | None = None):
    """Load image-editing rows (AURORA format: `input` image, `instruction`, `output` image) as a `Dataset`.

    `name_or_path`: a `save_to_disk` folder (`load_from_disk`; a `DatasetDict` gives its `split`), a parquet file or a
    folder of parquet files, a JSON Lines / CSV file whose image columns hold paths relative to the file, or a Hub id
    (`datasets.load_dataset(name_or_path, config_name, split=split)`, e.g. `McGill-NLP/AURORA`). With `max_rows`,
    a Hub dataset is streamed and only its first `max_rows` rows are read (AURORA is ~28 GB). Relative image paths
    of a JSON/CSV file are resolved by [`edit_transitions`] with `image_root` (the file's folder)."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    path = Path(name_or_path)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
                          or (path / "state.json").exists()):
        dataset = load_from_disk(str(path))
        if isinstance(dataset, DatasetDict):
            dataset = dataset[split]
    elif path.is_dir() and any(path.glob("*.parquet")):
        dataset = load_dataset("parquet", data_files=sorted(str(p) for p in path.glob("*.parquet")), split="train")
    elif path.is_file() and path.suffix == ".parquet":
        dataset = load_dataset("parquet", data_files=str(path), split="train")
    elif path.is_file() and path.suffix in (".json", ".jsonl", ".csv"):
        dataset = load_dataset("csv" if path.suffix == ".csv" else "json", data_files=str(path), split="train")
    elif path.exists():
        raise ValueError(
            f"Cannot read {name_or_path}: expected a `save_to_disk` folder, a parquet file or folder, or a "
            ".json/.jsonl/.csv file."
        )
    else:  # a Hub id
        if streaming is None:
            streaming = max_rows is not None
        dataset = load_dataset(name_or_path, config_name, split=split, streaming=streaming)
        if streaming:
            rows = list(dataset.take(max_rows)) if max_rows is not None else list(dataset)
            dataset = Dataset.from_list(rows)
    if max_rows is not None and len(dataset) > max_rows:
        dataset = dataset.select(range(max_rows))
    return dataset


def edit_transitions(dataset, codec: ImageCodec, *, input_column: str = "input",
                     instruction_column: str = "instruction", output_column: str = "output",
                     image_root: str | None = None):
    """AURORA-format rows -> SWIRL transitions: `state` = the codec's text of the source image, `action` = the
    instruction, `next_state` = the codec's text of the target image (rows with an empty instruction are dropped)."""
    from datasets import Dataset

    missing = [c for c in (input_column, instruction_column, output_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The dataset lacks the column(s) {missing} (it has {dataset.column_names}). AURORA's columns are "
            "'input' (source image), 'instruction' and 'output' (target image); rename yours with "
            "--input_column / --instruction_column / --output_column."
        )
    root = image_root
    rows = {"state": [], "action": [], "next_state": []}
    for row in dataset:
        instruction = " ".join(str(row[instruction_column] or "").split())
        if not instruction:
            continue
        rows["state"].append(codec.encode(_open_image(row[input_column], root)))
        rows["action"].append(instruction)
        rows["next_state"].append(codec.encode(_open_image(row[output_column], root)))
    return Dataset.from_dict(rows)


def edit_splits(transitions, *, labelled_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0):
    """Split edit transitions by row (seeded) into `labelled` (with the instruction), `unlabelled` (without it) and
    `test`; training rows whose (state, next_state) also occurs in `test` are dropped."""
    import random

    from datasets import DatasetDict

    from .data import remove_overlap

    if not 0 < labelled_fraction < 1 or not 0 < test_fraction < 1 or labelled_fraction + test_fraction >= 1:
        raise ValueError("labelled_fraction and test_fraction must be in (0, 1) with a sum below 1.")
    n = len(transitions)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_test, n_lab = max(1, round(n * test_fraction)), max(1, round(n * labelled_fraction))
    if n - n_test - n_lab < 1:
        raise ValueError(f"{n} rows are too few for a test, a labelled and an unlabelled split.")
    test = transitions.select(sorted(order[:n_test]))
    labelled = remove_overlap(transitions.select(sorted(order[n_test : n_test + n_lab])), test)
    unlabelled = remove_overlap(transitions.select(sorted(order[n_test + n_lab :])), test).remove_columns("action")
    return DatasetDict({"labelled": labelled, "unlabelled": unlabelled, "test": test})


# ---------------------------------------------------------------------------------------------------------- loop
@dataclass
class VisualLoopConfig:
    """Options of the visual SWIRL loop (the GRPO options of each phase come from the `SwirlConfig`)."""

    swirl_iterations: int = field(default=2, metadata={"help": "SWIRL iterations (label -> fwm -> idm)."})
    warmstart_epochs: float = field(default=30.0, metadata={"help": "Warm-start SFT epochs (labelled split)."})
    warmstart_learning_rate: float = field(default=1e-3, metadata={"help": "Warm-start SFT learning rate."})
    warmstart_batch_size: int = field(default=16, metadata={"help": "Warm-start SFT batch size."})
    fwm_max_steps: int = field(default=20, metadata={"help": "GRPO steps of each FWM phase."})
    idm_max_steps: int = field(default=20, metadata={"help": "GRPO steps of each IDM phase."})
    fwm_learning_rate: float | None = field(default=None, metadata={"help": "FWM-phase learning rate override."})
    idm_learning_rate: float | None = field(default=None, metadata={"help": "IDM-phase learning rate override."})
    fwm_beta: float | None = field(default=None, metadata={"help": "FWM-phase KL coefficient override."})
    idm_beta: float | None = field(default=None, metadata={"help": "IDM-phase KL coefficient override."})
    label_batch_size: int = field(default=64, metadata={"help": "Batch size of the IDM's labelling pass."})
    label_max_new_tokens: int = field(default=12, metadata={"help": "Longest generated label, in tokens."})
    eval_batch_size: int = field(default=32, metadata={"help": "Batch size of the test-split evaluation."})
    eval_max_new_tokens: int = field(default=12, metadata={"help": "Longest generated action at evaluation."})
    eval_num_choices: int = field(default=4, metadata={"help": "Candidates for FWM action selection (0: off)."})
    eval_max_samples: int | None = field(default=None, metadata={"help": "Evaluate on at most this many rows."})
    eval_every_phase: bool = field(
        default=True, metadata={"help": "Evaluate after every phase (else after the warm start and each IDM phase)."}
    )
    clip_model: str | None = field(default=None, metadata={"help": "CLIP model id/folder for CLIP-I (optional)."})
    tiny_hidden_size: int = field(default=128, metadata={"help": "Hidden size of the tiny default models."})
    tiny_num_layers: int = field(default=2, metadata={"help": "Layers of the tiny default models."})

    def __post_init__(self):
        if self.swirl_iterations < 0:
            raise ValueError(f"`swirl_iterations` must be >= 0, got {self.swirl_iterations}.")
        for name in ("fwm_max_steps", "idm_max_steps", "label_batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")


def is_main_process() -> bool:
    try:
        from accelerate import PartialState

        return PartialState().is_main_process
    except Exception:  # pragma: no cover
        return True


def _write_json(path: Path, obj) -> None:
    if is_main_process():
        path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str), encoding="utf-8")


def run_visual_swirl(splits, codec: ImageCodec, swirl_args, loop_args: VisualLoopConfig | None = None, *,
                     environment=None, fwm: str | None = None, idm: str | None = None,
                     on_phase: Callable[[dict], None] | None = None) -> list[dict]:
    """Run the SWIRL loop on image transitions in `swirl_args.output_dir` and return every phase's record.

    `splits`: a `DatasetDict` with `labelled` (state, action, next_state), `unlabelled` (state, next_state) and
    optionally `test`; states are image texts of `codec`. `fwm` / `idm`: folders of starting models whose tokenizer
    holds the codec's tokens; by default two tiny models are built (and saved in `base/`) over a word-level
    tokenizer of the data's words. The phases: `iter-0-warmstart-{fwm,idm}` (SFT on `labelled`, skipped when
    `warmstart_epochs == 0`), then per iteration `iter-K-labels` (the IDM labels `unlabelled`), `iter-K-fwm` (GRPO,
    the frozen IDM as partner), `iter-K-idm` (GRPO, the frozen new FWM as partner). Records go to `results.json`."""
    from .loop import load_model, phase_config, sft

    loop_args = loop_args or VisualLoopConfig()
    run_dir = Path(swirl_args.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    templates = SwirlTemplates(swirl_args.fwm_template, swirl_args.idm_template, swirl_args.prompt_format)
    s_col, a_col, n_col = swirl_args.state_column, swirl_args.action_column, swirl_args.next_state_column
    if fwm is None or idm is None:
        texts = []  # the words of the actions (the states are images; the templates' words are always added)
        for split in splits.values():
            if a_col in split.column_names:
                texts.extend(split[a_col])
        if environment is not None and hasattr(environment, "all_actions"):
            texts.extend(environment.all_actions())
        tokenizer = build_visual_tokenizer(texts, codec)
        fwm_model, idm_model = build_visual_models(
            tokenizer, codec, hidden_size=loop_args.tiny_hidden_size, num_layers=loop_args.tiny_num_layers,
            seed=swirl_args.seed,
        )
        base = run_dir / "base"
        if is_main_process():
            for name, model in (("fwm", fwm_model), ("idm", idm_model)):
                model.save_pretrained(str(base / name), safe_serialization=True)
                tokenizer.save_pretrained(str(base / name))
        wait_for_everyone()
        fwm = fwm or str(base / "fwm")
        idm = idm or str(base / "idm")
    test = splits["test"] if "test" in splits else None
    if test is not None and loop_args.eval_max_samples is not None and len(test) > loop_args.eval_max_samples:
        test = test.select(range(loop_args.eval_max_samples))

    def evaluate(fwm_ref, idm_ref):
        if test is None:
            return None
        fm, ft = load_model(fwm_ref, swirl_args)
        im, it = load_model(idm_ref, swirl_args)
        metrics = evaluate_visual(
            fm, ft, im, it, test, codec, templates=templates, environment=environment,
            num_choices=loop_args.eval_num_choices, batch_size=loop_args.eval_batch_size,
            max_new_tokens=loop_args.eval_max_new_tokens, clip_model=loop_args.clip_model, seed=swirl_args.seed,
        )
        return metrics

    records: list[dict] = []

    def finish(record, fwm_ref, idm_ref, evaluate_now):
        if evaluate_now:
            record["metrics"] = evaluate(fwm_ref, idm_ref)
        record["fwm"], record["idm"] = fwm_ref, idm_ref
        records.append(record)
        logger.info("%s: %s", record["name"], record.get("metrics"))
        if on_phase is not None:
            on_phase(record)
        _write_json(run_dir / "results.json", {"records": records})

    start = time.time()
    finish({"name": "iter-0-base", "iteration": 0, "phase": "base"}, fwm, idm,
           evaluate_now=loop_args.warmstart_epochs <= 0)
    if loop_args.warmstart_epochs > 0:
        for role in ("fwm", "idm"):
            out = run_dir / f"iter-0-warmstart-{role}"
            t0 = time.time()
            sft(fwm if role == "fwm" else idm, splits["labelled"], role, templates, out, swirl_args,
                epochs=loop_args.warmstart_epochs, learning_rate=loop_args.warmstart_learning_rate,
                batch_size=loop_args.warmstart_batch_size)
            if role == "fwm":
                fwm = str(out)
            else:
                idm = str(out)
            finish({"name": out.name, "iteration": 0, "phase": "warmstart", "role": role,
                    "time_s": time.time() - t0}, fwm, idm, evaluate_now=role == "idm")

    for k in range(1, loop_args.swirl_iterations + 1):
        t0 = time.time()
        idm_model, idm_tok = load_model(idm, swirl_args)
        labelled = label_pairs(
            idm_model, idm_tok, splits["unlabelled"], codec, templates, action_column=a_col, state_column=s_col,
            next_state_column=n_col, batch_size=loop_args.label_batch_size,
            max_new_tokens=loop_args.label_max_new_tokens,
        )
        del idm_model
        label_record = {"name": f"iter-{k}-labels", "iteration": k, "phase": "labels", "num_rows": len(labelled),
                        "num_unlabelled": len(splits["unlabelled"]), "time_s": time.time() - t0}
        if environment is not None and len(labelled):
            consistent = sum(environment.is_consistent(s, a, n) for s, a, n in
                             zip(labelled[s_col], labelled[a_col], labelled[n_col]))
            label_record["label_consistency"] = consistent / len(labelled)
        records.append(label_record)
        if len(labelled) == 0:
            raise ValueError(f"The IDM ({idm}) gave every unlabelled pair an empty label; warm-start it longer.")
        for role in ("fwm", "idm"):
            t0 = time.time()
            out = run_dir / f"iter-{k}-{role}"
            overrides: dict[str, Any] = {
                "phase": role, "output_dir": str(out), "save_strategy": "no", "push_to_hub": False,
                "max_steps": loop_args.fwm_max_steps if role == "fwm" else loop_args.idm_max_steps,
                "partner_model_name_or_path": None, "partner_adapter_name": None,
            }
            for key in ("learning_rate", "beta"):
                value = getattr(loop_args, f"{role}_{key}")
                if value is not None:
                    overrides[key] = value
            args = phase_config(swirl_args, **overrides)
            args.reward_weights = None
            policy_ref, partner_ref = (fwm, idm) if role == "fwm" else (idm, fwm)
            policy, tokenizer = load_model(policy_ref, swirl_args)
            partner, partner_tokenizer = load_model(partner_ref, swirl_args)
            data = labelled if role == "fwm" else splits["unlabelled"]
            data = data.select_columns([c for c in (s_col, a_col, n_col) if c in data.column_names])
            trainer = visual_trainer(policy, partner, data, args, codec, tokenizer,
                                     partner_tokenizer=partner_tokenizer)
            trainer.train()
            trainer.save_model(str(out))
            logs = trainer.state.log_history
            rewards = [log["rewards/swirl_partner_logprob/mean"] for log in logs
                       if "rewards/swirl_partner_logprob/mean" in log]
            del trainer, policy, partner
            if role == "fwm":
                fwm = str(out)
            else:
                idm = str(out)
            record = {"name": out.name, "iteration": k, "phase": role, "role": role, "time_s": time.time() - t0,
                      "partner": partner_ref, "rewards": rewards,
                      "config": {k2: v for k2, v in overrides.items() if k2 != "output_dir"}}
            finish(record, fwm, idm, evaluate_now=loop_args.eval_every_phase or role == "idm")
    logger.info("Visual SWIRL finished in %.0f s", time.time() - start)
    return records


def wait_for_everyone() -> None:
    try:
        from accelerate import PartialState

        PartialState().wait_for_everyone()
    except Exception:  # pragma: no cover
        pass
