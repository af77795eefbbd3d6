"""Smoke test of the training-throughput benchmark at tiny sizes, so that the script cannot rot.

The figures themselves are not asserted beyond being measured (positive, finite): speed targets live
in the benchmark's printed output, not in timed tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_models.py"


@pytest.mark.slow
def test_bench_models_prints_a_row_per_model_and_the_machine_probe() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--models", "cdanet", "mlp", "--steps", "4", "--window", "2", "--warmup", "1",
         "--threads", "1", "--users", "200", "--items", "100", "--batch-size", "32", "--d", "8"],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout
    lines = out.splitlines()
    assert any(line.startswith("# machine probe before: sgemm") for line in lines), out
    assert any(line.startswith("# machine probe after: sgemm") for line in lines), out
    rows = {line.split()[0]: line.split() for line in lines if line.split() and line.split()[0] in ("cdanet", "mlp")}
    assert set(rows) == {"cdanet", "mlp"}, out
    # columns: model domains params(M) ms/step samples/s uncont./s GFLOP/step GFLOP/s peakRSS(MB)
    assert rows["cdanet"][1] == "2" and rows["mlp"][1] == "1"
    for cols in rows.values():
        samples, uncontended, gflop = float(cols[4].replace(",", "")), float(cols[5].replace(",", "")), float(cols[6])
        assert samples > 0 and float(cols[8]) > 0
        assert uncontended >= samples * 0.999  # the fastest window is never slower than the median (rounding)
        assert gflop > 0
    # The translation network does strictly more matmul work per row than the single-domain MLP.
    assert float(rows["cdanet"][6]) > float(rows["mlp"][6])


@pytest.mark.slow
def test_bench_models_taobao_tables_size_only_the_tables() -> None:
    """``--tables taobao`` (the README's table-size command, at d = 8 and tiny batches so it runs in seconds)."""
    from benchmarks.bench_models import TABLE_SIZES, bench_schemas

    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_models", "--models", "cdanet", "--threads", "1", "--steps", "2",
         "--window", "1", "--warmup", "1", "--batch-size", "32", "--d", "8", "--tables", "taobao",
         "--embedding-update", "lazy"],
        check=True, capture_output=True, text=True, timeout=300, cwd=BENCH.parents[1],
    ).stdout
    assert "movie (target) 252000 users, 105000 items; book (source) 343000 users, 240000 items" in out, out
    row = next(line.split() for line in out.splitlines() if line.startswith("cdanet "))
    (users, items), (source_users, source_items) = TABLE_SIZES["taobao"]
    # params(M): the two domains' fused tables at d = 8 dominate, so they set the count
    assert float(row[2]) > 8 * (users + items + source_users + source_items) / 1e6, out
    schemas = bench_schemas(users, items, 50, (source_users, source_items))
    assert schemas["movie"].field("user_id").vocab_size == 252_000
    assert schemas["book"].field("item_id").vocab_size == 240_000


def test_step_time_summary_takes_the_median_and_the_fastest_window() -> None:
    from benchmarks.bench_models import step_time_summary

    # A contended stretch (steps 0-3) and a quiet one (4-7) with one lucky step in the contended one.
    times = [0.080, 0.030, 0.082, 0.081, 0.061, 0.060, 0.062, 0.059]
    sustained, uncontended = step_time_summary(times, window=4)
    assert sustained == pytest.approx(0.0615)  # median of all eight
    assert uncontended == pytest.approx(0.0605)  # median of the quiet window; the 0.030 step does not set it
    # A trailing partial window is left out; fewer steps than a window make one window.
    assert step_time_summary(times + [0.001], window=4)[1] == pytest.approx(0.0605)
    assert step_time_summary([0.05, 0.07], window=10) == (pytest.approx(0.06), pytest.approx(0.06))
    with pytest.raises(ValueError, match="window >= 1"):
        step_time_summary(times, window=0)


