"""SWIRL world models side by side: a Gradio app (a Hugging Face Space, or `python spaces/app.py` locally).

Two model pairs, A and B, each a forward world model (FWM, P(next state | state, action)) and an inverse dynamics
model (IDM, Q(action | state, next state)), answer the same question:

* **Predict the next state**: each FWM predicts; the score is the same side's IDM log-probability of the entered
  action given (state, prediction), i.e. SWIRL's reward for the FWM;
* **Infer the action**: each IDM infers; the score is the same side's FWM log-probability of the entered next state
  given (state, inferred action), SWIRL's reward for the IDM;
* **Roll out**: each FWM applied step by step to a start state and a list of actions;
* **Images**: the same on image states, written as image tokens by `trl_swirl.codecs`.

The defaults are tiny models the app builds itself (no download). The operations live in `swirl_space.py`; this
file is the UI. `create_app()` builds the Blocks; launching is separate (see the bottom of the file).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import swirl_space as backend  # noqa: E402
from swirl_space import (  # noqa: E402
    DEFAULT_IMAGE_PAIRS,
    DEFAULT_TEXT_PAIRS,
    MAX_ACTION_CHARS,
    MAX_NEW_TOKENS,
    MAX_REFERENCE_CHARS,
    MAX_ROLLOUT_STEPS,
    MAX_STATE_CHARS,
    MAX_TEMPERATURE,
    InputError,
    SwirlSpace,
)

logger = logging.getLogger("swirl_space.app")

INTRO = f"""
# SWIRL world models, side by side

