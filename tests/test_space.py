"""The Space (spaces/app.py, spaces/swirl_space.py): the operations against independent computations, bad-input
messages, the model cache, and the running app through gradio_client.

The tiny default models are built with a quick recipe (same architecture as the real defaults, a few training steps)
into a temporary cache, so the values are checked against the library's own functions, not against quality."""

import importlib.util
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio", reason="the Space needs gradio (pip install -e '.[space]')")

SPACES = Path(__file__).resolve().parents[1] / "spaces"


def load_space_modules():
    """(app module, swirl_space module), imported from spaces/ under names that cannot clash."""
    if "swirl_space_app" not in sys.modules:
        spec = importlib.util.spec_from_file_location("swirl_space_app", SPACES / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["swirl_space_app"] = module
        spec.loader.exec_module(module)  # puts spaces/ on sys.path and imports swirl_space
    return sys.modules["swirl_space_app"], sys.modules["swirl_space"]


app_module, ss = load_space_modules()

QUICK_TEXT = ss.TinySpec(num_trajectories=12, length=4, warmstart_steps=3, extra_steps=6)
QUICK_IMAGE = ss.TinySpec(kind="image", environment="shapes", num_trajectories=8, length=3, warmstart_steps=2,
                          extra_steps=3)
A_TEXT, B_TEXT = ss.DEFAULT_TEXT_PAIRS["A"], ss.DEFAULT_TEXT_PAIRS["B"]
A_IMAGE, B_IMAGE = ss.DEFAULT_IMAGE_PAIRS["A"], ss.DEFAULT_IMAGE_PAIRS["B"]
MODELS = (*A_TEXT, *B_TEXT)
IMAGE_MODELS = (*A_IMAGE, *B_IMAGE)
STATE = "ball at 3 2 vel -1 0 | box at 0 3 vel 0 0"
NEXT_STATE = "ball at 2 1 vel -1 0 | box at 0 2 vel 0 0"


def quick_space(cache_dir) -> "ss.SwirlSpace":
    return ss.SwirlSpace(cache_dir, text_spec=QUICK_TEXT, image_spec=QUICK_IMAGE)


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    space = quick_space(tmp_path_factory.mktemp("space-cache"))
    space.warm_up(images=space.image_support() is None)
    return space


def independent(space, reference):
    """A fresh (model, tokenizer) of a tiny default, loaded apart from the app's cache."""
    from trl_swirl.tiny import load_pretrained

    model, tokenizer = load_pretrained(space.tiny.resolve(reference))
    return model.eval(), tokenizer


def needs_images(space):
    reason = space.image_support()
    if reason is not None:
        pytest.skip(reason)


# ------------------------------------------------------------------------------------------------- operations
def test_predict_matches_generate_and_partner_logprob(space):
    from trl_swirl.evaluation import generate, sequence_logprobs
    from trl_swirl.templates import DEFAULT_FWM_TEMPLATE, DEFAULT_IDM_TEMPLATE

    result = space.predict(STATE, "wait", *MODELS, 0.0, 24)
    assert set(result.sides) == {"A", "B"}
    for side, (fwm_ref, idm_ref) in (("A", A_TEXT), ("B", B_TEXT)):
        fwm, tok = independent(space, fwm_ref)
        idm, idm_tok = independent(space, idm_ref)
        expected = generate(fwm, tok, [DEFAULT_FWM_TEMPLATE.format(state=STATE, action="wait")], max_new_tokens=24)[0]
        assert result.sides[side].output == expected
        context = DEFAULT_IDM_TEMPLATE.format(state=STATE, next_state=expected)
        logprob = sequence_logprobs(idm, idm_tok, [context], ["wait"])[0]  # mean per token, EOS included
        assert result.sides[side].score == pytest.approx(max(logprob, -10.0), abs=1e-4)
    assert result.sides["A"].output != result.sides["B"].output or result.sides["A"].score != result.sides["B"].score
    assert "physics simulator" in result.truth and NEXT_STATE in result.truth


def test_infer_matches_generate_and_fwm_logprob(space):
    from trl_swirl import PartnerReward
    from trl_swirl.evaluation import generate
    from trl_swirl.templates import DEFAULT_IDM_TEMPLATE

    result = space.infer(STATE, NEXT_STATE, *MODELS, 0.0, 8)
    for side, (fwm_ref, idm_ref) in (("A", A_TEXT), ("B", B_TEXT)):
        idm, tok = independent(space, idm_ref)
        fwm, fwm_tok = independent(space, fwm_ref)
        prompt = DEFAULT_IDM_TEMPLATE.format(state=STATE, next_state=NEXT_STATE)
        action = generate(idm, tok, [prompt], max_new_tokens=8)[0]
        assert result.sides[side].output == action
        reward = PartnerReward(fwm, fwm_tok, phase="idm")
        expected = reward(completions=[action], state=[STATE], next_state=[NEXT_STATE])[0]
        assert result.sides[side].score == pytest.approx(expected, abs=1e-5)
    assert "actions giving this next state" in result.truth


def test_rollout_equals_repeated_greedy_fwm_calls(space):
    from trl_swirl.evaluation import generate
    from trl_swirl.templates import DEFAULT_FWM_TEMPLATE

    actions = ["push ball right", "wait", "jump box"]
    result = space.rollout(STATE, "\n  push ball right\n\nwait\njump box  \n", *MODELS, 0.0, 24)
    for side, (fwm_ref, _) in (("A", A_TEXT), ("B", B_TEXT)):
        fwm, tok = independent(space, fwm_ref)
        state, expected = STATE, []
        for action in actions:
            state = generate(fwm, tok, [DEFAULT_FWM_TEMPLATE.format(state=state, action=action)], max_new_tokens=24)[0]
            expected.append(state)
            if not state:
                break
        assert result.sides[side].output == expected
    assert app_module.format_rollout(actions, expected).splitlines()[0] == f"1. [push ball right] {expected[0]}"


def test_sampling_controls(space):
    short = space.predict(STATE, "wait", *MODELS, 0.0, 1)
    assert all(len(r.output.split()) <= 1 for r in short.sides.values())
    sampled = space.predict(STATE, "wait", *MODELS, 1.5, 16)
    assert all(isinstance(r.output, str) and r.score <= 0 for r in sampled.sides.values())


def test_latency_on_the_tiny_default_is_printed(space):
    """Printed, not asserted (speed belongs in benchmarks). 16 new tokens: a physics state is 15 words (the real
    defaults stop there; these barely trained ones do not). One thread is what tiny models like on a busy CPU
    (SWIRL_SPACE_TORCH_THREADS=1)."""
    import torch

    for threads in sorted({1, torch.get_num_threads()}):
        with ss.torch_threads(threads):
            space.predict(STATE, "wait", *MODELS, 0.0, 16)  # warm
            started = time.perf_counter()
            result = space.predict(STATE, "wait", *MODELS, 0.0, 16)
            total = time.perf_counter() - started
        sides = ", ".join(f"{s} {r.seconds:.3f}s" for s, r in result.sides.items())
        print(f"\n[space latency] predict on the tiny default architecture, both sides (generate + consistency "
              f"score), {threads} torch thread(s): {total:.3f}s ({sides})")


# ------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(state=""), "The state is empty"),
        (dict(state="   \n "), "The state is empty"),
        (dict(state="x" * 2001), "The state is 2,001 characters long; the limit is 2,000"),
        (dict(action=""), "The action is empty"),
        (dict(action=None), "The action is empty"),
        (dict(action="a" * 501), "limit is 500"),
        (dict(max_new_tokens=0), "Max new tokens must be a whole number from 1 to 256"),
        (dict(max_new_tokens=257), "from 1 to 256"),
        (dict(max_new_tokens=2.5), "whole number"),
        (dict(temperature=-0.1), "between 0 (greedy) and 2.0"),
        (dict(temperature="hot"), "temperature must be a number"),
        (dict(a_fwm=""), "Model A (FWM): no model given"),
        (dict(b_idm="tiny:nope"), "Model B (IDM): unknown tiny default 'tiny:nope'"),
        (dict(a_idm="/definitely/not/here"), "Model A (IDM): no such folder '/definitely/not/here'"),
        (dict(b_fwm="not an id!"), "neither an existing local folder nor a Hub model id"),
        (dict(b_fwm="org/model@"), "not of the form id@revision"),
        (dict(a_fwm="x" * 301), "the limit is 300"),
        (dict(a_fwm="nobody/no-such-model@v1"), "Model A (FWM): could not load 'nobody/no-such-model@v1'"),
    ],
)
def test_bad_input_messages(space, kwargs, message):
    args = dict(state=STATE, action="wait", a_fwm=MODELS[0], a_idm=MODELS[1], b_fwm=MODELS[2], b_idm=MODELS[3],
                temperature=0.0, max_new_tokens=8)
    args.update(kwargs)
    with pytest.raises(ss.InputError) as info:
        space.predict(**args)
    assert message in str(info.value)


