"""The README stays true: its Python example runs, and .ci/run runs the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_ten_line_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", readme(), flags=re.S)
    example = next(b for b in blocks if "SwirlTrainer(" in b)
    assert len(example.strip().splitlines()) <= 10
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 4
    assert any("rewards/swirl_partner_logprob/mean" in log for log in trainer.state.log_history)


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)```", readme(), flags=re.S)
    test_command = next(c.strip() for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_command in ci
    main_job = next(c.strip() for c in commands if "trl-swirl loop" in c and "pip install" in c)
    assert "torch==2.13.0" in main_job and "torch==2.13.0" in test_command