[SWIRL](https://arxiv.org/abs/2602.06130) trains a **forward world model** (FWM, *P(next state | state, action)*) and
an **inverse dynamics model** (IDM, *Q(action | state, next state)*) against each other: each one's reward is the other
one's log-probability. Compare two (FWM, IDM) pairs on the same input. A model is a Hub id, `id@revision`, or a local
folder (a SWIRL run's phase folder such as `RUN/iter-1-fwm`); safetensors only. The defaults are tiny models built
here on the `physics` world: **A** after a short warm start, **B** trained longer.

Scores are mean log-probabilities per token (EOS included, clipped at -10, as SWIRL's reward): closer to 0 is more
consistent. Limits: {MAX_STATE_CHARS:,} characters per state, {MAX_ACTION_CHARS} per action, {MAX_ROLLOUT_STEPS}
roll-out steps, {MAX_NEW_TOKENS} new tokens.
"""

SCORE_FWM = "consistency: IDM log p(action | state, prediction)"
SCORE_IDM = "consistency: FWM log p(next state | state, inferred action)"


def _error(message: str, title: str = "Error") -> gr.Error:
    """A `gr.Error` shown in the page; input errors are not printed as tracebacks in the server log either."""
    kwargs = {"title": title}
    if "print_exception" in inspect.signature(gr.Error.__init__).parameters:  # gradio >= 5.x
        kwargs["print_exception"] = False
    return gr.Error(message, **kwargs)


def _ui(fn):
    """Run a backend call for the UI: notes become warnings, input errors a `gr.Error` with the message, and anything
    else a short `gr.Error` (the traceback goes to the log, never to the page)."""

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            outputs, notes = fn(*args)
        except InputError as err:
            raise _error(str(err), title="Check the input") from None
        except gr.Error:
            raise
        except Exception as err:  # noqa: BLE001
            logger.exception("Unexpected error in %s", fn.__name__)
            raise _error(f"Unexpected error ({type(err).__name__}); the details are in the app's log.") from None
        for note in notes:
            gr.Warning(note)
        return outputs

    return wrapper


def _timing(result) -> str:
    return " · ".join(f"{side}: {r.seconds:.2f} s" for side, r in result.sides.items())


def _details(result) -> str:
    parts = [result.truth] if result.truth else []
    parts.append(f"<sub>time {_timing(result)}</sub>")
    return "\n\n".join(parts)


def format_rollout(actions: list[str], states: list[str]) -> str:
    """One line per step: `k. [action] predicted state`."""
    return "\n".join(f"{k}. [{a}] {s}" for k, (a, s) in enumerate(zip(actions, states), 1))


def _model_fields(pairs: dict, prefix: str = ""):
    """Two columns of (FWM, IDM) reference boxes; returns [a_fwm, a_idm, b_fwm, b_idm]."""
    boxes = []
    with gr.Row():
        for side in ("A", "B"):
            with gr.Column():
                gr.Markdown(f"**Model {side}**")
                for role, value in zip(("FWM", "IDM"), pairs[side]):
                    boxes.append(gr.Textbox(value=value, label=f"{side} · {role}", max_lines=1,
                                            max_length=MAX_REFERENCE_CHARS,
                                            elem_id=f"{prefix}{side.lower()}-{role.lower()}"))
    return boxes


def create_app(space: SwirlSpace | None = None, *, cache_dir: str | os.PathLike | None = None,
               warm_up: bool = True) -> gr.Blocks:
    """The Gradio Blocks of the Space. `space` holds the models (a new `SwirlSpace(cache_dir)` by default); with
    `warm_up`, the tiny defaults are built (once, cached on disk) and loaded before the page is served."""
    space = space or SwirlSpace(cache_dir)
    image_reason = space.image_support()
    if warm_up:
        space.warm_up(images=image_reason is None)

    # ------------------------------------------------------------------------------------------ backend adapters
    def predict(state, action, a_fwm, a_idm, b_fwm, b_idm, temperature, max_new_tokens):
        r = space.predict(state, action, a_fwm, a_idm, b_fwm, b_idm, temperature, max_new_tokens)
        a, b = r.sides["A"], r.sides["B"]
        return (a.output, a.score, b.output, b.score, _details(r)), r.notes

    def infer(state, next_state, a_fwm, a_idm, b_fwm, b_idm, temperature, max_new_tokens):
        r = space.infer(state, next_state, a_fwm, a_idm, b_fwm, b_idm, temperature, max_new_tokens)
        a, b = r.sides["A"], r.sides["B"]
        return (a.output, a.score, b.output, b.score, _details(r)), r.notes

    def rollout(state, actions, a_fwm, a_idm, b_fwm, b_idm, temperature, max_new_tokens):
        r = space.rollout(state, actions, a_fwm, a_idm, b_fwm, b_idm, temperature, max_new_tokens)
        steps = backend.check_actions(actions)
        return (format_rollout(steps, r.sides["A"].output), format_rollout(steps, r.sides["B"].output),
                _details(r)), r.notes

    def predict_image(image, action, a_fwm, a_idm, b_fwm, b_idm, temperature, grid, patch_size):
        r = space.predict_image(image, action, a_fwm, a_idm, b_fwm, b_idm, temperature, grid, patch_size)
        a, b = r.sides["A"], r.sides["B"]
        return (space.display(a.image), a.score, space.display(b.image), b.score, _details(r)), r.notes

    def infer_image(image, next_image, a_fwm, a_idm, b_fwm, b_idm, temperature, max_new_tokens, grid, patch_size):
        r = space.infer_image(image, next_image, a_fwm, a_idm, b_fwm, b_idm, temperature, max_new_tokens, grid,
                              patch_size)
        a, b = r.sides["A"], r.sides["B"]
        return (a.output, a.score, b.output, b.score, _details(r)), r.notes

    def rollout_image(image, actions, a_fwm, a_idm, b_fwm, b_idm, temperature, grid, patch_size):
        r = space.rollout_image(image, actions, a_fwm, a_idm, b_fwm, b_idm, temperature, grid, patch_size)
        steps = backend.check_actions(actions)
        galleries = [[(space.display(img), f"{k}. {a}") for k, (a, img) in enumerate(zip(steps, r.sides[s].image), 1)]
                     for s in ("A", "B")]
        return (*galleries, _details(r)), r.notes

    # ------------------------------------------------------------------------------------------------------ page
    examples = backend.text_examples()
    with gr.Blocks(title="SWIRL world models") as demo:
        gr.Markdown(INTRO)
        with gr.Accordion("Models and sampling", open=True):
            text_models = _model_fields(DEFAULT_TEXT_PAIRS)
            with gr.Row():
                temperature = gr.Slider(0.0, MAX_TEMPERATURE, value=0.0, step=0.05, label="Temperature (0 = greedy)",
                                        elem_id="temperature")
                max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=64, step=1, label="Max new tokens",
                                           elem_id="max-new-tokens")
        sampling = [temperature, max_new_tokens]

        with gr.Tabs():
            # -------------------------------------------------------------------------------------- predict
            with gr.Tab("Predict the next state", id="predict"):
                with gr.Row():
                    p_state = gr.Textbox(label="State", lines=3, max_length=MAX_STATE_CHARS, elem_id="p-state")
                    p_action = gr.Textbox(label="Action", lines=1, max_length=MAX_ACTION_CHARS, elem_id="p-action")
                p_button = gr.Button("Predict the next state (FWM)", variant="primary", elem_id="p-run")
                with gr.Row():
                    with gr.Column():
                        p_a = gr.Textbox(label="A · predicted next state", lines=2, interactive=False,
                                         elem_id="p-a-out")
                        p_a_score = gr.Number(label=f"A · {SCORE_FWM}", precision=4, interactive=False,
                                              elem_id="p-a-score")
                    with gr.Column():
                        p_b = gr.Textbox(label="B · predicted next state", lines=2, interactive=False,
                                         elem_id="p-b-out")
                        p_b_score = gr.Number(label=f"B · {SCORE_FWM}", precision=4, interactive=False,
                                              elem_id="p-b-score")
                p_details = gr.Markdown(elem_id="p-details")
                for env, rows in examples.items():
                    gr.Examples([[r["state"], r["action"]] for r in rows], [p_state, p_action],
                                label=_example_label(env))
                p_button.click(_ui(predict), [p_state, p_action, *text_models, *sampling],
                               [p_a, p_a_score, p_b, p_b_score, p_details], api_name="predict")

            # ---------------------------------------------------------------------------------------- infer
            with gr.Tab("Infer the action", id="infer"):
                with gr.Row():
                    i_state = gr.Textbox(label="State", lines=3, max_length=MAX_STATE_CHARS, elem_id="i-state")
                    i_next = gr.Textbox(label="Next state", lines=3, max_length=MAX_STATE_CHARS, elem_id="i-next")
                i_button = gr.Button("Infer the action (IDM)", variant="primary", elem_id="i-run")
                with gr.Row():
                    with gr.Column():
                        i_a = gr.Textbox(label="A · inferred action", interactive=False, elem_id="i-a-out")
                        i_a_score = gr.Number(label=f"A · {SCORE_IDM}", precision=4, interactive=False,
                                              elem_id="i-a-score")
                    with gr.Column():
                        i_b = gr.Textbox(label="B · inferred action", interactive=False, elem_id="i-b-out")
                        i_b_score = gr.Number(label=f"B · {SCORE_IDM}", precision=4, interactive=False,
                                              elem_id="i-b-score")
                i_details = gr.Markdown(elem_id="i-details")
                for env, rows in examples.items():
                    gr.Examples([[r["state"], r["next_state"]] for r in rows], [i_state, i_next],
                                label=_example_label(env))
                i_button.click(_ui(infer), [i_state, i_next, *text_models, *sampling],
                               [i_a, i_a_score, i_b, i_b_score, i_details], api_name="infer")

            # -------------------------------------------------------------------------------------- roll out
            with gr.Tab("Roll out", id="rollout"):
                with gr.Row():
                    r_state = gr.Textbox(label="Start state", lines=3, max_length=MAX_STATE_CHARS, elem_id="r-state")
                    r_actions = gr.Textbox(label=f"Actions, one per line (at most {MAX_ROLLOUT_STEPS})", lines=5,
                                           max_length=MAX_ROLLOUT_STEPS * (MAX_ACTION_CHARS + 1),
                                           elem_id="r-actions")
                r_button = gr.Button("Roll out (FWM, step by step)", variant="primary", elem_id="r-run")
                with gr.Row():
                    r_a = gr.Textbox(label="A · predicted trajectory", lines=6, interactive=False, elem_id="r-a-out")
                    r_b = gr.Textbox(label="B · predicted trajectory", lines=6, interactive=False, elem_id="r-b-out")
                r_details = gr.Markdown(elem_id="r-details")
                for env, rows in examples.items():
                    gr.Examples([[r["start"], r["actions"]] for r in rows], [r_state, r_actions],
                                label=_example_label(env))
                r_button.click(_ui(rollout), [r_state, r_actions, *text_models, *sampling], [r_a, r_b, r_details],
                               api_name="rollout")

            # ---------------------------------------------------------------------------------------- images
            with gr.Tab("Images", id="images"):
                if image_reason is not None:
                    gr.Markdown(f"**Image states are not available in this install.** {image_reason}",
                                elem_id="images-unavailable")
                else:
                    _image_tab(space, predict_image, infer_image, rollout_image, temperature, max_new_tokens)
    return demo


def _example_label(env: str) -> str:
    if env == "physics":
        return "physics examples (the world the tiny defaults were trained on)"
    return f"{env} examples (for models trained on {env}; the tiny defaults only know physics)"


def _image_tab(space: SwirlSpace, predict_image, infer_image, rollout_image, temperature, max_new_tokens) -> None:
    spec = space.tiny.specs["image"]
    grid_default = 3 * spec.shapes_grid
    gr.Markdown(
        "States are images, written as image tokens by the palette codec of `trl_swirl.codecs` (a square grid of "
        "patches, each one of 16 colours). An image pair's tokenizer holds the codec's tokens. An uploaded image is "
        "**resized** to the codec's size (box filter): silently when it is a whole multiple of that size, with a "
        "warning otherwise. The FWM writes exactly one "
        "image (only image tokens are allowed); predictions are shown enlarged. The defaults were trained on a "
        f"{spec.shapes_grid}x{spec.shapes_grid} board of coloured shapes.")
    image_models = _model_fields(DEFAULT_IMAGE_PAIRS, prefix="img-")
    with gr.Row():
        grid = gr.Number(value=grid_default, precision=0, minimum=1, maximum=backend.MAX_CODEC_GRID,
                         label="Codec: patches per side", elem_id="img-grid")
        patch_size = gr.Number(value=spec.patch_size, precision=0, minimum=1, maximum=backend.MAX_PATCH_SIZE,
                               label="Codec: pixels per patch", elem_id="img-patch")
    codec_inputs = [grid, patch_size]
    rows = backend.image_examples(spec=spec)
    image_kwargs = dict(type="pil", image_mode="RGB", sources=["upload", "clipboard"], format="png", height=200)
    with gr.Tabs():
        with gr.Tab("Predict the next image", id="img-predict"):
            with gr.Row():
                s = gr.Image(label="State", elem_id="img-p-state", **image_kwargs)
                action = gr.Textbox(label="Action", max_length=MAX_ACTION_CHARS, elem_id="img-p-action")
            button = gr.Button("Predict the next image (FWM)", variant="primary", elem_id="img-p-run")
            with gr.Row():
                with gr.Column():
                    a = gr.Image(label="A · predicted next image", interactive=False, format="png", height=200,
                                 elem_id="img-p-a-out")
                    a_score = gr.Number(label=f"A · {SCORE_FWM}", precision=4, interactive=False,
                                        elem_id="img-p-a-score")
                with gr.Column():
                    b = gr.Image(label="B · predicted next image", interactive=False, format="png", height=200,
                                 elem_id="img-p-b-out")
                    b_score = gr.Number(label=f"B · {SCORE_FWM}", precision=4, interactive=False,
                                        elem_id="img-p-b-score")
            details = gr.Markdown(elem_id="img-p-details")
            gr.Examples([[r["state"], r["action"]] for r in rows], [s, action], label="shapes examples")
            button.click(_ui(predict_image), [s, action, *image_models, temperature, *codec_inputs],
                         [a, a_score, b, b_score, details], api_name="predict_image")
        with gr.Tab("Infer the action", id="img-infer"):
            with gr.Row():
                s = gr.Image(label="State", elem_id="img-i-state", **image_kwargs)
                n = gr.Image(label="Next state", elem_id="img-i-next", **image_kwargs)
            button = gr.Button("Infer the action (IDM)", variant="primary", elem_id="img-i-run")
            with gr.Row():
                with gr.Column():
                    a = gr.Textbox(label="A · inferred action", interactive=False, elem_id="img-i-a-out")
                    a_score = gr.Number(label=f"A · {SCORE_IDM}", precision=4, interactive=False)
                with gr.Column():
                    b = gr.Textbox(label="B · inferred action", interactive=False, elem_id="img-i-b-out")
                    b_score = gr.Number(label=f"B · {SCORE_IDM}", precision=4, interactive=False)
            details = gr.Markdown()
            gr.Examples([[r["state"], r["next_state"]] for r in rows], [s, n], label="shapes examples")
            button.click(_ui(infer_image), [s, n, *image_models, temperature, max_new_tokens, *codec_inputs],
                         [a, a_score, b, b_score, details], api_name="infer_image")
        with gr.Tab("Roll out", id="img-rollout"):
            with gr.Row():
                s = gr.Image(label="Start state", elem_id="img-r-state", **image_kwargs)
                actions = gr.Textbox(label=f"Actions, one per line (at most {MAX_ROLLOUT_STEPS})", lines=4,
                                     elem_id="img-r-actions")
            button = gr.Button("Roll out (FWM, step by step)", variant="primary", elem_id="img-r-run")
            with gr.Row():
                a = gr.Gallery(label="A · predicted images", columns=4, format="png", elem_id="img-r-a-out")
                b = gr.Gallery(label="B · predicted images", columns=4, format="png", elem_id="img-r-b-out")
            details = gr.Markdown()
            gr.Examples([[r["state"], r["actions"]] for r in rows], [s, actions], label="shapes examples")
            button.click(_ui(rollout_image), [s, actions, *image_models, temperature, *codec_inputs],
                         [a, b, details], api_name="rollout_image")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if os.environ.get("SWIRL_SPACE_TORCH_THREADS"):  # e.g. 1: tiny models answer fastest on one thread
        import torch

        torch.set_num_threads(int(os.environ["SWIRL_SPACE_TORCH_THREADS"]))
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # no "Loading weights" bars in the Space's log
    create_app().queue(default_concurrency_limit=2, max_size=16).launch()
