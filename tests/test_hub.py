"""Pushing SWIRL phases and datasets to a Hub: cards, upload folders, branches, resume, retries, secrets.

Every network test runs against `tests/hub_server.py`, a Hub-compatible server on 127.0.0.1 started per test; the
`hub` fixture points `huggingface_hub` (and so `transformers`) at it. No test touches the real Hub.
"""

import json
import logging
import socket

import pytest
import torch
from conftest import CORPUS, STATES
from hub_server import HubServer
from huggingface_hub import DatasetCard, ModelCard, constants
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_swirl import hub as swirl_hub
from trl_swirl.hub import (
    HubPushError,
    download_phase,
    find_phase_folders,
    main_push,
    prepare_upload_folder,
    push_dataset,
    push_phase,
    push_run,
    render_model_card,
    repo_ids,
    resolve_model_reference,
    revision_name,
    scrub_secrets,
    upload_allow_patterns,
)
from trl_swirl.templates import DEFAULT_FWM_TEMPLATE, DEFAULT_IDM_TEMPLATE
from trl_swirl.tiny import build_tiny_causal_lm, build_word_tokenizer, save_pretrained

SECRET = "hf_ConfigSecretToken0123456789abcdefXYZ"  # a token that ends up in a training config
PUSH_TOKEN = "hf_PushSecretToken0123456789abcdefXYZ"  # the token a push is made with
FIXTURE_TOKEN = "hf_FixtureEnvToken0123456789abcdefXYZ"  # HF_TOKEN during the network tests
MODEL_FILES = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


