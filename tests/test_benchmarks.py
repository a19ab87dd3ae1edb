"""The scoring benchmark runs end to end at a tiny size: its three scoring paths agree on every workload, and the
results file it writes reads back with the ratio and the work counts (timings themselves are not asserted)."""

import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench_scoring(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    import bench_scoring

    yield bench_scoring
    torch.set_num_threads(threads)
    sys.modules.pop("bench_scoring", None)


def test_scoring_benchmark_writes_agreeing_results(bench_scoring, tmp_path, capsys):
    argv = ["--repeats", "1", "--model", "64,2,512", "--memory_model", "32,1", "--results_dir", str(tmp_path)]
    assert bench_scoring.main(argv) == 0
    result = json.loads((tmp_path / "scoring.json").read_text())
    assert result["benchmark"] == "scoring" and result["target"] == ">= 5"
    assert result["target_met"] == (result["scoring_speedup_ratio"] >= 5)
    assert [w["workload"] for w in result["workloads"]] == list(bench_scoring.WORKLOADS)
    assert len(result["models"]) == 1 and result["models"][0]["hidden_size"] == 64
    for run in result["workloads"]:
        _, _, generations, image_tokens = bench_scoring.WORKLOADS[run["workload"]]
        assert max(run["max_abs_diff"].values()) < 1e-4
        assert run["per_sample_median_s"] / run["batched_median_s"] == pytest.approx(run["scoring_speedup_ratio"])
        if generations > 1:  # groups share their prompt: fewer tokens computed than in all the pairs
            assert run["computed_tokens"] < run["tokens"]
            if image_tokens:  # the shared 256-token state is most of each group's work
                assert run["computed_tokens"] < 0.7 * run["tokens"]
    # the memory modes scored the same pairs alike, and every tensor they allocated was released
    modes = result["memory"]["modes"]
    assert list(modes) == list(bench_scoring.MEMORY_MODES) == ["whole_sequences", "shared_prefix"]
    sums = [m["sum_of_rewards"] for m in modes.values()]
    assert max(sums) - min(sums) < 1e-3
    assert all(m["peak_mb"] > 0 and abs(m["final_mb"]) < 1e-6 for m in modes.values())
    assert modes["whole_sequences"]["stats"]["computed_tokens"] > modes["shared_prefix"]["stats"]["computed_tokens"]
    main = result["main"]
    assert main["workload"] == bench_scoring.MAIN_WORKLOAD and main["num_completions"] == 32
    assert main["scoring_stats"]["pairs"] == 32
    assert "scoring_speedup_ratio (main: grpo_fwm, hidden 64, 2 layers, vocab 512)" in capsys.readouterr().out


def test_scoring_benchmark_flag_errors(bench_scoring, capsys):
    with pytest.raises(SystemExit):
        bench_scoring.main(["--model", "64,2"])
    assert "--model must be HIDDEN,LAYERS,VOCAB" in capsys.readouterr().err
