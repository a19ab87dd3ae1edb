"""Images in SWIRL: the visual worlds, image-only FWM generation in SwirlTrainer, the partner reward on image states,
image metrics and the AURORA-format data path."""

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from trl_swirl import PartnerReward, SwirlConfig, SwirlTemplates  # noqa: E402
from trl_swirl.data import make_splits  # noqa: E402
from trl_swirl.envs.base import InvalidAction  # noqa: E402
from trl_swirl.envs.visual import PhotoWorld, ShapesWorld, get_visual_environment  # noqa: E402
from trl_swirl.visual import (  # noqa: E402
    ImageCompletionDecoder,
    action_metrics,
    build_visual_models,
    build_visual_tokenizer,
    clip_image_similarity,
    edit_splits,
    edit_transitions,
    evaluate_visual,
    generate_actions,
    generate_images,
    image_generation_kwargs,
    image_metrics,
    label_pairs,
    load_edit_dataset,
    save_strip,
    text_generation_kwargs,
    visual_trainer,
)


@pytest.fixture(scope="module")
def world():
    """A small shapes world (4x4 cells of one patch: 16 image tokens), its splits, tokenizer and two tiny models."""
    env = ShapesWorld(grid=4, cell=1, patch_size=2)
    splits = make_splits(env, num_trajectories=12, length=4, seed=0, labelled_fraction=0.25, test_fraction=0.25)
    tokenizer = build_visual_tokenizer(env.all_actions(), env.codec)
    fwm, idm = build_visual_models(tokenizer, env.codec, hidden_size=32, num_layers=1, seed=0)
    return env, splits, tokenizer, fwm, idm


# ---------------------------------------------------------------------------------------------------- the worlds
@pytest.mark.parametrize("kwargs", [{}, {"grid": 4, "cell": 1}, {"grid": 2, "max_objects": 2}])
def test_shapes_world(kwargs):
    env = ShapesWorld(**kwargs)
    trajectories = env.trajectories(6, 5, seed=3)
    assert trajectories == env.trajectories(6, 5, seed=3)  # seeded, deterministic
    verbs = set()
    for traj in trajectories:
        for state, action, nxt in zip(traj["states"], traj["actions"], traj["states"][1:]):
            assert env.apply(state, action) == nxt and env.is_consistent(state, action, nxt)
            assert env.equivalent_actions(state, action) == [action]  # every action is identifiable
            assert env.codec.encode(env.render(nxt)) == nxt  # rendered images are exactly representable
            verbs.add(action.split()[0])
    assert verbs == {"move", "recolour", "remove", "add"}
    assert set(env.valid_actions(trajectories[0]["states"][0])) <= set(env.all_actions())


def test_shapes_world_rules():
    env = ShapesWorld()
    state = env.render_scene([("red", "square", 0, 0), ("blue", "circle", 1, 0)])
    assert env.describe(state) == "red square at 0 0 | blue circle at 1 0"
    assert env.describe(env.apply(state, "move red square down")) == "blue circle at 1 0 | red square at 0 1"
    assert env.describe(env.apply(state, "recolour blue circle green")) == "red square at 0 0 | green circle at 1 0"
    assert env.describe(env.apply(state, "remove red square")) == "blue circle at 1 0"
    assert "green triangle at 2 2" in env.describe(env.apply(state, "add green triangle at 2 2"))
    for bad in ("move red square right", "move red square left", "recolour red square red", "remove green circle",
                "add red square at 2 2", "add green circle at 0 0", "jump", "move red square"):
        with pytest.raises(InvalidAction):
            env.apply(state, bad)
    with pytest.raises(ValueError, match="not a shapes state"):
        env.apply(env.codec.codes_to_text([2] * env.codec.num_tokens), "remove red square")
    assert not env.is_consistent(state, "move red square right", state)
    with pytest.raises(ValueError, match="cell=1"):
        ShapesWorld(cell=1, shapes=("circle",))


def test_photo_world():
    pytest.importorskip("skimage")
    env = get_visual_environment("photos", grid=4, patch_size=2)
    assert isinstance(env, PhotoWorld)
    traj = env.trajectories(3, 4, seed=0)
    assert traj == env.trajectories(3, 4, seed=0)
    for t in traj:
        for state, action, nxt in zip(t["states"], t["actions"], t["states"][1:]):
            assert env.is_consistent(state, action, nxt) and action in env.equivalent_actions(state, action)
    state = env.photo_state("astronaut")
    cycles = {"flip horizontal": 2, "flip vertical": 2, "rotate 90": 4, "rotate 180": 2, "invert colours": 2,
              "shift colours": 3}
    for action, period in cycles.items():
        out = state
        for _ in range(period):
            out = env.apply(out, action)
        assert out == state, action
    codes = np.asarray(env.codec.text_to_codes(state)).reshape(4, 4)
    cropped = np.asarray(env.codec.text_to_codes(env.apply(state, "crop top right"))).reshape(4, 4)
    np.testing.assert_array_equal(cropped[::2, ::2], codes[:2, 2:])
    with pytest.raises(InvalidAction):
        env.apply(state, "rotate 45")


