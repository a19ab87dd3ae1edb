"""The `trl-swirl` command line: recipes, flags, the results table, errors."""

import pytest

from trl_swirl.cli import RECIPES, format_results, main, parse_loop_args


def test_tiny_recipe_without_models_and_flags_override(tmp_path):
    loop_args, swirl_args, recipe = parse_loop_args(["--output_dir", str(tmp_path), "--fwm_max_steps", "7"])
    assert recipe == "tiny-cpu"
    assert swirl_args.learning_rate == RECIPES["tiny-cpu"]["learning_rate"] and swirl_args.scale_rewards == "none"
    assert loop_args.fwm_beta == 0.1 and loop_args.labelled_fraction == 0.2
    assert loop_args.fwm_max_steps == 7  # a flag beats the recipe
    assert swirl_args.output_dir == str(tmp_path)


def test_real_models_recipe_when_models_are_named(tmp_path):
    argv = ["--output_dir", str(tmp_path), "--fwm_model_name_or_path", "org/fwm", "--idm-model-name-or-path=org/idm"]
    loop_args, swirl_args, recipe = parse_loop_args(argv)
    assert recipe == "real-models" and swirl_args.learning_rate == 1e-6 and loop_args.idm_beta == 0.1
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text("fwm_model_name_or_path: org/fwm\nlearning_rate: 3.0e-6\n")
    loop_args, swirl_args, recipe = parse_loop_args(["--config", str(recipe_file), "--output_dir", str(tmp_path)])
    assert recipe == "real-models" and swirl_args.learning_rate == 3e-6  # YAML beats the recipe


def test_results_table_and_unknown_command(capsys):
    table = format_results([
        {"name": "iter-0-warmstart-idm", "metrics": {"idm_consistency": 0.5}},
        {"name": "iter-1-labels"},
        {"name": "iter-1-idm", "metrics": {"idm_consistency": 0.625}},
    ])
    assert table.splitlines() == [
        "| phase | idm_consistency |", "|---|---|", "| iter-0-warmstart-idm | 0.500 |", "| iter-1-idm | 0.625 |",
    ]
    assert main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_loop_args(["--phase", "forward"])  # argparse refuses a value outside the choices