# --------------------------------------------------------------------------------------------------- helpers
def make_phase(run, *, iteration, phase, role, seed=0, partner=None, config=None, metrics=None,
               base_model="tiny-org/tiny-base", name=None):
    """A finished phase folder as the SWIRL loop writes it: tiny model (safetensors), tokenizer, swirl_record.json."""
    name = name or (f"iter-{iteration}-warmstart-{role}" if phase == "warmstart" else f"iter-{iteration}-{role}")
    folder = run / name
    tok = build_word_tokenizer(CORPUS)
    model = build_tiny_causal_lm(tok, seed=seed, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    save_pretrained(model, tok, folder)
    record = {
        "iteration": iteration,
        "phase": phase,
        "role": role,
        "global_step": 20 * iteration,
        "base_model": base_model,
        "partner": {"name": partner, "repo_id": None, "revision": None},
        "rewards": {"swirl_partner_logprob/mean": -2.1 + 0.1 * iteration},
        "metrics": metrics if metrics is not None else {f"{role}_exact_match": 0.31, f"{role}_f1": 0.7},
        "datasets": ["local:physics"],
        "config": config if config is not None else {"learning_rate": 2e-5, "beta": 0.04, "num_generations": 8},
        "templates": {"fwm_template": DEFAULT_FWM_TEMPLATE, "idm_template": DEFAULT_IDM_TEMPLATE},
        "created": "2026-11-25T12:00:00Z",
    }
    (folder / "swirl_record.json").write_text(json.dumps(record, indent=2))
    return folder


def make_run(run):
    """RUN/ with the warm start and one SWIRL iteration, partners named as local folders of the run."""
    run.mkdir(exist_ok=True)
    return [
        make_phase(run, iteration=0, phase="warmstart", role="fwm", seed=0),
        make_phase(run, iteration=0, phase="warmstart", role="idm", seed=1),
        make_phase(run, iteration=1, phase="fwm", role="fwm", seed=2, partner=str(run / "iter-0-warmstart-idm")),
        make_phase(run, iteration=1, phase="idm", role="idm", seed=3, partner=str(run / "iter-1-fwm")),
    ]


def record_of(folder):
    return json.loads((folder / "swirl_record.json").read_text())


def n_commits(server, repo_id, repo_type="model"):
    return len(server.get_repo(repo_id, repo_type).commits)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A Hub on 127.0.0.1; huggingface_hub and transformers pointed at it (online, plain HTTP uploads, own cache)."""
    server = HubServer().start()
    url = server.url
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_TOKEN", FIXTURE_TOKEN)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    # huggingface_hub reads these at import: patch the module constants it uses at call time
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # LFS basic transfer instead of the Xet protocol
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    # transformers keeps one shared HfApi, bound to the endpoint of its first use: a new one per test server
    import transformers.utils.hub as transformers_hub

    monkeypatch.setattr(transformers_hub, "_hf_api", None, raising=False)
    assert constants.ENDPOINT.startswith("http://127.0.0.1:")
    yield server
    server.stop()


# --------------------------------------------------------------------------------------------------- names, secrets
def test_revision_name_and_repo_ids():
    assert revision_name(2, "fwm") == "iter-2-fwm"
    assert revision_name(3, "idm") == "iter-3-idm"
    assert revision_name(0, "warmstart") == "iter-0-warmstart"
    for bad in [(-1, "fwm"), (1.0, "fwm"), (True, "fwm"), (1, "sft"), (1, "FWM")]:
        with pytest.raises(ValueError):
            revision_name(*bad)
    assert repo_ids("user/swirl-physics") == {"fwm": "user/swirl-physics-fwm", "idm": "user/swirl-physics-idm"}
    for bad in ["user/swirl physics", "a/b/c", "user/x--y", "", "user/" + "x" * 95]:
        with pytest.raises(ValueError, match="Invalid repo prefix|non-empty"):
            repo_ids(bad)


def test_scrub_secrets():
    config = {
        "learning_rate": 1e-5, "hub_token": SECRET, "token": SECRET, "wandb_token": "abc", "push_to_hub_token": "x",
        "HUB_TOKEN": "y", "api_key": "k", "pad_token": "<pad>", "eos_token": "</s>", "max_tokens": 8,
        "nested": {"openai_api_key": "k", "note": f"pushed with {SECRET}", "items": [{"hub_token": "z"}, SECRET]},
    }
    clean = scrub_secrets(config)
    assert clean == {
        "learning_rate": 1e-5, "pad_token": "<pad>", "eos_token": "</s>", "max_tokens": 8,
        "nested": {"note": "pushed with <redacted>", "items": [{}, "<redacted>"]},
    }
    assert config["hub_token"] == SECRET  # a copy: the input is unchanged
    assert SECRET not in json.dumps(clean)


# --------------------------------------------------------------------------------------------------- upload folder
def test_upload_folder_contents_and_card(tmp_path):
    folder = make_phase(tmp_path, iteration=1, phase="fwm", role="fwm", partner="RUN/iter-0-warmstart-idm",
                        config={"learning_rate": 2e-5, "beta": 0.04, "num_generations": 8, "hub_token": SECRET,
                                "report_to": ["none"], "fwm_template": "a|b\nc"})
    # what a trainer leaves beside the model: none of it is pushed
    ckpt = folder / "checkpoint-10"
    ckpt.mkdir()
    for name in ["optimizer.pt", "rng_state.pth", "scheduler.pt", "model.safetensors", "trainer_state.json"]:
        (ckpt / name).write_bytes(b"x")
    (folder / "trainer_state.json").write_text("{}")
    (folder / "training_args.json").write_text("{}")
    (folder / ".swirl_record.json.tmp").write_text("{}")

    assert prepare_upload_folder(folder, repo_id="user/swirl-fwm") == folder
    assert upload_allow_patterns(folder) == sorted(MODEL_FILES + ["README.md", "swirl_record.json"])
    assert (ckpt / "optimizer.pt").exists()  # the folder's other files are kept

    card = ModelCard.load(folder / "README.md")
    data, record = card.data, record_of(folder)
    assert data.library_name == "transformers"
    assert data.tags == ["trl", "swirl", "world-model", "fwm", "arxiv:2602.06130"]
    assert data.base_model == "tiny-org/tiny-base"
    assert data.model_name == "swirl-fwm"
    assert data.pipeline_tag == "text-generation"
    assert {r.metric_type: r.metric_value for r in data.eval_results} == record["metrics"]
    assert all(r.task_type == "text-generation" for r in data.eval_results)
    assert data.swirl == {"iteration": 1, "phase": "fwm", "role": "fwm", "revision": "iter-1-fwm"}
    text = card.text
    assert 'AutoModelForCausalLM.from_pretrained(repo_id, revision=revision)' in text
    assert 'repo_id = "user/swirl-fwm"' in text and 'revision = "iter-1-fwm"' in text
    assert f"TEMPLATE = {DEFAULT_FWM_TEMPLATE!r}" in text and DEFAULT_FWM_TEMPLATE in text
    assert "P(next_state | state, action)" in text
    assert "2602.06130" in text and "@article" in text
    assert "`RUN/iter-0-warmstart-idm` (local)" in text
    assert "| `learning_rate` | `2e-05` |" in text and "| `num_generations` | `8` |" in text
    assert "| `fwm_template` | `a\\|b\\nc` |" in text  # table-safe
    assert "| `fwm_exact_match` | `0.31` |" in text
    assert "hub_token" not in text and SECRET not in text
    # the record on disk is scrubbed too, and the card parses back to the same data
    assert "hub_token" not in record["config"] and SECRET not in (folder / "swirl_record.json").read_text()
    assert ModelCard.load(folder / "README.md").data.to_dict() == data.to_dict()


def test_card_for_idm_with_local_base_model_and_partner_repo(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    folder = make_phase(tmp_path, iteration=2, phase="idm", role="idm", base_model=str(base),
                        metrics={"idm_f1": 0.5, "note": "not a number", "nan": float("nan")})
    record = record_of(folder)
    record["partner"] = {"name": "x", "repo_id": "user/swirl-fwm", "revision": "iter-2-fwm"}
    record["datasets"] = ["local:physics", "org/physics-states"]
    (folder / "swirl_record.json").write_text(json.dumps(record))
    card = render_model_card(folder)
    assert card.data.base_model is None and f"`{base}`" in card.text  # a local path is not Hub metadata
    assert card.data.datasets == ["org/physics-states"]
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("idm_f1", 0.5)]
    assert card.data.tags[3] == "idm" and "Q(action | state, next_state)" in card.text
    assert "[user/swirl-fwm](https://huggingface.co/user/swirl-fwm/tree/iter-2-fwm)" in card.text
    assert 'revision = "iter-2-idm"' in card.text and DEFAULT_IDM_TEMPLATE in card.text
    assert card.data.swirl["partner"] == "user/swirl-fwm@iter-2-fwm"


def test_pickle_weights_and_incomplete_folders_are_refused(tmp_path):
    folder = make_phase(tmp_path, iteration=1, phase="fwm", role="fwm")
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin is a pickle-based file .*safe_serialization=True"):
        prepare_upload_folder(folder)
    assert not (folder / "README.md").exists()
    (folder / "pytorch_model.bin").unlink()
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="no tokenizer"):
        prepare_upload_folder(folder)
    (folder / "swirl_record.json").unlink()
    with pytest.raises(ValueError, match="swirl_record.json"):
        prepare_upload_folder(folder)


def test_find_phase_folders_order(tmp_path):
    run = tmp_path / "run"
    folders = make_run(run)
    (run / "logs").mkdir()
    assert [f for f, _ in find_phase_folders(run)] == folders
    with pytest.raises(ValueError, match="no finished SWIRL phase"):
        find_phase_folders(tmp_path / "run" / "logs")


def test_resolve_model_reference(tmp_path):
    assert resolve_model_reference("user/swirl-fwm@iter-2-fwm") == ("user/swirl-fwm", "iter-2-fwm")
    assert resolve_model_reference("user/swirl-fwm") == ("user/swirl-fwm", None)
    odd = tmp_path / "a@b"
    odd.mkdir()
    assert resolve_model_reference(str(odd)) == (str(odd), None)  # an existing path is never split
    assert download_phase(str(odd)) == odd
    for bad in ["not a/valid/ref", "./missing/folder/x", ""]:
        with pytest.raises(ValueError):
            resolve_model_reference(bad)


# --------------------------------------------------------------------------------------------------- round trip
def test_push_round_trip_and_main_points_at_latest(hub, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    first = make_phase(run, iteration=1, phase="fwm", role="fwm", seed=5)
    result = push_phase(first, "user/swirl-fwm", token=PUSH_TOKEN)
    assert result["status"] == "pushed" and result["revision"] == "iter-1-fwm" and result["main_updated"]
    repo = hub.get_repo("user/swirl-fwm")
    assert repo.branches["iter-1-fwm"] == result["commit"]
    assert record_of(first)["pushed"] == {"repo_id": "user/swirl-fwm", "revision": "iter-1-fwm",
                                          "commit": result["commit"], "main_updated": True,
                                          "main_commit": repo.branches["main"]}
    on_hub = hub.file_contents("user/swirl-fwm", "iter-1-fwm")
    assert sorted(on_hub) == sorted([".gitattributes", "README.md", "swirl_record.json", *MODEL_FILES])
    assert repo.resolve("iter-1-fwm").files["model.safetensors"].lfs  # weights went through the LFS transfer
    for name in MODEL_FILES + ["README.md"]:
        assert on_hub[name] == (first / name).read_bytes()

    # transformers loads exactly what was saved, from the branch
    cache = tmp_path / "cache"
    model = AutoModelForCausalLM.from_pretrained("user/swirl-fwm", revision="iter-1-fwm", cache_dir=cache)
    tok = AutoTokenizer.from_pretrained("user/swirl-fwm", revision="iter-1-fwm", cache_dir=cache)
    local = AutoModelForCausalLM.from_pretrained(first)
    local_tok = AutoTokenizer.from_pretrained(first)
    assert model.state_dict().keys() == local.state_dict().keys()
    for key, value in local.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    for text in STATES + ["push ball right", "unknown words here"]:
        assert tok(text)["input_ids"] == local_tok(text)["input_ids"]
    assert tok.get_vocab() == local_tok.get_vocab()

    # a later phase moves main; the earlier branch keeps its files
    second = make_phase(run, iteration=2, phase="fwm", role="fwm", seed=6)
    result2 = push_phase(second, "user/swirl-fwm", token=PUSH_TOKEN)
    assert result2["status"] == "pushed" and result2["main_updated"]
    main = hub.file_contents("user/swirl-fwm", "main")
    assert main["model.safetensors"] == (second / "model.safetensors").read_bytes()
    assert json.loads(main["swirl_record.json"])["iteration"] == 2
    assert b'revision = "iter-2-fwm"' in main["README.md"]
    assert hub.file_contents("user/swirl-fwm", "iter-1-fwm")["model.safetensors"] == on_hub["model.safetensors"]
    assert set(hub.file_contents("user/swirl-fwm", "iter-2-fwm")) == set(on_hub)  # nothing of iter-1 leaks in
    latest = AutoModelForCausalLM.from_pretrained("user/swirl-fwm", cache_dir=cache)  # main
    assert torch.equal(latest.model.embed_tokens.weight,
                       AutoModelForCausalLM.from_pretrained(second).model.embed_tokens.weight)

    # pushing an earlier phase again never moves main back
    third = make_phase(tmp_path / "other", iteration=0, phase="warmstart", role="fwm", seed=7)
    result3 = push_phase(third, "user/swirl-fwm")
    assert result3["status"] == "pushed" and result3["revision"] == "iter-0-warmstart"
    assert not result3["main_updated"] and "later phase (iter-2-fwm)" in result3["main_note"]
    assert hub.file_contents("user/swirl-fwm", "main")["model.safetensors"] == main["model.safetensors"]

    # download_phase: resume a loop from the Hub
    folder = download_phase("user/swirl-fwm@iter-1-fwm", local_dir=tmp_path / "resumed")
    assert (folder / "model.safetensors").read_bytes() == (first / "model.safetensors").read_bytes()
    assert record_of(folder)["iteration"] == 1 and "pushed" not in record_of(folder)


def test_existing_branch_refused_unless_identical(hub, tmp_path):
    folder = make_phase(tmp_path, iteration=1, phase="fwm", role="fwm", seed=1)
    first = push_phase(folder, "user/swirl-fwm")
    commits = n_commits(hub, "user/swirl-fwm")

    again = push_phase(folder, "user/swirl-fwm")  # same files: a no-op resume
    assert again["status"] == "already-pushed" and again["commit"] == first["commit"]
    assert n_commits(hub, "user/swirl-fwm") == commits
    assert record_of(folder)["pushed"]["commit"] == first["commit"]

    # other weights under the same revision: refused, nothing overwritten, the record still names the first push
    tok = build_word_tokenizer(CORPUS)
    save_pretrained(build_tiny_causal_lm(tok, seed=99, hidden_size=16, num_hidden_layers=1, num_attention_heads=2),
                    tok, folder)
    before = hub.file_contents("user/swirl-fwm", "iter-1-fwm")
    with pytest.raises(ValueError, match="revision iter-1-fwm already exists in user/swirl-fwm; nothing earlier is "
                                         "overwritten; pick another prefix or delete the branch"):
        push_phase(folder, "user/swirl-fwm")
    assert hub.file_contents("user/swirl-fwm", "iter-1-fwm") == before
    assert n_commits(hub, "user/swirl-fwm") == commits
    # ... but another repo takes it
    assert push_phase(folder, "user/swirl-v2-fwm")["status"] == "pushed"
    with pytest.raises(ValueError, match="holds an FWM .* named for the IDM"):
        push_phase(folder, "user/swirl-v2-idm")


def test_push_run_pushes_only_what_is_missing(hub, tmp_path):
    run = tmp_path / "run"
    folders = make_run(run)
    push_phase(folders[0], "user/swirl-physics-fwm")  # the loop pushed the warm start already

    results = push_run(run, "user/swirl-physics")
    assert [r["status"] for r in results] == ["skipped", "pushed", "pushed", "pushed"]
    assert [(r["repo_id"], r["revision"]) for r in results] == [
        ("user/swirl-physics-fwm", "iter-0-warmstart"), ("user/swirl-physics-idm", "iter-0-warmstart"),
        ("user/swirl-physics-fwm", "iter-1-fwm"), ("user/swirl-physics-idm", "iter-1-idm")]
    assert set(hub.get_repo("user/swirl-physics-fwm").branches) == {"main", "iter-0-warmstart", "iter-1-fwm"}
    assert set(hub.get_repo("user/swirl-physics-idm").branches) == {"main", "iter-0-warmstart", "iter-1-idm"}
    assert json.loads(hub.file_contents("user/swirl-physics-idm")["swirl_record.json"])["iteration"] == 1
    # the partner, a folder of the run, is named by its repo and branch
    assert record_of(folders[2])["partner"]["repo_id"] == "user/swirl-physics-idm"
    readme = hub.file_contents("user/swirl-physics-fwm", "iter-1-fwm")["README.md"].decode()
    assert "[user/swirl-physics-idm](https://huggingface.co/user/swirl-physics-idm/tree/iter-0-warmstart)" in readme
    card = ModelCard(readme)
    assert card.data.swirl["partner"] == "user/swirl-physics-idm@iter-0-warmstart"

    n_requests = len(hub.requests)
    assert [r["status"] for r in push_run(run, "user/swirl-physics")] == ["skipped"] * 4
    assert len(hub.requests) == n_requests  # nothing to do: no request at all

    # a phase finished later is the only one pushed
    make_phase(run, iteration=2, phase="fwm", role="fwm", seed=4, partner=str(run / "iter-1-idm"))
    assert [r["status"] for r in push_run(run, "user/swirl-physics")] == ["skipped"] * 4 + ["pushed"]
    assert json.loads(hub.file_contents("user/swirl-physics-fwm")["swirl_record.json"])["iteration"] == 2


# --------------------------------------------------------------------------------------------------- failures
def test_transient_failures_are_retried(hub, tmp_path):
    folder = make_phase(tmp_path, iteration=1, phase="idm", role="idm")
    hub.fail("GET", r"/refs$", times=1, drop=True)  # the server hangs up: a connection error
    hub.fail("POST", r"/commit/", times=2, status=500)
    hub.fail("POST", r"/commit/", times=1, status=429)
    sleeps = []
    result = push_phase(folder, "user/swirl-idm", backoff=0.01, sleep=sleeps.append, max_retries=4)
    assert result["status"] == "pushed" and result["main_updated"]
    assert [rule.hits for rule in hub.fail_rules] == [1, 2, 1]
    assert sleeps == [0.01, 0.01, 0.02, 0.04]  # refs: 1 retry; the commit: 3 retries, backoff * 2**attempt
    assert record_of(folder)["pushed"]["commit"] == hub.get_repo("user/swirl-idm").branches["iter-1-idm"]


def test_permanent_failure_raises_and_a_later_push_completes(hub, tmp_path):
    run = tmp_path / "run"
    folders = make_run(run)
    hub.fail("POST", r"/api/models/user/swirl-physics-idm/commit/", times=None, status=503)
    sleeps = []
    with pytest.raises(HubPushError) as info:
        push_run(run, "user/swirl-physics", backoff=1.0, sleep=sleeps.append, token=PUSH_TOKEN)
    message = str(info.value)
    failed = folders[1]
    assert f"The local checkpoint at {failed} is intact" in message
    assert f"trl-swirl push {run} --prefix user/swirl-physics" in message
    assert "503" in message and PUSH_TOKEN not in message
    assert sleeps == [1.0, 2.0, 4.0, 8.0]  # backoff * 2**attempt, max_retries=4
    assert record_of(folders[0])["pushed"]["revision"] == "iter-0-warmstart"
    record = record_of(failed)
    assert record["pushed"] is None and "intact" in record["push_error"]["error"]
    assert (failed / "model.safetensors").exists()

    hub.clear_failures()
    results = push_run(run, "user/swirl-physics", sleep=sleeps.append)
    assert [r["status"] for r in results] == ["skipped", "pushed", "pushed", "pushed"]  # its empty branch completed
    record = record_of(failed)
    assert record["pushed"]["revision"] == "iter-0-warmstart" and "push_error" not in record
    on_hub = json.loads(hub.file_contents("user/swirl-physics-idm", "iter-0-warmstart")["swirl_record.json"])
    assert "pushed" not in on_hub and "push_error" not in on_hub  # bookkeeping stays local


def test_unreachable_hub_raises_hub_push_error(hub, tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()  # nothing listens there: connections are refused
    folder = make_phase(tmp_path, iteration=1, phase="fwm", role="fwm")
    sleeps = []
    with pytest.raises(HubPushError, match=f"local checkpoint at {folder} is intact") as info:
        push_phase(folder, "user/swirl-fwm", endpoint=closed, max_retries=2, backoff=0.5, sleep=sleeps.append)
    assert sleeps == [0.5, 1.0] and info.value.attempts == 3
    assert record_of(folder)["pushed"] is None


def test_client_errors_are_not_retried(hub, tmp_path):
    folder = make_phase(tmp_path, iteration=1, phase="fwm", role="fwm")
    hub.fail("POST", r"/api/repos/create", times=None, status=403)
    hub.fail("GET", r"/api/models/user/swirl-fwm", times=None, status=403)
    sleeps = []
    with pytest.raises(HubPushError, match="not retried"):
        push_phase(folder, "user/swirl-fwm", sleep=sleeps.append)
    assert sleeps == []


def test_no_token_reaches_any_file_or_log(hub, tmp_path, caplog):
    config = {"learning_rate": 2e-5, "hub_token": SECRET, "push_to_hub_token": SECRET,
              "run_name": f"run-{SECRET}", "vllm": {"api_key": SECRET}}
    run = tmp_path / "run"
    run.mkdir()
    folder = make_phase(run, iteration=1, phase="fwm", role="fwm", config=config)
    hub.fail("POST", r"/commit/", times=1, status=500)
    with caplog.at_level(logging.DEBUG):
        push_phase(folder, "user/swirl-fwm", token=PUSH_TOKEN, backoff=0, sleep=lambda s: None)
        assert main_push([str(run), "--prefix", "user/swirl-cli", "--token", PUSH_TOKEN]) == 0

    for secret in (SECRET, PUSH_TOKEN):
        for path in folder.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
        for where, content in hub.all_uploaded_bytes():
            assert secret.encode() not in content, where
        for request in hub.requests:
            assert secret.encode() not in request["body"], request["path"]
            assert secret not in request["path"]
        assert secret not in caplog.text
    # the push token was used, in the Authorization header only
    assert any(r["headers"].get("authorization") == f"Bearer {PUSH_TOKEN}" for r in hub.requests)
    record = record_of(folder)
    assert record["config"] == {"learning_rate": 2e-5, "run_name": "run-<redacted>", "vllm": {}}


def test_a_token_inside_an_uploaded_file_is_refused(hub, tmp_path):
    folder = make_phase(tmp_path, iteration=1, phase="fwm", role="fwm")
    config = json.loads((folder / "config.json").read_text())
    config["leaked"] = PUSH_TOKEN
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="contains the Hub token"):
        push_phase(folder, "user/swirl-fwm", token=PUSH_TOKEN)
    assert ("model", "user/swirl-fwm") not in hub.repos


# --------------------------------------------------------------------------------------------------- datasets
def test_push_dataset_round_trip(hub, tmp_path, transitions):
    from datasets import Dataset, DatasetDict, load_dataset
    from huggingface_hub import snapshot_download

    result = push_dataset(transitions, "user/swirl-physics-labels", revision="iter-1-labels", token=PUSH_TOKEN,
                          kind="pseudo-labelled", iteration=1, labelled_by="user/swirl-physics-idm@iter-1-idm",
                          description="Actions labelled by the IDM of iteration 1.")
    assert result["status"] == "pushed" and result["main_updated"]
    assert result["files"] == ["README.md", "data/train-00000-of-00001.parquet"]
    repo = hub.get_repo("user/swirl-physics-labels", "dataset")
    assert set(repo.branches) == {"main", "iter-1-labels"}

    path = snapshot_download("user/swirl-physics-labels", repo_type="dataset", revision="iter-1-labels",
                             cache_dir=tmp_path / "cache")
    loaded = load_dataset("parquet", data_files={"train": f"{path}/data/train-*.parquet"},
                          cache_dir=str(tmp_path / "ds-cache"))["train"]
    assert loaded.to_dict() == transitions.to_dict()
    card = DatasetCard.load(f"{path}/README.md")
    assert card.data.tags == ["trl", "swirl", "world-model", "arxiv:2602.06130", "pseudo-labelled"]
    assert card.data.configs == [{"config_name": "default",
                                  "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert card.data.size_categories == ["n<1K"]
    assert "user/swirl-physics-idm@iter-1-idm" in card.text and "| `train` | 8 |" in card.text
    assert 'load_dataset("user/swirl-physics-labels", revision="iter-1-labels")' in card.text

    again = push_dataset(transitions, "user/swirl-physics-labels", revision="iter-1-labels",
                         kind="pseudo-labelled", iteration=1, labelled_by="user/swirl-physics-idm@iter-1-idm",
                         description="Actions labelled by the IDM of iteration 1.")
    assert again["status"] == "already-pushed"
    with pytest.raises(ValueError, match="revision iter-1-labels already exists"):
        push_dataset(transitions.select(range(4)), "user/swirl-physics-labels", revision="iter-1-labels")

    states = DatasetDict({"train": Dataset.from_dict({"state": STATES[:3]}),
                          "test": Dataset.from_dict({"state": STATES[3:]})})
    result = push_dataset(states, "user/swirl-physics-states", kind="state-only")
    assert result["revision"] == "main" and result["files"] == [
        "README.md", "data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet"]
    readme = hub.file_contents("user/swirl-physics-states", "main", "dataset")["README.md"].decode()
    assert "State-only data" in readme and DatasetCard(readme).data.tags[-1] == "state-only"
    assert push_dataset(states, "user/swirl-physics-states", kind="state-only")["status"] == "already-pushed"


# --------------------------------------------------------------------------------------------------- CLI
def test_main_push_cli(hub, tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run)
    assert main_push(["push", str(run), "--prefix", "user/swirl-cli", "--private"]) == 0
    out = capsys.readouterr().out
    assert out.count("pushed") == 4 and "user/swirl-cli-fwm@iter-1-fwm" in out
    assert hub.get_repo("user/swirl-cli-fwm").private and hub.get_repo("user/swirl-cli-idm").private
    # the token came from HF_TOKEN (huggingface_hub's usual resolution)
    assert any(r["headers"].get("authorization") == f"Bearer {FIXTURE_TOKEN}" for r in hub.requests)
    assert main_push([str(run), "--prefix", "user/swirl-cli"]) == 0
    assert capsys.readouterr().out.count("skipped") == 4

    assert main_push([str(run), "--prefix", "user/bad prefix"]) == 1
    assert "Invalid repo prefix" in capsys.readouterr().err
    assert main_push([str(tmp_path / "nowhere"), "--prefix", "user/x"]) == 1


def test_build_push_parser_defaults():
    args = swirl_hub.build_push_parser().parse_args(["RUN", "--prefix", "user/x"])
    assert (args.run_dir, args.prefix, args.private, args.token, args.update_main) == (
        "RUN", "user/x", False, None, True)


def test_remote_file_comparison_and_transient_errors(tmp_path):
    import hashlib
    from types import SimpleNamespace

    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    path = tmp_path / "w.safetensors"
    path.write_bytes(b"weights" * 10)
    local = swirl_hub._LocalFile(path)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize 70\n".encode()
    git = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
    plain = hashlib.sha1(b"blob 70\0" + path.read_bytes()).hexdigest()
    assert local.same_as(SimpleNamespace(size=70, lfs=SimpleNamespace(sha256=sha256), blob_id="x"))
    assert local.same_as(SimpleNamespace(size=70, lfs=None, blob_id=plain))  # a regular file
    assert local.same_as(SimpleNamespace(size=70, lfs=None, blob_id=git))  # an LFS file without its LFS metadata
    assert not local.same_as(SimpleNamespace(size=71, lfs=SimpleNamespace(sha256=sha256), blob_id="x"))
    assert not local.same_as(SimpleNamespace(size=70, lfs=SimpleNamespace(sha256="0" * 64), blob_id="x"))

    def http_error(status):
        request = httpx2.Request("POST", "http://127.0.0.1/x")
        return HfHubHTTPError(f"{status}", response=httpx2.Response(status, request=request))

    assert swirl_hub._is_transient(http_error(500)) and swirl_hub._is_transient(http_error(429))
    assert not swirl_hub._is_transient(http_error(404)) and not swirl_hub._is_transient(http_error(401))
    assert swirl_hub._is_transient(httpx2.ConnectError("refused"))
    assert swirl_hub._is_transient(ConnectionResetError())
    wrapped = RuntimeError("Error while uploading 'x' to the Hub.")
    wrapped.__cause__ = httpx2.ReadTimeout("slow")
    assert swirl_hub._is_transient(wrapped)
    assert not swirl_hub._is_transient(ValueError("Invalid metadata in README.md."))


def test_offline_mode_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # never the real Hub, even if not offline
    folder = make_phase(tmp_path, iteration=1, phase="fwm", role="fwm")
    sleeps = []
    with pytest.raises(HubPushError, match="HF_HUB_OFFLINE is set") as info:
        push_phase(folder, "user/swirl-fwm", endpoint="http://127.0.0.1:9", sleep=sleeps.append)
    assert sleeps == [] and f"local checkpoint at {folder} is intact" in str(info.value)