# ------------------------------------------------------------------------------------------------- generation
def test_generation_kwargs(world):
    env, _, tokenizer, _, _ = world
    codec = env.codec
    image_ids = set(codec.image_token_ids(tokenizer))
    kwargs = image_generation_kwargs(codec, tokenizer, vocab_size=len(tokenizer) + 5)
    assert set(kwargs["suppress_tokens"]) == set(range(len(tokenizer) + 5)) - image_ids
    assert set(image_generation_kwargs(codec, tokenizer, backend="vllm")["allowed_token_ids"]) == image_ids
    banned = set(text_generation_kwargs(codec, tokenizer)["suppress_tokens"])
    assert banned == image_ids | set(codec.marker_token_ids(tokenizer))
    assert not banned & set(text_generation_kwargs(codec, tokenizer, backend="vllm")["allowed_token_ids"])
    decoder = ImageCompletionDecoder(codec, tokenizer)
    ids = codec.image_token_ids(tokenizer)[: codec.num_tokens]
    assert decoder(ids) == codec.codes_to_text(list(range(codec.num_tokens)))
    with pytest.raises(ValueError, match="image tokens"):
        ImageCompletionDecoder(codec, tokenizer, strict=True)(ids[:3])


def test_generate_images_and_actions(world):
    env, splits, tokenizer, fwm, idm = world
    templates = SwirlTemplates()
    test = splits["test"]
    prompts = [templates.prompt_text("fwm", state=s, action=a) for s, a in zip(test["state"], test["action"])]
    images = generate_images(fwm, tokenizer, env.codec, prompts, batch_size=4)
    assert len(images) == len(test) and all(env.codec.is_valid(t) for t in images)
    sampled = generate_images(fwm, tokenizer, env.codec, prompts[:4], do_sample=True)
    assert all(env.codec.is_valid(t) for t in sampled)
    prompts = [templates.prompt_text("idm", state=s, next_state=n) for s, n in zip(test["state"], test["next_state"])]
    actions = generate_actions(idm, tokenizer, env.codec, prompts, max_new_tokens=5)
    assert all(a.strip() and "<" not in a for a in actions)
    labelled = label_pairs(idm, tokenizer, splits["unlabelled"], env.codec, max_new_tokens=5)
    assert len(labelled) == len(splits["unlabelled"]) and all(labelled["action"])


def _recorder(store):
    def record(prompts, completions, completion_ids, **kwargs):
        store.append({"prompts": list(prompts), "completions": list(completions), "ids": list(completion_ids)})
        return [0.0] * len(completions)

    record.__name__ = "recorder"
    return record


def test_fwm_phase_generates_exactly_one_image(world, tmp_path):
    """SwirlTrainer in phase fwm: every generated completion is exactly one well-formed image."""
    env, splits, tokenizer, fwm, idm = world
    codec = env.codec
    seen = []
    args = SwirlConfig(
        output_dir=str(tmp_path), phase="fwm", num_generations=4, per_device_train_batch_size=8, max_steps=2,
        max_completion_length=3, learning_rate=1e-2, report_to="none", bf16=False, use_cpu=True, logging_steps=1,
        save_strategy="no", seed=0, beta=0.0, temperature=1.5, disable_tqdm=True,
    )
    trainer = visual_trainer(fwm, idm, splits["labelled"], args, codec, tokenizer, reward_funcs=[_recorder(seen)])
    assert trainer.args.max_completion_length == codec.num_tokens
    trainer.train()
    assert sum(len(batch["completions"]) for batch in seen) == 16
    image_ids = set(codec.image_token_ids(tokenizer))
    for batch in seen:
        for prompt, completion, ids in zip(batch["prompts"], batch["completions"], batch["ids"]):
            assert prompt.endswith("Next state:\n<boi>")
            assert len(ids) == codec.num_tokens and set(ids) <= image_ids  # image tokens only, exactly N
            assert codec.decode(completion).size == codec.image_size  # one well-formed image
            assert completion == codec.ids_to_text(ids, tokenizer)
    logs = [log for log in trainer.state.log_history if "completions/mean_length" in log]
    assert logs and all(log["completions/min_length"] == log["completions/max_length"] == codec.num_tokens
                        for log in logs)