@pytest.mark.slow
def test_step_breakdown_prints_every_part_and_the_flop_bound() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_step_breakdown", "--rounds", "1", "--threads", "1",
         "--batch-size", "64"],
        check=True, capture_output=True, text=True, timeout=300, cwd=BENCH.parents[1],
    ).stdout
    ms = {}
    for line in out.splitlines():
        if line.endswith(" ms") and not line.startswith("#"):
            name, value = line[:28].strip(), float(line[28:].split()[0])
            ms[name] = value
    assert set(ms) == {"step", "forward + backward", "optimizer step", "forward (no graph)",
                       "extractor..loss fwd+bwd", "same at 16 rows/domain", "step, no source profile"}, out
    assert all(v > 0 for v in ms.values()), out
    assert "GFLOP of matmuls per step" in out and "embedding layer (fwd+bwd, by subtraction)" in out
    assert "x the step without the source profile" in out


@pytest.mark.slow
def test_embedding_update_benchmark_prints_both_variants_and_their_ratio() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_embedding_update", "--rounds", "2", "--warmup", "1",
         "--threads", "1", "--batch-size", "32", "--users", "200", "--items", "100"],
        check=True, capture_output=True, text=True, timeout=300, cwd=BENCH.parents[1],
    ).stdout
    names = ("dense", "dense-torch", "lazy")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] in [[n] for n in names]}
    assert set(rows) == set(names), out
    assert all(float(v.replace(",", "")) > 0 for cols in rows.values() for v in cols), out
    assert "# dense-torch / dense step time: " in out and "# dense-torch / lazy step time: " in out


def test_bench_pipeline_reads_epochs_and_throughput_from_the_trainer_log(tmp_path: Path) -> None:
    from benchmarks.bench_pipeline import training_epochs

    log = tmp_path / "pipeline.log"
    prefix = "    [KFP Executor 2026-11-28 20:08:29,936 INFO]: "
    log.write_text(
        prefix + "pretrain epoch 1/30: loss 1.18, val movie AUC 0.5971 (best 0.5971 @ 1), 139937 samples/s, 1.2s\n"
        + prefix + "pretrain epoch 2/30: loss 0.97, val movie AUC 0.6589 (best 0.6589 @ 2), 133472 samples/s, 1.3s\n"
        + prefix + "pretrain epoch 3/30: loss 0.89, val movie AUC 0.6475 (best 0.6589 @ 2), 100000 samples/s, 1.3s\n"
        + prefix + "\x1b[32mfinetune epoch 0.5/30: loss 0.54, val movie AUC 0.6586 (best 0.6586 @ 0.5), 94424 samples/s, 0.3s\n"
        + prefix + "finetune epoch 1/30: loss 0.52, val movie AUC 0.6581 (best 0.6586 @ 0.5), 94422 samples/s, 0.3s\n"
        + "unrelated line with 5 samples/s\n"
    )
    assert training_epochs(str(log)) == {
        "pretrain": {"epochs": 3, "best_epoch": 2, "median_samples_per_s": 133472.0},
        "finetune": {"epochs": 1, "best_epoch": 0.5, "median_samples_per_s": 94423.0},
    }


@pytest.mark.slow
def test_bench_preprocess_runs_both_domains_and_matches_the_pandas_reference() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_preprocess", "--scale", "tiny", "--domains", "movie", "book",
         "--workers", "2", "--modes", "in_memory", "multi_processing"],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout[out.stdout.index("{"):])
    assert report["domains"] == ["movie", "book"] and report["all_counts_equal"], report["beam"]
    assert set(report["beam"]) == {"in_memory", "multi_processing"}
    for run in report["beam"].values():
        assert run["counts"]["book"]["beam"]["train"] > 0 and run["all_counts_equal"], run["counts"]
        assert run["seconds"] > 0 and run["over_pandas_time"] > 0
    assert report["pandas"]["seconds"] > 0


def test_beam_large_elements_script_counts_both_ways() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.beam_large_elements", "--rows", "1000", "--elements", "3", "--workers", "1"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "elements 3 of 1000 rows: counted 3000 rows in the producing stage, 3000 delivered" in out.stdout
