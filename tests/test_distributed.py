"""Data-parallel training (cdanet.training.distributed): sharding, and torchrun with 2 gloo processes
reproducing one process for the same global batch (weights after the run, validation and test AUC)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cdanet.cli import main
from cdanet.config import ConfigError
from cdanet.contract import load_schemas
from cdanet.data import TwoDomainSampler, load_split
from cdanet.training.distributed import ShardedSampler

REPO = Path(__file__).resolve().parents[1]


def _train_data(processed_dir: str) -> dict:
    schemas = load_schemas(processed_dir, ("movie", "book"))
    return {d: load_split(processed_dir, schemas[d], "train") for d in schemas}


def test_shards_partition_every_global_batch(processed_dir: str) -> None:
    data = _train_data(processed_dir)
    sampler = TwoDomainSampler(data, 100, target_domain="movie", seed=3)
    shards = [ShardedSampler(sampler, r, 3) for r in range(3)]
    assert all(len(s) == len(sampler) for s in shards)
    global_steps = sampler.epoch_indices(1)
    per_rank = [list(s.epoch(1)) for s in shards]
    for step in range(len(sampler)):
        for d in data:
            whole = data[d].batch(global_steps[d][step].to(data[d].device))
            parts = [per_rank[r][step][d] for r in range(3)]
            assert [len(p) for p in parts] == [len(t) for t in global_steps[d][step].tensor_split(3)]
            # Rank order concatenated is exactly the single-process batch.
            assert torch.equal(torch.cat([p.label for p in parts]), whole.label)
            for name, value in whole.features.items():
                assert torch.equal(torch.cat([p.features[name] for p in parts]), value)
    assert shards[1].last_global_rows == sum(len(global_steps[d][-1]) for d in data)


def test_shard_rejects_batches_smaller_than_the_world(processed_dir: str) -> None:
    data = _train_data(processed_dir)
    with pytest.raises(ConfigError, match="at least 4 rows per domain batch"):
        ShardedSampler(TwoDomainSampler(data, 3, target_domain="movie"), 0, 4)
    # book (the basis, 4800 rows) in batches of 4799 leaves a last batch of 1 row for 2 ranks.
    with pytest.raises(ConfigError, match="last batch of each epoch of domain 'book' has 1 rows"):
        ShardedSampler(TwoDomainSampler(data, 4799, target_domain="movie"), 0, 2)


def test_distributed_flag_without_torchrun_is_a_usage_error(processed_dir: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code = main(["train", "--processed", processed_dir, "--profile", "tiny", "--output", str(tmp_path / "o"),
                 "--distributed"])
    assert code == 2
    assert "--distributed needs torchrun" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _train(processed_dir: str, out: Path, overrides: list[str], nproc: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    args = ["-m", "cdanet.cli", "--log-level", "WARNING", "train", "--processed", processed_dir, "--profile", "tiny",
            "--output", str(out), *[a for o in overrides for a in ("--set", o)]]
    if nproc > 1:
        args.append("--distributed")
    proc = subprocess.run(launcher + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("update", ["dense", "lazy"])
def test_torchrun_two_processes_reproduce_one(processed_dir: str, tmp_path: Path, update: str) -> None:
    # Global batch 64: book's 4800 and movie's 2400 rows split evenly over 2 ranks on every step.
    # Both stages, one epoch each (75 steps): the saved weights are the weights after the last step.
    overrides = ["train.max_epochs=1", "train.batch_size=64", f"train.embedding_update={update}"]
    single = _train(processed_dir, tmp_path / "single", overrides, 1)
    multi = _train(processed_dir, tmp_path / "ddp", overrides, 2)

    w1 = torch.load(tmp_path / "single" / "model" / "weights.pt", weights_only=True)
    w2 = torch.load(tmp_path / "ddp" / "model" / "weights.pt", weights_only=True)
    assert w1.keys() == w2.keys()
    for k in w1:
        if w1[k].is_floating_point():
            torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=f"parameter {k}")
        else:
            assert torch.equal(w2[k], w1[k]), k
    # AUC on 300 rows moves in steps of ~5e-5 (one swapped pair): float-level weight differences may swap one.
    for stage in ("pretrain", "finetune"):
        assert multi["stages"][stage]["best_val_auc"] == pytest.approx(single["stages"][stage]["best_val_auc"], abs=2e-4)
    assert multi["metrics"]["movie"]["auc"] == pytest.approx(single["metrics"]["movie"]["auc"], abs=2e-4)
    assert single["stages"]["pretrain"]["best_val_auc"] > 0.6  # it learned: not two initialisations compared


@pytest.mark.slow
def test_trainjob_node_entry_point_under_torchrun(processed_dir: str, tmp_path: Path) -> None:
    """What each TrainJob node runs (cdanet.trainjob.main): 2 ranks, rank 0 writes the model directory."""
    from cdanet.config import tiny_config

    cfg = tiny_config("amazon", "movie").with_overrides(["train.max_epochs=1"])
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"experiment": cfg.to_dict()}))  # the configure step's artifact's entry
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cdanet.trainjob",
         "pretrain", "--config", str(config), "--processed", processed_dir, "--model-dir", str(tmp_path / "stage1")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "stage1" / "weights.pt").is_file()
    assert not list(tmp_path.glob("cdanet-rank*"))  # rank 1's scratch copy is gone