def test_idm_phase_generates_text_actions(world, tmp_path):
    env, splits, tokenizer, fwm, idm = world
    seen = []
    args = SwirlConfig(
        output_dir=str(tmp_path), phase="idm", num_generations=4, per_device_train_batch_size=8, max_steps=1,
        max_completion_length=4, learning_rate=1e-2, report_to="none", bf16=False, use_cpu=True,
        save_strategy="no", seed=0, beta=0.0, disable_tqdm=True,
    )
    trainer = visual_trainer(idm, fwm, splits["unlabelled"], args, env.codec, tokenizer,
                             reward_funcs=[_recorder(seen)])
    trainer.train()
    codec_ids = set(env.codec.image_token_ids(tokenizer)) | set(env.codec.marker_token_ids(tokenizer))
    assert seen and all(not set(ids) & codec_ids for batch in seen for ids in batch["ids"])


# ---------------------------------------------------------------------------------------------- partner reward
def _independent_logprob(model, tokenizer, context: str, target: str) -> float:
    """One (context, target) pair, one forward pass, no padding: mean log-probability of target + EOS."""
    ctx = tokenizer(context, add_special_tokens=True)["input_ids"]
    tgt = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([ctx + tgt])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logps = torch.log_softmax(logits[len(ctx) - 1 : -1], dim=-1)
    return logps[torch.arange(len(tgt)), torch.tensor(tgt)].mean().item()


@pytest.mark.parametrize("phase", ["fwm", "idm"])
def test_partner_reward_on_images(world, phase):
    env, splits, tokenizer, fwm, idm = world
    codec = env.codec
    rows = splits["labelled"].select(range(6))
    templates = SwirlTemplates()
    partner = idm if phase == "fwm" else fwm
    reward = PartnerReward(partner, tokenizer, phase=phase, templates=templates, clip_min=None, batch_size=4)
    rng = np.random.RandomState(0)
    if phase == "fwm":  # the completions are generated images; the IDM scores the row's action
        completions = [codec.codes_to_text(rng.randint(0, codec.codebook_size, codec.num_tokens)) for _ in rows]
        expected = [
            _independent_logprob(idm, tokenizer, templates.prompt_text("idm", state=s, next_state=c), a)
            for s, c, a in zip(rows["state"], completions, rows["action"])
        ]
    else:  # the completions are actions; the FWM scores the row's next image (<boi> ... <eoi>)
        completions = list(rows["action"][::-1])
        expected = [
            _independent_logprob(fwm, tokenizer, templates.prompt_text("fwm", state=s, action=c), n)
            for s, c, n in zip(rows["state"], completions, rows["next_state"])
        ]
    got = reward(prompts=[""] * len(rows), completions=completions, state=list(rows["state"]),
                 action=list(rows["action"]), next_state=list(rows["next_state"]))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    if phase == "idm":  # the scored target holds exactly the image's tokens, its markers and EOS
        target_ids = reward._encode_target(rows["next_state"][0], 0)
        assert len(target_ids) == codec.num_tokens + 3


# -------------------------------------------------------------------------------------------------------- metrics
def test_image_metrics():
    codec = ShapesWorld(grid=4, cell=1, patch_size=2).codec
    ref = codec.codes_to_text([1] * 16)
    same = image_metrics([ref], [ref], codec)
    assert same["token_accuracy"] == same["exact_match"] == same["valid_rate"] == 1.0
    assert same["psnr"] == 60.0 and same["l1"] == 0.0 and same.get("ssim", 1.0) == pytest.approx(1.0)
    one_off = codec.codes_to_text([0] + [1] * 15)  # one black patch on white
    metrics = image_metrics([one_off, "garbage"], [ref, ref], codec)
    assert metrics["valid_rate"] == 0.5 and metrics["exact_match"] == 0.0
    assert metrics["token_accuracy"] == pytest.approx((15 / 16 + 0) / 2)
    l1_one = 3 * 255 * 4 / (3 * 255 * 64)  # 4 black pixels of 64, every channel off by 255
    l1_gray = abs(255 - 127.5) / 255
    assert metrics["l1"] == pytest.approx((l1_one + l1_gray) / 2)
    psnr_one = 10 * math.log10(255**2 / (255**2 * 4 / 64))
    assert metrics["psnr"] == pytest.approx((psnr_one + 10 * math.log10(255**2 / 127.5**2)) / 2)


