"""SwirlTrainer under 2 CPU processes (DDP over gloo) against the same job in 1 process, with a separate partner model
and in two-adapter mode.

`tests/distributed_job.py` trains the tiny FWM for 2 steps against the tiny IDM partner with the same global batch in
both layouts (2 ranks x 4 completions vs 1 rank x 8, `num_generations=4`, so every rank holds whole groups) and a
layout-invariant sampler (see its docstring), so both runs must generate the same completions and follow the same
trajectory. Each rank records what its partner reward scored and what GRPO gathered.

Tolerances:
* rewards: 1e-5 (float32 log-softmax of the same sequences; only the left padding of a batch differs between layouts
  and between the batched scoring and the unbatched recomputation);
* trained weights: 1e-5 absolute, after 2 SGD steps (lr 0.5) that move the weights by ~1e-1: DDP averages per-rank
  gradients in a different summation order than the single process (observed differences ~1e-8 with a separate
  partner, ~3e-7 in two-adapter mode). SGD, not Adam, so a rounding-level gradient difference stays rounding-level in
  the weights (Adam's first step is ~lr * sign(grad)).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
JOB = HERE / "distributed_job.py"
STEPS = 2
GLOBAL_BATCH = 8
NUM_GENERATIONS = 4
REWARD_TOL = 1e-5
WEIGHT_TOL = 1e-5
TIMEOUT_S = 150


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path) -> dict:
    env = dict(os.environ)
    env.update(
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_DISABLED="true",
        # a private HF_HOME: no user-level `accelerate config` default file can change the launch
        HF_HOME=str(tmp / "hf_home"),
        PYTHONPATH=os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]),
    )
    return env


def _run(cmd: list[str], tmp: Path, name: str) -> None:
    try:
        proc = subprocess.run(
            cmd, check=False, env=_env(tmp), cwd=HERE.parent, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{name} did not finish within {TIMEOUT_S}s:\n{(err.stderr or '')[-4000:]}")
    if proc.returncode != 0:
        pytest.fail(f"{name} failed (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}")


def _accelerate() -> list[str]:
    exe = Path(sys.executable).parent / "accelerate"
    if exe.exists():
        return [str(exe)]
    if shutil.which("accelerate"):
        return [shutil.which("accelerate")]
    return [sys.executable, "-m", "accelerate.commands.launch"]  # pragma: no cover


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    sys.path.insert(0, str(HERE))
    import distributed_job

    distributed_job.build_models(str(models))  # once, so every run starts from the very same files
    return models


@pytest.fixture(scope="module", params=["separate", "two_adapter"])
def runs(request, tmp_path_factory, models_dir):
    """The job in 2 processes and in 1, with a separate partner model or in two-adapter mode (DDP over a PeftModel
    whose 'fwm' adapter is the policy and 'idm' adapter the partner)."""
    mode = request.param
    tmp = tmp_path_factory.mktemp(f"distributed_{mode}")
    launcher = _accelerate()
    if launcher[0].endswith("accelerate"):
        launcher = launcher + ["launch"]
    extra = ["--two_adapter"] if mode == "two_adapter" else []
    # `--multi_gpu` with no visible GPU starts 2 torchrun processes that the job joins into a gloo group on the CPU
    # (`accelerate launch --cpu --num_processes 2` starts one process only, unless an MPI hostfile is given)
    two = [
        *launcher, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(JOB), "--out", str(tmp / "two"), "--models", str(models_dir), "--steps", str(STEPS), *extra,
    ]  # fmt: skip
    one = [
        sys.executable, str(JOB), "--out", str(tmp / "one"), "--models", str(models_dir), "--steps", str(STEPS),
        *extra,
    ]  # fmt: skip
    _run(two, tmp, f"2-process job ({mode})")
    _run(one, tmp, f"1-process job ({mode})")

    def load(name):
        folder = tmp / name
        ranks = sorted(folder.glob("rank*.json"))
        return [json.loads(p.read_text()) for p in ranks]

    return {"two": load("two"), "one": load("one"), "tmp": tmp, "models": models_dir, "mode": mode}


ROW_KEYS = ("uids", "prompts", "completions", "states", "actions")


def test_layouts(runs):
    assert [r["rank"] for r in runs["two"]] == [0, 1] and all(r["world_size"] == 2 for r in runs["two"])
    assert [r["rank"] for r in runs["one"]] == [0] and runs["one"][0]["world_size"] == 1
    assert all(r["two_adapter"] == (runs["mode"] == "two_adapter") for r in runs["two"] + runs["one"])
    assert [r["per_device_train_batch_size"] for r in runs["two"]] == [4, 4]
    assert runs["one"][0]["per_device_train_batch_size"] == 8


@pytest.mark.parametrize("layout", ["two", "one"])
def test_each_rank_scores_exactly_its_own_completions(runs, layout):
    ranks = runs[layout]
    world = len(ranks)
    n = GLOBAL_BATCH // world
    for rank in ranks:
        assert len(rank["calls"]) == STEPS and len(rank["gathered"]) == STEPS  # one partner call per step per rank
        assert rank["partner_frozen"] and not rank["partner_in_optimizer"]
    for step in range(STEPS):
        gathered = ranks[0]["gathered"][step]
        for other in ranks[1:]:  # every rank holds the same gathered rewards and rows
            assert other["gathered"][step] == gathered
        assert len(gathered["rewards"]) == GLOBAL_BATCH
        for key in ROW_KEYS:
            assert len(gathered[key]) == GLOBAL_BATCH
        # rank r's slice of the gathered batch is exactly what rank r scored, reward for reward
        for r, rank in enumerate(ranks):
            call = rank["calls"][step]
            assert len(call["completions"]) == n
            for key in ROW_KEYS:
                assert call[key] == gathered[key][r * n : (r + 1) * n], (layout, step, r, key)
            assert call["rewards"] == gathered["rewards"][r * n : (r + 1) * n]
        # the union of the ranks is the gathered batch, with nothing scored twice: each rank holds whole groups of
        # its own prompts (disjoint across ranks), and each prompt has exactly num_generations completions
        union = [u for rank in ranks for u in rank["calls"][step]["uids"]]
        assert union == gathered["uids"]
        for r, rank in enumerate(ranks):
            others = {u for q, o in enumerate(ranks) if q != r for u in o["calls"][step]["uids"]}
            assert not set(rank["calls"][step]["uids"]) & others
        assert all(gathered["uids"].count(u) == NUM_GENERATIONS for u in set(gathered["uids"]))
        assert len(set(gathered["uids"])) == GLOBAL_BATCH // NUM_GENERATIONS
    # different steps score different prompts
    assert set(ranks[0]["gathered"][0]["uids"]).isdisjoint(ranks[0]["gathered"][1]["uids"])


def test_gathered_rewards_equal_an_independent_recomputation(runs):
    from trl_swirl import PartnerReward
    from trl_swirl.tiny import load_pretrained

    if runs["mode"] == "two_adapter":
        import distributed_job
        from safetensors.torch import load_file

        base, tokenizer = load_pretrained(runs["models"] / "fwm")
        model = distributed_job.two_adapter_policy(base)  # seeded: the job's initial adapters
        initial = load_file(runs["tmp"] / "two" / "initial_weights.safetensors")
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in initial.items())
        reward = PartnerReward(model, tokenizer, phase="fwm", adapter_name="idm", batch_size=1)
    else:
        model, tokenizer = load_pretrained(runs["models"] / "idm")
        reward = PartnerReward(model, tokenizer, phase="fwm", batch_size=1)
    # unbatched (batch_size=1), built here from the saved files: independent of the job's batching and placement
    for layout in ("two", "one"):
        for step in range(STEPS):
            g = runs[layout][0]["gathered"][step]
            expected = reward(
                prompts=g["prompts"], completions=g["completions"], state=g["states"], action=g["actions"]
            )
            assert g["rewards"] == pytest.approx(expected, abs=REWARD_TOL), (layout, step)
            assert len({round(x, 5) for x in expected}) > 1  # the completions really change the reward


def test_trained_weights_match_the_single_process_run(runs):
    from safetensors.torch import load_file

    two, one = runs["two"], runs["one"]
    # the same completions were generated in both layouts (layout-invariant sampling), and scored alike
    for step in range(STEPS):
        g2, g1 = two[0]["gathered"][step], one[0]["gathered"][step]
        for key in ROW_KEYS:
            assert g2[key] == g1[key], (step, key)
        assert g2["rewards"] == pytest.approx(g1["rewards"], abs=REWARD_TOL)
    # DDP kept the replicas identical
    assert two[0]["weights_sha256"] == two[1]["weights_sha256"]
    # the same losses were logged
    losses2 = [h["loss"] for h in two[0]["log_history"] if "loss" in h]
    losses1 = [h["loss"] for h in one[0]["log_history"] if "loss" in h]
    assert len(losses1) == STEPS and losses2 == pytest.approx(losses1, abs=1e-5)

    tmp = runs["tmp"]
    w2 = load_file(tmp / "two" / "final_weights.safetensors")
    w1 = load_file(tmp / "one" / "final_weights.safetensors")
    w0 = load_file(tmp / "two" / "initial_weights.safetensors")
    assert all(torch.equal(w0[k], v) for k, v in load_file(tmp / "one" / "initial_weights.safetensors").items())
    assert set(w1) == set(w2)
    assert all(torch.isfinite(t).all() for t in w2.values())
    diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert diff <= WEIGHT_TOL, f"2-process and 1-process weights differ by {diff:.2e} (> {WEIGHT_TOL})"
    if runs["mode"] == "two_adapter":
        policy = [k for k in w0 if ".fwm." in k]
        frozen = [k for k in w0 if ".idm." in k or "lora_" not in k]  # the partner adapter and the base
        assert policy and frozen
        for w in (w1, w2):
            for k in frozen:
                assert torch.equal(w[k], w0[k]), f"{k} changed: the partner adapter and the base must stay frozen"
        moved = max((w1[k] - w0[k]).abs().max().item() for k in policy)
    else:
        moved = max((w1[k] - w0[k]).abs().max().item() for k in w0)
    assert moved > 1e-2, f"training barely changed the weights ({moved:.2e}): the comparison would be vacuous"


# ------------------------------------------------------------------------------------ ZeRO-3-like forward counts
SYNC_JOB = HERE / "sync_scoring_job.py"


def test_ranks_run_the_same_number_of_partner_passes(tmp_path, models_dir):
    """With a partner whose forward passes are collectives (as under ZeRO-3), ranks whose data needs different numbers
    of passes still finish, with equal counts, and score what they would score alone."""
    sys.path.insert(0, str(HERE))
    import sync_scoring_job as job

    from trl_swirl import PartnerReward
    from trl_swirl.tiny import load_pretrained

    # alone, the two ranks' batches need different numbers of passes: the synchronisation is not vacuous
    model, tokenizer = load_pretrained(models_dir / "idm")
    alone = PartnerReward(model, tokenizer, phase="fwm", clip_min=None)
    expected, counts = [], []
    for rank in (0, 1):
        states, completions, actions = job.rank_batch(rank)
        expected.append(alone(completions=completions, state=states, action=actions))
        counts.append(alone.last_stats["forward_calls"])
    assert counts[0] > counts[1] >= 1
    second_alone = alone(completions=job.GENERATED, state=[job.LONG[0]] * 4, action=["push ball right"] * 4)
    second_count = alone.last_stats["forward_calls"]

    launcher = _accelerate()
    if launcher[0].endswith("accelerate"):
        launcher = launcher + ["launch"]
    cmd = [
        *launcher, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(SYNC_JOB), "--models", str(models_dir), "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    _run(cmd, tmp_path, "2-process synchronised scoring job")
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["passes_first_call"] for r in ranks] == [counts[0], counts[0]]  # rank 1 padded up to rank 0
    assert [r["passes_total"] for r in ranks] == [counts[0] + second_count] * 2
    assert ranks[1]["stats"]["padding_passes"] == second_count and ranks[1]["second"] == []
    for rank, values in zip(ranks, expected):
        assert rank["rewards"] == pytest.approx(values, abs=REWARD_TOL)
    assert ranks[0]["second"] == pytest.approx(second_alone, abs=REWARD_TOL)