def test_bad_local_folders(space, tmp_path):
    (tmp_path / "file.txt").write_text("hi")
    empty = tmp_path / "empty"
    empty.mkdir()
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    for reference, message in ((str(tmp_path / "file.txt"), "is a file"), (str(empty), "has no config.json"),
                               (str(pickled), "has no .safetensors weights")):
        with pytest.raises(ss.InputError, match=message):
            space.predict(STATE, "wait", reference, *MODELS[1:], 0.0, 8)


def test_bad_rollouts_and_inference(space):
    with pytest.raises(ss.InputError, match="The action list is empty"):
        space.rollout(STATE, "\n \n", *MODELS, 0.0, 8)
    with pytest.raises(ss.InputError, match="The roll-out has 21 actions; the limit is 20 steps"):
        space.rollout(STATE, "\n".join(["wait"] * 21), *MODELS, 0.0, 8)
    with pytest.raises(ss.InputError, match="The next state is empty"):
        space.infer(STATE, "", *MODELS, 0.0, 8)


def test_prompt_longer_than_the_model_is_refused(space):
    long_state = " ".join(["at"] * 450)  # 1,349 characters, 450 tokens: + template + 256 new > 512 positions
    with pytest.raises(ss.InputError, match="exceeds the 512-token limit"):
        space.predict(long_state, "wait", *MODELS, 0.0, 256)


