"""`examples/vlm_aurora.py` end to end under `accelerate launch`, on its embedded default (the built-in visual world,
tiny models built locally, no download) and on a local AURORA-format file, for a few steps."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("PIL")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "vlm_aurora.py"
CONFIGS = ROOT / "examples" / "accelerate_configs"
TIMEOUT_S = 120
FEW_STEPS = [
    "--num_trajectories", "40", "--warmstart_epochs", "1", "--swirl_iterations", "1", "--fwm_max_steps", "2",
    "--idm_max_steps", "2", "--eval_max_samples", "8", "--strip_examples", "3", "--disable_tqdm", "true",
]


def _accelerate() -> list[str]:
    exe = Path(sys.executable).parent / "accelerate"
    if exe.exists():
        return [str(exe)]
    if shutil.which("accelerate"):
        return [shutil.which("accelerate")]
    return [sys.executable, "-m", "accelerate.commands.launch"]  # pragma: no cover


def _run(launch_args: list[str], script_args: list[str], tmp_path: Path) -> str:
    env = dict(os.environ)
    env.update(
        CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_DISABLED="true",
        HF_HOME=str(tmp_path / "hf_home"),  # no user-level `accelerate config` default file
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    cmd = [*_accelerate(), "launch", *launch_args, str(SCRIPT), *script_args]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{' '.join(cmd)} did not finish in {TIMEOUT_S}s:\n{(err.stderr or '')[-4000:]}")
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout


def _check_run(out: Path, with_environment: bool) -> dict:
    results = json.loads((out / "results.json").read_text())
    names = [r["name"] for r in results["records"]]
    assert names == ["iter-0-base", "iter-0-warmstart-fwm", "iter-0-warmstart-idm", "iter-1-labels", "iter-1-fwm",
                     "iter-1-idm"]
    final = results["records"][-1]["metrics"]
    assert final["fwm_valid_rate"] == 1.0  # every generated image is well formed
    for key in ("fwm_token_accuracy", "fwm_psnr", "fwm_l1", "idm_exact_match", "idm_f1"):
        assert key in final
    assert ("idm_consistency" in final) == with_environment
    for phase in ("iter-1-fwm", "iter-1-idm"):
        assert (out / phase / "model.safetensors").exists()
    assert (out / "strip.png").exists()
    return results


def test_pep723_header_and_docstring():
    text = SCRIPT.read_text()
    block = re.search(r"(?m)^# /// script$\s(?P<content>(^#(| .*)$\s)+)^# ///$", text)
    assert block, "PEP 723 script block missing"
    metadata = tomllib.loads("".join(line[2:] if line.startswith("# ") else line[1:]
                                     for line in block.group("content").splitlines(keepends=True)))
    assert "trl-swirl" in metadata["dependencies"] and "requires-python" in metadata
    assert "accelerate launch --config_file examples/accelerate_configs/single_gpu.yaml examples/vlm_aurora.py" in text


def test_default_without_config(tmp_path):
    out = tmp_path / "run"
    stdout = _run([], ["--output_dir", str(out), *FEW_STEPS], tmp_path)
    assert "done:" in stdout
    _check_run(out, with_environment=True)


def test_single_gpu_config_on_cpu(tmp_path):
    out = tmp_path / "run"
    _run(["--config_file", str(CONFIGS / "single_gpu.yaml"), "--cpu", "--num_processes", "1"],
         ["--output_dir", str(out), *FEW_STEPS], tmp_path)
    _check_run(out, with_environment=True)


def test_multi_gpu_config_two_cpu_processes_on_local_aurora_file(tmp_path):
    """DDP over 2 CPU processes, on AURORA-format rows read from a local parquet file (columns renamed)."""
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature
    from datasets import Value

    from trl_swirl.envs.visual import ShapesWorld

    env = ShapesWorld(grid=4, cell=1, patch_size=2)
    rows = [(env.render(s), a, env.render(n)) for t in env.trajectories(16, 3, seed=0)
            for s, a, n in zip(t["states"], t["actions"], t["states"][1:])]
    features = Features({"before": ImageFeature(), "text": Value("string"), "after": ImageFeature()})
    Dataset.from_dict({"before": [r[0] for r in rows], "text": [r[1] for r in rows], "after": [r[2] for r in rows]},
                      features=features).to_parquet(str(tmp_path / "edits.parquet"))
    out = tmp_path / "run"
    _run(["--config_file", str(CONFIGS / "multi_gpu.yaml"), "--cpu", "--num_processes", "2"],
         ["--output_dir", str(out), "--dataset_name", str(tmp_path / "edits.parquet"), "--input_column", "before",
          "--instruction_column", "text", "--output_column", "after", "--codec_grid", "4", "--codec_patch_size", "2",
          "--labelled_fraction", "0.3", "--test_fraction", "0.2", "--per_device_train_batch_size", "8",
          *FEW_STEPS], tmp_path)
    _check_run(out, with_environment=False)
