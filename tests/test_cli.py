"""The ``cdanet`` command line: train + evaluate end to end, config errors before any data is read."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cdanet.cli import COMMANDS, build_parser, main, register_command


def test_train_then_evaluate(processed_dir, tmp_path, capsys) -> None:
    out = str(tmp_path / "run")
    code = main([
        "train", "--processed", processed_dir, "--output", out, "--profile", "tiny", "--model", "cdanet",
        "--ablation", "no_cross", "--set", "train.max_epochs=1", "--set", "train.batch_size=256",
        "--set", "train.num_threads=1",
    ])
    printed = capsys.readouterr().out
    assert code == 0
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    auc = metrics["metrics"]["movie"]["auc"]
    assert metrics["ablation"] == "no_cross"
    assert "movie" in printed and f"{auc:.4f}" in printed

    code = main(["evaluate", "--model-dir", os.path.join(out, "model"), "--processed", processed_dir,
                 "--output", str(tmp_path / "eval")])
    assert code == 0
    assert f"{auc:.4f}" in capsys.readouterr().out
    assert os.path.exists(tmp_path / "eval" / "predictions.parquet")


def test_invalid_override_exits_before_loading_data(tmp_path) -> None:
    # The processed directory does not exist: the config error must come first.
    result = subprocess.run(
        [sys.executable, "-m", "cdanet.cli", "train", "--processed", str(tmp_path / "missing"),
         "--output", str(tmp_path / "out"), "--set", "model.alpha=-1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "model.alpha must be >= 0, got -1" in result.stderr
    assert not os.path.exists(tmp_path / "out")


def test_bad_inputs_are_reported_without_traceback(tmp_path, capsys) -> None:
    assert main(["train", "--processed", str(tmp_path), "--output", str(tmp_path / "o"), "--set", "train.nope=1"]) == 2
    assert "unknown config key 'train.nope'" in capsys.readouterr().err
    assert main(["train", "--processed", str(tmp_path), "--output", str(tmp_path / "o"), "--target", "ad"]) == 2
    assert "--target 'ad' is not a domain of 'amazon'" in capsys.readouterr().err
    assert main(["evaluate", "--model-dir", str(tmp_path / "none"), "--processed", str(tmp_path)]) == 1
    assert "cdanet evaluate: ModelDirError: no model directory" in capsys.readouterr().err


def test_registry_adds_sub_commands() -> None:
    register_command("hello-test", "say hello", lambda p: p.add_argument("--name"), lambda a: 0)
    try:
        args = build_parser().parse_args(["hello-test", "--name", "x"])
        assert args.command == "hello-test" and args.name == "x"
        assert main(["hello-test"]) == 0
        with pytest.raises(ValueError, match="already registered"):
            register_command("train", "again", lambda p: None, lambda a: 0)
    finally:
        COMMANDS.pop("hello-test")