def test_unknown_words_are_reported(space):
    result = space.predict("ball at 3 2 zebra", "wait", *MODELS, 0.0, 4)
    assert any("unknown to" in note for note in result.notes)
    assert result.truth == ""  # not a state of a built-in environment: no simulator line


# ------------------------------------------------------------------------------------------------------ cache
def test_cache_returns_the_same_object_and_evicts_least_recently_used(space):
    first = space.cache.get(MODELS[0])
    assert space.cache.get(MODELS[0]) is first
    cache = ss.ModelCache(space.tiny, capacity_pairs=2)  # 4 models
    refs = [*MODELS, ss.DEFAULT_IMAGE_PAIRS["A"][0]] if space.image_support() is None else list(MODELS)
    loaded = [cache.get(r) for r in refs]
    assert cache.get(refs[-1]) is loaded[-1]
    if len(refs) == 5:
        assert refs[0] not in cache.keys() and len(cache) == 4
        assert cache.get(refs[0]) is not loaded[0]  # evicted, loaded again


def test_defaults_are_built_once_and_reused_from_disk(space, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(ss, "_build_tiny", boom)
    again = ss.TinyDefaults(space.tiny.cache_dir, QUICK_TEXT, QUICK_IMAGE)
    folder = again.ensure("text")
    assert folder == space.tiny.folder("text")
    record = json.loads((folder / "tiny_spec.json").read_text())
    assert record["spec"]["warmstart_steps"] == QUICK_TEXT.warmstart_steps
    assert again.resolve("tiny:trained-fwm") == folder / "trained-fwm"
    assert again.resolve("org/name") is None


def test_remote_code_is_off_unless_the_owner_enables_it(space, monkeypatch):
    monkeypatch.delenv("SWIRL_TRUST_REMOTE_CODE", raising=False)
    assert ss.ModelCache(space.tiny).trust_remote_code is False
    monkeypatch.setenv("SWIRL_TRUST_REMOTE_CODE", "1")
    assert ss.ModelCache(space.tiny).trust_remote_code is True


def test_local_roots_restrict_local_folders(space, monkeypatch, tmp_path):
    folder = tmp_path / "elsewhere"
    shutil.copytree(space.tiny.resolve(MODELS[0]), folder)
    monkeypatch.setenv("SWIRL_SPACE_LOCAL_ROOTS", str(tmp_path / "allowed"))
    with pytest.raises(ss.InputError, match="are not allowed here"):
        ss.ModelCache(space.tiny).get(str(folder))
    assert ss.ModelCache(space.tiny).get(MODELS[0]).model is not None  # the tiny cache stays allowed


def test_run_folder_templates_are_used(space, tmp_path):
    """A SWIRL run's phase folder is prompted with the templates its run recorded (../run_config.json)."""
    from trl_swirl.evaluation import generate

    run = tmp_path / "run"
    shutil.copytree(space.tiny.resolve(MODELS[2]), run / "iter-1-fwm")
    shutil.copytree(space.tiny.resolve(MODELS[3]), run / "iter-1-idm")
    fwm_t, idm_t = "{state} Action: {action} Next state:", "{state} Next state: {next_state} Action:"
    (run / "run_config.json").write_text(json.dumps(
        {"loop": {}, "swirl": {"fwm_template": fwm_t, "idm_template": idm_t, "prompt_format": "text"}}))
    refs = (str(run / "iter-1-fwm"), str(run / "iter-1-idm"))
    result = space.predict(STATE, "wait", *refs, *refs, 0.0, 16)
    fwm, tok = independent(space, MODELS[2])
    assert result.sides["A"].output == generate(fwm, tok, [fwm_t.format(state=STATE, action="wait")],
                                                max_new_tokens=16)[0]
    assert space.cache.get(refs[1]).templates.idm_template == idm_t


# ----------------------------------------------------------------------------------------------------- images
def test_image_predict_infer_rollout_match_the_library(space):
    needs_images(space)
    from trl_swirl import PartnerReward
    from trl_swirl.codecs import get_codec
    from trl_swirl.templates import DEFAULT_FWM_TEMPLATE
    from trl_swirl.visual import generate_images

    example = ss.image_examples(spec=QUICK_IMAGE)[0]
    codec = get_codec("palette", grid=(6, 6), patch_size=4)
    state, next_state = codec.encode(example["state"]), codec.encode(example["next_state"])
    result = space.predict_image(example["state"], example["action"], *IMAGE_MODELS, 0.0, 6, 4)
    assert result.notes == []  # a whole multiple of the codec's size: downscaled without a warning
    for side, (fwm_ref, idm_ref) in (("A", A_IMAGE), ("B", B_IMAGE)):
        fwm, tok = independent(space, fwm_ref)
        idm, idm_tok = independent(space, idm_ref)
        prompt = DEFAULT_FWM_TEMPLATE.format(state=state, action=example["action"])
        expected = generate_images(fwm, tok, codec, [prompt])[0]
        assert result.sides[side].output == expected
        assert result.sides[side].image.size == codec.image_size
        reward = PartnerReward(idm, idm_tok, phase="fwm")
        score = reward(completions=[expected], state=[state], action=[example["action"]])[0]
        assert result.sides[side].score == pytest.approx(score, abs=1e-5)

    inferred = space.infer_image(example["state"], example["next_state"], *IMAGE_MODELS, 0.0, 6, 6, 4)
    for side, (fwm_ref, idm_ref) in (("A", A_IMAGE), ("B", B_IMAGE)):
        action = inferred.sides[side].output
        assert "<img_" not in action and "<boi>" not in action
        fwm, tok = independent(space, fwm_ref)
        reward = PartnerReward(fwm, tok, phase="idm")
        score = reward(completions=[action], state=[state], next_state=[next_state])[0]
        assert inferred.sides[side].score == pytest.approx(score, abs=1e-5)

    actions = example["actions"].splitlines()
    rolled = space.rollout_image(example["state"], example["actions"], *IMAGE_MODELS, 0.0, 6, 4)
    fwm, tok = independent(space, A_IMAGE[0])
    current, expected = state, []
    for action in actions:
        current = generate_images(fwm, tok, codec, [DEFAULT_FWM_TEMPLATE.format(state=current, action=action)])[0]
        expected.append(current)
    assert rolled.sides["A"].output == expected and len(rolled.sides["B"].image) == len(actions)


def test_image_sizes_and_bad_image_input(space):
    needs_images(space)
    from PIL import Image

    odd = Image.new("RGB", (30, 30), "white")
    result = space.predict_image(odd, "move red square left", *IMAGE_MODELS, 0.0, 6, 4)
    assert any("is 30x30 pixels, not the codec's 24x24" in n and "resized" in n for n in result.notes)
    with pytest.raises(ss.InputError, match="The state image is missing"):
        space.predict_image(None, "move red square left", *IMAGE_MODELS, 0.0, 6, 4)
    with pytest.raises(ss.InputError, match="codec grid must be a whole number from 1 to 32"):
        space.predict_image(odd, "move red square left", *IMAGE_MODELS, 0.0, 0, 4)
    with pytest.raises(ss.InputError, match=r"Model A \(FWM\) 'tiny:warmstart-fwm' is not an image model"):
        space.predict_image(odd, "move red square left", *MODELS, 0.0, 6, 4)
    with pytest.raises(ss.InputError, match="The next state image is missing"):
        space.infer_image(odd, None, *IMAGE_MODELS, 0.0, 8, 6, 4)
    big = space.display(odd, 96)
    assert big.size == (3 * 30 + 4, 3 * 30 + 4)  # enlarged x3, grey 2-pixel frame


# ------------------------------------------------------------------------------------------- the running app
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def running_app(space):
    demo = app_module.create_app(space)
    demo.queue(default_concurrency_limit=2, max_size=16)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        demo.close()


def test_create_app_is_separate_from_launch(space):
    demo = app_module.create_app(space, warm_up=False)
    assert isinstance(demo, gr.Blocks)
    names = {fn.api_name for fn in demo.fns.values()} if isinstance(demo.fns, dict) else {f.api_name for f in demo.fns}
    assert {"predict", "infer", "rollout"} <= names
    if space.image_support() is None:
        assert {"predict_image", "infer_image", "rollout_image"} <= names


def test_client_predict_infer_rollout(space, running_app):
    from gradio_client import Client

    client = Client(running_app, verbose=False)
    a, a_score, b, b_score, details = client.predict(STATE, "wait", *MODELS, 0, 24, api_name="/predict")
    direct = space.predict(STATE, "wait", *MODELS, 0.0, 24)
    assert (a, b) == (direct.sides["A"].output, direct.sides["B"].output)
    assert a_score == pytest.approx(direct.sides["A"].score, abs=1e-4)
    assert b_score == pytest.approx(direct.sides["B"].score, abs=1e-4)
    assert "physics simulator" in details

    a, _, b, _, _ = client.predict(STATE, NEXT_STATE, *MODELS, 0, 8, api_name="/infer")
    direct = space.infer(STATE, NEXT_STATE, *MODELS, 0.0, 8)
    assert (a, b) == (direct.sides["A"].output, direct.sides["B"].output)

    a, b, _ = client.predict(STATE, "wait\npush ball left", *MODELS, 0, 16, api_name="/rollout")
    direct = space.rollout(STATE, "wait\npush ball left", *MODELS, 0.0, 16)
    assert a == app_module.format_rollout(["wait", "push ball left"], direct.sides["A"].output)
    assert b == app_module.format_rollout(["wait", "push ball left"], direct.sides["B"].output)


def test_client_gets_readable_errors(running_app):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(running_app, verbose=False)
    with pytest.raises(AppError, match="The state is empty"):
        client.predict("", "wait", *MODELS, 0, 8, api_name="/predict")
    with pytest.raises(AppError, match="no such folder"):
        client.predict(STATE, "wait", "/no/such/model", *MODELS[1:], 0, 8, api_name="/predict")
    with pytest.raises(AppError, match="The roll-out has 21 actions"):
        client.predict(STATE, "\n".join(["wait"] * 21), *MODELS, 0, 8, api_name="/rollout")


def test_client_image_prediction(space, running_app, tmp_path):
    needs_images(space)
    from gradio_client import Client, handle_file
    from PIL import Image

    example = ss.image_examples(spec=QUICK_IMAGE)[0]
    example["state"].save(tmp_path / "state.png")
    client = Client(running_app, verbose=False)
    a, a_score, b, b_score, _ = client.predict(handle_file(str(tmp_path / "state.png")), example["action"],
                                               *IMAGE_MODELS, 0, 6, 4, api_name="/predict_image")
    direct = space.predict_image(example["state"], example["action"], *IMAGE_MODELS, 0.0, 6, 4)
    assert Image.open(a).size == space.display(direct.sides["A"].image).size
    assert a_score == pytest.approx(direct.sides["A"].score, abs=1e-4)
    assert b_score == pytest.approx(direct.sides["B"].score, abs=1e-4)
