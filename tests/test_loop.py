"""The SWIRL loop on a tiny environment: labels, both phases, records, checkpoints, resume, and bad input."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, load_from_disk

from test_hub import hub  # noqa: F401  (the loopback Hub fixture)

from trl_swirl import SwirlConfig
from trl_swirl.loop import SwirlLoopConfig, label_dataset, load_model, phase_plan, run_loop
from trl_swirl.templates import SwirlTemplates


def small_configs(run_dir, **loop_overrides):
    loop = dict(
        environment="physics", num_trajectories=30, trajectory_length=4, labelled_fraction=0.2, test_fraction=0.2,
        swirl_iterations=1, warmstart_epochs=8, fwm_max_steps=2, idm_max_steps=2, eval_max_samples=12,
        eval_num_choices=2, eval_max_new_tokens=20, label_max_new_tokens=8, tiny_hidden_size=32,
    )
    loop.update(loop_overrides)
    swirl = SwirlConfig(
        output_dir=str(run_dir), num_generations=4, per_device_train_batch_size=4, max_completion_length=16,
        learning_rate=1e-3, beta=0.04, report_to="none", bf16=False, logging_steps=1, disable_tqdm=True, seed=0,
    )
    return SwirlLoopConfig(**loop), swirl


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("loop") / "run"
    loop_args, swirl_args = small_configs(run_dir)
    records = run_loop(loop_args, swirl_args)
    return run_dir, records


def test_one_iteration_writes_labels_phases_records_and_checkpoints(finished_run):
    run_dir, records = finished_run
    names = [r["name"] for r in records]
    assert names == ["iter-0-warmstart-fwm", "iter-0-warmstart-idm", "iter-1-labels", "iter-1-fwm", "iter-1-idm"]
    assert [f"iter-{k}-{n}" for k, n in phase_plan(1)] == names
    for name in names:
        folder = run_dir / name
        assert folder.is_dir() and not (run_dir / f"{name}.partial").exists()
        record = json.loads((folder / "swirl_record.json").read_text())
        assert record["name"] == name
        if name != "iter-1-labels":
            assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
            assert not list(folder.glob("*.bin")), "checkpoints hold no pickles"
            assert set(record["metrics"]) >= {"fwm_exact_match", "fwm_f1", "idm_exact_match", "idm_consistency"}
    fwm_record = records[3]
    assert fwm_record["trainer"] == "swirl-grpo" and fwm_record["partner"]["role"] == "idm"
    assert fwm_record["partner"]["name"].endswith("iter-0-warmstart-idm")
    assert "rewards/swirl_partner_logprob/mean/last" in fwm_record["rewards"]
    assert records[4]["partner"]["name"].endswith("iter-1-fwm")  # the IDM phase is rewarded by the new FWM
    assert (run_dir / "iter-1-fwm" / "README.md").exists()
    results = json.loads((run_dir / "results.json").read_text())
    assert [r["name"] for r in results["records"]] == names


def test_labels_are_the_idms_greedy_outputs_and_true_actions_never_reach_training(finished_run):
    from trl_swirl.evaluation import generate

    run_dir, _ = finished_run
    splits = load_from_disk(str(run_dir / "data"))
    assert "action" not in splits["unlabelled"].column_names
    labels = load_from_disk(str(run_dir / "iter-1-labels" / "dataset"))
    idm, tok = load_model(str(run_dir / "iter-0-warmstart-idm"))
    templates = SwirlTemplates()
    prompts = [templates.prompt_text("idm", state=s, next_state=n) for s, n in zip(labels["state"], labels["next_state"])]
    expected = generate(idm, tok, prompts, max_new_tokens=8, batch_size=64)
    assert labels["action"] == expected  # recomputed independently: the labels come from the IDM, not the env
    assert len(labels) <= len(splits["unlabelled"])


def test_resume_skips_finished_phases_and_redoes_an_interrupted_one(finished_run, tmp_path):
    run_dir, records = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = {name: digest(copy / name) for name in ("iter-0-warmstart-fwm", "iter-1-labels", "iter-1-fwm")}
    # interrupt the last phase: its folder is gone and a half-written one is left behind
    shutil.rmtree(copy / "iter-1-idm")
    (copy / "iter-1-idm.partial").mkdir()
    (copy / "iter-1-idm.partial" / "junk.txt").write_text("half written")
    loop_args, swirl_args = small_configs(copy)
    again = run_loop(loop_args, swirl_args)
    assert [r["name"] for r in again] == [r["name"] for r in records]
    for name, value in before.items():
        assert digest(copy / name) == value, f"{name} was rewritten"
    assert (copy / "iter-1-idm" / "model.safetensors").exists() and not (copy / "iter-1-idm.partial").exists()
    assert again[:4] == records[:4]  # finished records reused as they were
    # more iterations continue the same run
    loop_args, swirl_args = small_configs(copy, swirl_iterations=2, fwm_max_steps=2)
    longer = run_loop(loop_args, swirl_args)
    assert [r["name"] for r in longer][-3:] == ["iter-2-labels", "iter-2-fwm", "iter-2-idm"]
    assert digest(copy / "iter-1-fwm") == before["iter-1-fwm"]


def test_resume_with_another_config_and_foreign_folder_are_refused(finished_run, tmp_path):
    run_dir, _ = finished_run
    loop_args, swirl_args = small_configs(run_dir, fwm_max_steps=3)
    with pytest.raises(ValueError, match=r"(?s)another configuration.*loop\.fwm_max_steps: recorded 2, now 3"):
        run_loop(loop_args, swirl_args)
    loop_args, swirl_args = small_configs(run_dir)
    swirl_args.beta = 0.5
    with pytest.raises(ValueError, match=r"swirl\.beta: recorded 0\.04, now 0\.5"):
        run_loop(loop_args, swirl_args)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    loop_args, swirl_args = small_configs(other)
    with pytest.raises(ValueError, match=r"(?s)is not empty and holds no SWIRL run.*Nothing in it is overwritten"):
        run_loop(loop_args, swirl_args)
    assert (other / "notes.txt").read_text() == "mine" and sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def _splits(unlabelled_rows, labelled_rows, test_rows):
    cols = lambda rows, with_action: {  # noqa: E731
        "state": [r[0] for r in rows], "next_state": [r[2] for r in rows],
        **({"action": [r[1] for r in rows]} if with_action else {}),
    }
    return DatasetDict({
        "unlabelled": Dataset.from_dict(cols(unlabelled_rows, False)),
        "labelled": Dataset.from_dict(cols(labelled_rows, True)),
        "test": Dataset.from_dict(cols(test_rows, True)),
    })


def test_bad_data_is_refused_before_training(tmp_path):
    a = ("ball at 1 0 vel 0 0", "wait", "ball at 1 0 vel 0 0")
    b = ("ball at 2 0 vel 0 0", "push ball left", "ball at 1 0 vel -1 0")
    c = ("ball at 3 0 vel 0 0", "push ball right", "ball at 4 0 vel 1 0")
    loop_args, swirl_args = small_configs(tmp_path / "r1")
    with pytest.raises(ValueError, match="There are no unlabelled pairs"):
        run_loop(loop_args, swirl_args, splits=_splits([], [a], [c]))
    loop_args, swirl_args = small_configs(tmp_path / "r2")
    with pytest.raises(ValueError, match=r"The 'labelled' split overlaps the 'test' split"):
        run_loop(loop_args, swirl_args, splits=_splits([b], [a, c], [c]))
    loop_args, swirl_args = small_configs(tmp_path / "r3")
    with pytest.raises(ValueError, match=r"Row 0 of the 'unlabelled' split has an empty 'next_state'"):
        run_loop(loop_args, swirl_args, splits=_splits([(b[0], "", "")], [a], [c]))
    with pytest.raises(ValueError, match=r"Unknown `environment` 'chess'"):
        SwirlLoopConfig(environment="chess")
    for name in ("r1", "r2", "r3"):  # nothing was written for a refused run
        assert not (tmp_path / name).exists()


def test_label_dataset_replaces_an_existing_action_column(tmp_path):
    from trl_swirl.tiny import build_tiny_causal_lm, build_word_tokenizer

    tok = build_word_tokenizer(["ball at 1 0", "wait", "push"])
    idm = build_tiny_causal_lm(tok, hidden_size=32)
    data = Dataset.from_dict({"state": ["ball at 1 0"] * 3, "next_state": ["ball at 1 0"] * 3, "action": ["TRUE"] * 3})
    out = label_dataset(idm, tok, data, SwirlTemplates(), max_new_tokens=4)
    assert "TRUE" not in out["action"] and out.column_names.count("action") == 1


def test_warm_start_fits_both_directions_and_never_overwrites(tmp_path):
    from trl_swirl import warm_start
    from trl_swirl.data import make_splits
    from trl_swirl.tiny import build_tiny_causal_lm, build_word_tokenizer, save_pretrained

    splits = make_splits("physics", num_trajectories=20, length=4, labelled_fraction=0.5, test_fraction=0.2)
    labelled = splits["labelled"]
    tok = build_word_tokenizer(list(labelled["state"]) + list(labelled["next_state"]) + list(labelled["action"]))
    refs = {r: save_pretrained(build_tiny_causal_lm(tok, hidden_size=32, seed=i), tok, tmp_path / f"base-{r}")
            for i, r in enumerate(("fwm", "idm"))}
    _, swirl_args = small_configs(tmp_path / "unused")
    fwm_dir, idm_dir = warm_start(refs["fwm"], refs["idm"], labelled, tmp_path / "ws", swirl_args, epochs=3,
                                  learning_rate=3e-3)
    from trl_swirl.evaluation import sequence_logprobs

    templates = SwirlTemplates()
    ctx = [templates.prompt_text("fwm", state=s, action=a) for s, a in zip(labelled["state"], labelled["action"])]
    before = sequence_logprobs(load_model(refs["fwm"])[0], tok, ctx, labelled["next_state"])
    after = sequence_logprobs(load_model(fwm_dir)[0], tok, ctx, labelled["next_state"])
    assert sum(after) / len(after) > sum(before) / len(before) + 0.5  # the FWM learned its direction
    ctx = [templates.prompt_text("idm", state=s, next_state=n) for s, n in zip(labelled["state"], labelled["next_state"])]
    before = sequence_logprobs(load_model(refs["idm"])[0], tok, ctx, labelled["action"])
    after = sequence_logprobs(load_model(idm_dir)[0], tok, ctx, labelled["action"])
    assert sum(after) / len(after) > sum(before) / len(before) + 0.5  # and the IDM its own
    with pytest.raises(ValueError, match="never overwrites a checkpoint"):
        warm_start(refs["fwm"], refs["idm"], labelled, tmp_path / "ws", swirl_args, epochs=1)


def test_loop_pushes_every_phase_as_its_own_revision(tmp_path, hub):  # noqa: F811 (the hub fixture)
    """The loop pushes FWM phases to PREFIX-fwm and IDM phases to PREFIX-idm, one branch each, main = latest."""
    from huggingface_hub import HfApi

    loop_args, swirl_args = small_configs(tmp_path / "run", push_to_hub_prefix="tester/swirl-physics")
    run_loop(loop_args, swirl_args)
    api = HfApi()
    fwm_refs = {b.name for b in api.list_repo_refs("tester/swirl-physics-fwm").branches}
    idm_refs = {b.name for b in api.list_repo_refs("tester/swirl-physics-idm").branches}
    assert {"iter-0-warmstart", "iter-1-fwm", "main"} <= fwm_refs
    assert {"iter-0-warmstart", "iter-1-idm", "main"} <= idm_refs
    data_refs = {b.name for b in api.list_repo_refs("tester/swirl-physics-data", repo_type="dataset").branches}
    assert {"iter-0-data", "iter-1-labels"} <= data_refs  # the state-only data and the pseudo-labels
    record = json.loads((tmp_path / "run" / "iter-1-fwm" / "swirl_record.json").read_text())
    assert record["pushed"]["repo_id"] == "tester/swirl-physics-fwm" and record["pushed"]["revision"] == "iter-1-fwm"
    from transformers import AutoModelForCausalLM

    local = load_model(str(tmp_path / "run" / "iter-1-fwm"))[0]
    remote = AutoModelForCausalLM.from_pretrained("tester/swirl-physics-fwm", revision="iter-1-fwm")
    assert all((a == b).all() for a, b in zip(local.state_dict().values(), remote.state_dict().values()))


def test_multiturn_rows_reach_prompts_partner_and_evaluation(tmp_path):
    """With `multiturn`, rows carry a `history`, and templates using '{history}' show it everywhere."""
    fwm_t = "History:\n{history}\nState:\n{state}\nAction:\n{action}\nNext state:\n"
    idm_t = "History:\n{history}\nState:\n{state}\nNext state:\n{next_state}\nAction:\n"
    loop_args, swirl_args = small_configs(tmp_path / "run", multiturn=True, max_history=2)
    swirl_args.fwm_template, swirl_args.idm_template = fwm_t, idm_t
    records = run_loop(loop_args, swirl_args)
    splits = load_from_disk(str(tmp_path / "run" / "data"))
    assert "history" in splits["unlabelled"].column_names
    assert any(len(h) == 2 for h in splits["unlabelled"]["history"])
    labels = load_from_disk(str(tmp_path / "run" / "iter-1-labels" / "dataset"))
    assert "history" in labels.column_names
    assert records[-1]["templates"]["fwm_template"] == fwm_t and "idm_consistency" in records[-1]["metrics"]
    # the labels were generated from prompts that include the history
    from trl_swirl.evaluation import generate

    idm, tok = load_model(str(tmp_path / "run" / "iter-0-warmstart-idm"))
    row = labels[0]
    prompt = idm_t.format(history="\n".join(row["history"]), state=row["state"], next_state=row["next_state"])
    assert generate(idm, tok, [prompt], max_new_tokens=8)[0] == row["action"]


def test_a_chain_continues_from_the_hub_alone(tmp_path, hub, monkeypatch):  # noqa: F811 (the hub fixture)
    """Run 1 pushes its data and phases; run 2, in a new folder, starts from the Hub's latest revisions and data
    and pushes iteration 2 beside iteration 1, which is left as it was."""
    import datasets.config as datasets_config
    from huggingface_hub import HfApi

    monkeypatch.setattr(datasets_config, "HF_HUB_OFFLINE", False, raising=False)
    monkeypatch.setattr(datasets_config, "HF_DATASETS_OFFLINE", False, raising=False)
    monkeypatch.setattr(datasets_config, "HF_ENDPOINT", hub.url, raising=False)
    prefix = "tester/chain"
    loop_args, swirl_args = small_configs(tmp_path / "run1", push_to_hub_prefix=prefix)
    run_loop(loop_args, swirl_args)
    api = HfApi()
    iter1 = api.list_repo_refs(f"{prefix}-fwm").branches
    iter1 = {b.name: b.target_commit for b in iter1 if b.name == "iter-1-fwm"}
    loop_args, swirl_args = small_configs(
        tmp_path / "run2", push_to_hub_prefix=prefix, warmstart=False, first_iteration=2,
        fwm_model_name_or_path=f"{prefix}-fwm@iter-1-fwm", idm_model_name_or_path=f"{prefix}-idm@iter-1-idm",
        dataset_path=f"{prefix}-data@iter-0-data",
    )
    records = run_loop(loop_args, swirl_args)
    assert [r["name"] for r in records] == ["iter-2-labels", "iter-2-fwm", "iter-2-idm"]
    assert records[1]["partner"]["name"] == f"{prefix}-idm@iter-1-idm"
    local = load_from_disk(str(tmp_path / "run2" / "data"))
    original = load_from_disk(str(tmp_path / "run1" / "data"))
    assert local["unlabelled"]["next_state"] == original["unlabelled"]["next_state"]  # the same data, from the Hub
    branches = {b.name: b.target_commit for b in api.list_repo_refs(f"{prefix}-fwm").branches}
    assert "iter-2-fwm" in branches and branches["iter-1-fwm"] == iter1["iter-1-fwm"]
    assert "iter-2-idm" in {b.name for b in api.list_repo_refs(f"{prefix}-idm").branches}