def test_action_metrics_and_evaluate(world, tmp_path):
    env, splits, tokenizer, fwm, idm = world
    test = splits["test"]
    perfect = action_metrics(test["action"], test["action"], test["state"], test["next_state"], env)
    assert perfect == {"exact_match": 1.0, "f1": 1.0, "consistency": 1.0, "invalid_rate": 0.0}
    assert action_metrics(["fly away"], ["move red square left"], test["state"][:1], test["next_state"][:1],
                          env)["invalid_rate"] == 1.0
    results = evaluate_visual(fwm, tokenizer, idm, tokenizer, test, env.codec, environment=env, num_choices=3,
                              batch_size=8, max_new_tokens=5, return_predictions=True)
    for key in ("fwm_token_accuracy", "fwm_psnr", "fwm_l1", "fwm_exact_match", "fwm_action_selection_accuracy",
                "idm_exact_match", "idm_f1", "idm_consistency"):
        assert key in results
    assert results["fwm_valid_rate"] == 1.0 and len(results["predictions"]["fwm"]) == len(test)
    path = save_strip(list(zip(test["state"][:3], test["next_state"][:3], results["predictions"]["fwm"][:3])),
                      tmp_path / "strip.png", env.codec, labels=test["action"][:3], headers=["a", "b", "c"])
    assert Image.open(path).size[0] > 3 * 8


def test_clip_similarity_code_path():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=50, max_position_embeddings=16),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        projection_dim=8,
    )
    model = CLIPModel(config)
    processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    a = Image.fromarray((np.random.RandomState(0).rand(16, 16, 3) * 255).astype(np.uint8))
    b = Image.fromarray((np.random.RandomState(1).rand(16, 16, 3) * 255).astype(np.uint8))
    assert clip_image_similarity([a, a], [a, a], model, processor) == pytest.approx(1.0, abs=1e-5)
    assert clip_image_similarity([a], [b], model, processor) < 1.0


# --------------------------------------------------------------------------------------------- AURORA format
def test_edit_dataset_paths(tmp_path):
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature
    from datasets import Value

    env = ShapesWorld(grid=4, cell=1, patch_size=2)
    trajectories = env.trajectories(8, 3, seed=1)
    rows = [(env.render(s), a, env.render(n)) for t in trajectories
            for s, a, n in zip(t["states"], t["actions"], t["states"][1:])]
    features = Features({"input": ImageFeature(), "instruction": Value("string"), "output": ImageFeature(),
                         "source": Value("string")})
    data = Dataset.from_dict({"input": [r[0] for r in rows], "instruction": [r[1] for r in rows],
                              "output": [r[2] for r in rows], "source": ["shapes"] * len(rows)}, features=features)
    data.save_to_disk(str(tmp_path / "disk"))
    data.to_parquet(str(tmp_path / "edits.parquet"))
    (tmp_path / "img").mkdir()
    with open(tmp_path / "edits.jsonl", "w") as f:
        for i, (src, action, tgt) in enumerate(rows[:5]):
            src.save(tmp_path / "img" / f"{i}a.png")
            tgt.save(tmp_path / "img" / f"{i}b.png")
            f.write(json.dumps({"before": f"img/{i}a.png", "edit": action, "after": f"img/{i}b.png"}) + "\n")

    expected = [(env.codec.encode(r[0]), r[1], env.codec.encode(r[2])) for r in rows]
    for source in ("disk", "edits.parquet"):
        loaded = load_edit_dataset(str(tmp_path / source), max_rows=len(rows))
        transitions = edit_transitions(loaded, env.codec)
        assert list(zip(transitions["state"], transitions["action"], transitions["next_state"])) == expected
    loaded = load_edit_dataset(str(tmp_path / "edits.jsonl"))
    transitions = edit_transitions(loaded, env.codec, input_column="before", instruction_column="edit",
                                   output_column="after", image_root=str(tmp_path))
    assert list(zip(transitions["state"], transitions["action"], transitions["next_state"])) == expected[:5]
    with pytest.raises(ValueError, match="--input_column"):
        edit_transitions(loaded, env.codec)

    splits = edit_splits(edit_transitions(load_edit_dataset(str(tmp_path / "disk")), env.codec),
                         labelled_fraction=0.2, test_fraction=0.2, seed=0)
    assert "action" not in splits["unlabelled"].column_names and len(splits["test"]) > 0
    test_pairs = set(zip(splits["test"]["state"], splits["test"]["next_state"]))
    for name in ("labelled", "unlabelled"):
        assert not set(zip(splits[name]["state"], splits[name]["next_state"])) & test_pairs
