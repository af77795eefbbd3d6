"""End to end: simulated raw files -> run_preprocessing -> the feature contract, and the job's CLI."""

from __future__ import annotations

import glob
import json
import math
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from beam_jobs import preprocess as job
from cdanet.contract import SPLITS, DomainSchema, FieldKind, split_files
from cdanet.preprocessing import PreprocessingError, PreprocessOptions, kcore_reference, run_preprocessing
from cdanet.preprocessing.pipeline import pipeline_options
from cdanet.simulate import simulate
from cdanet.simulate.core import ground_truth_path

IN_PROCESS = ["--runner=FnApiRunner"]
MALFORMED = 0.005
K = {"movie": 5, "book": 5, "ad": 3, "rec": 5}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    root = tmp_path_factory.mktemp("raw")
    manifest = simulate(str(root), dataset="both", scale="tiny", seed=3, malformed_fraction=MALFORMED,
                        duplicate_fraction=0.01)
    return root, manifest


@pytest.fixture(scope="module")
def processed(raw: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    root, _ = raw
    out = tmp_path_factory.mktemp("processed")
    # One round per run forces the driver's k-core continuation whenever a second round is needed.
    opts = PreprocessOptions(k_core=K, kcore_rounds_per_run=1, num_partitions=4)
    stats = run_preprocessing("amazon", str(root / "amazon"), str(out), glove_path=str(root / "glove" / "glove.sim.50d.txt"),
                              options=opts, beam_args=IN_PROCESS)
    stats |= run_preprocessing("taobao", str(root / "taobao"), str(out), options=opts, beam_args=IN_PROCESS)
    return out, stats


def read_split(domain_dir: Path, split: str) -> pa.Table:
    return pq.read_table(split_files(str(domain_dir), split))


def test_dead_letters_match_injected_malformed_lines(raw: tuple[Path, Any], processed: tuple[Path, dict]) -> None:
    root, manifest = raw
    out, stats = processed
    assert manifest.malformed_injected, "the simulator injected nothing"
    for domain, s in stats.items():
        dead = [json.loads(line) for f in glob.glob(str(out / domain / "dead_letter-*.jsonl"))
                for line in open(f) if line.strip()]
        for path, fs in s["files"].items():
            rel = os.path.relpath(path, root)
            injected = dict(manifest.malformed_injected.get(rel, {}))
            blank = injected.pop("blank", 0)
            assert fs["blank"] == blank, rel
            assert sum(fs["malformed"].values()) == sum(injected.values()), (rel, fs["malformed"], injected)
            assert sum(1 for d in dead if d["file"] == path) == sum(injected.values()), rel
            # Every clean line (and every injected exact duplicate) is parsed, none is lost.
            info = manifest.files[rel]
            assert fs["parsed"] == info["data_rows"] + info["duplicates"], rel
            assert fs["lines"] == info["lines"], rel
    assert {d["reason"] for f in glob.glob(str(out / "*" / "dead_letter-*.jsonl")) for line in open(f)
            if line.strip() for d in [json.loads(line)]} >= {"undecodable_bytes", "wrong_column_count", "empty_id"}


def test_outputs_follow_the_feature_contract(processed: tuple[Path, dict]) -> None:
    out, stats = processed
    for domain in ("movie", "book", "ad", "rec"):
        schema = DomainSchema.load(str(out / domain))
        assert schema.domain == domain and schema.metadata["k_core"] == K[domain]
        previous_max = None
        total = 0
        for split in SPLITS:
            t = read_split(out / domain, split)
            assert t.schema.equals(schema.arrow_schema()), (domain, split)
            schema.check_arrow_schema(t.schema, f"{domain}/{split}")
            assert t.num_rows == stats[domain]["rows"][split] > 0
            ts = t["timestamp"]
            if previous_max is not None:
                assert previous_max <= pc.min(ts).as_py()  # chronological split
            previous_max = pc.max(ts).as_py()
            total += t.num_rows
            assert set(pc.unique(t["label"]).to_pylist()) <= {0, 1}
            for f in schema.fields:
                col = t[f.name]
                if f.kind is FieldKind.DENSE_VECTOR:
                    assert set(pc.list_value_length(col).to_pylist()) == {f.dim}
                    continue
                values = pc.list_flatten(col) if f.kind is FieldKind.MULTI_HOT else col
                if len(values):
                    assert 0 <= pc.min(values).as_py() and pc.max(values).as_py() < f.vocab_size, (domain, f.name)
        assert total == stats[domain]["rows"]["after_kcore"]
        assert stats[domain]["rows"]["train"] == math.floor(0.8 * total + 1e-9)
        assert stats[domain]["rows"]["validation"] == math.floor(0.9 * total + 1e-9) - math.floor(0.8 * total + 1e-9)
        for f in schema.fields:
            if f.is_categorical:
                lines = (out / domain / "vocab" / f"{f.name}.txt").read_text().splitlines()
                assert lines[0] == "<OOV>" and len(lines) == f.vocab_size
        assert not glob.glob(str(out / "_staging-*"))


def test_kcore_result_equals_reference_on_ground_truth(raw: tuple[Path, Any], processed: tuple[Path, dict]) -> None:
    root, _ = raw
    out, stats = processed
    for domain in ("movie", "rec"):
        truth = pq.read_table(ground_truth_path(str(root), domain))
        # The processed rows are the k-core of the deduplicated valid rows (label = max per duplicate).
        dedup = truth.group_by(["user", "item", "timestamp"]).aggregate([("label", "max")])
        rows = list(zip(*(dedup[c].to_pylist() for c in ("user", "item", "timestamp", "label_max")), strict=True))
        keep = kcore_reference([(u, i) for u, i, _, _ in rows], K[domain])
        expected = sorted(rows[i] for i in keep)
        got = pa.concat_tables([read_split(out / domain, s) for s in SPLITS])
        actual = sorted(zip(*(got[c].to_pylist() for c in ("user_id_raw", "item_id_raw", "timestamp", "label")),
                            strict=True))
        assert actual == expected, domain
        assert stats[domain]["kcore"]["converged"] and stats[domain]["kcore"]["passes"][-1]["removed"] == 0


def test_driver_runs_kcore_until_the_fixed_point(tmp_path: Path) -> None:
    # A 4x4 block of users and items plus a path hanging off it, peeled one key per pass: with one
    # round per pipeline run, only the driver's continuation runs can reach the 2-core.
    pairs = [(f"u{a}", f"i{b}") for a in range(4) for b in range(4)]
    for n in range(4, 10):
        pairs.append((f"u{n}", f"i{n}"))
        pairs.append((f"u{n - 1}" if n > 4 else "u0", f"i{n}"))
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "UserBehavior.csv").write_text(
        "".join(f"{u[1:]},{i[1:]},7,{'buy' if t % 3 == 0 else 'pv'},{1_511_000_000 + t}\n" for t, (u, i) in enumerate(pairs)))
    stats = run_preprocessing("taobao", str(raw), str(tmp_path / "out"), beam_args=IN_PROCESS, options=PreprocessOptions(
        domains=("rec",), k_core={"rec": 2}, kcore_rounds_per_run=1, num_partitions=3))["rec"]
    keep = kcore_reference(pairs, 2)
    assert stats["rows"]["after_kcore"] == len(keep) == 16
    passes = stats["kcore"]["passes"]
    assert len(passes) > 4 and passes[-1]["removed"] == 0 and sum(p["removed"] for p in passes) == len(pairs) - 16
    assert [p["filter"] for p in passes[:2]] == ["user_id", "item_id"]
    got = pa.concat_tables([read_split(tmp_path / "out" / "rec", s) for s in SPLITS])
    assert sorted(zip(got["user_id_raw"].to_pylist(), got["item_id_raw"].to_pylist(), strict=True)) == sorted(
        (pairs[i][0][1:], pairs[i][1][1:]) for i in keep)


def test_stats_and_catalogue(processed: tuple[Path, dict]) -> None:
    out, stats = processed
    movie = stats["movie"]
    assert movie["rows"]["duplicates"] > 0
    assert movie["positives"]["total"] == sum(movie["positives"][s] for s in SPLITS)
    assert movie["input_feature_dim"] == sum(movie["vocab_sizes"].values()) + 50
    assert movie["title_vectors"]["items"] == movie["items"]
    assert json.loads((out / "movie" / "stats.json").read_text()) == movie
    items = pq.read_table(out / "movie" / "items.parquet")
    assert items.column_names == ["item_id", "title", "genre", "director"] and items.num_rows == movie["items"]
    ad_items = pq.read_table(out / "ad" / "items.parquet")
    assert "brand" in ad_items.column_names and ad_items.num_rows == stats["ad"]["items"]
    assert stats["ad"]["user_features"]["keys"] == stats["ad"]["users"]
    for s in stats.values():  # the preprocess step's stats table shows it (it read a key nobody wrote)
        assert s["positive_rate"] == round(s["positives"]["total"] / sum(s["rows"][n] for n in SPLITS), 6) > 0


def test_load_split_reads_the_output(processed: tuple[Path, dict]) -> None:
    data = pytest.importorskip("cdanet.data")
    out, stats = processed
    schema = DomainSchema.load(str(out / "book"))
    train = data.load_split(str(out), schema, "train")
    assert len(train) == stats["book"]["rows"]["train"]


def test_too_many_malformed_lines_fail_and_leave_nothing(tmp_path: Path) -> None:
    simulate(str(tmp_path / "raw"), dataset="taobao", scale="tiny", seed=1, malformed_fraction=0.05)
    out = tmp_path / "out"
    with pytest.raises(PreprocessingError) as e:
        run_preprocessing("taobao", str(tmp_path / "raw" / "taobao"), str(out),
                          options=PreprocessOptions(domains=("rec",)), beam_args=IN_PROCESS)
    msg = str(e.value)
    assert "UserBehavior.csv" in msg and "above malformed_threshold 1.00%" in msg and "first: line " in msg
    assert not os.path.exists(out / "rec") and not glob.glob(str(out / "_staging-*"))


def test_domain_emptied_by_kcore_fails_clearly(tmp_path: Path) -> None:
    simulate(str(tmp_path / "raw"), dataset="taobao", scale="tiny", seed=2)
    with pytest.raises(PreprocessingError, match=r"domain rec is empty after 100000-core filtering"):
        run_preprocessing("taobao", str(tmp_path / "raw" / "taobao"), str(tmp_path / "out"),
                          options=PreprocessOptions(domains=("rec",), k_core={"rec": 100_000}), beam_args=IN_PROCESS)


def test_amazon_requires_glove(tmp_path: Path) -> None:
    with pytest.raises(PreprocessingError, match="--glove"):
        run_preprocessing("amazon", str(tmp_path), str(tmp_path / "out"), beam_args=IN_PROCESS)


# ---- the job module ------------------------------------------------------------------------------
def test_job_separates_its_flags_from_runner_flags() -> None:
    args, beam_args = job.build_parser().parse_known_args([
        "--dataset", "amazon", "--input", "gs://b/raw", "--output", "gs://b/out", "--glove", "g.zip",
        "--k-core", "movie=3, book=7", "--runner=FlinkRunner", "--flink_master=localhost:8081", "--window-days", "30",
    ])
    assert beam_args == ["--runner=FlinkRunner", "--flink_master=localhost:8081"]
    opts = job.options_from_args(args)
    assert dict(opts.k_core) == {"movie": 3, "book": 7, "ad": 5, "rec": 10} and opts.window_days == 30
    assert pipeline_options(beam_args).get_all_options()["runner"] == "FlinkRunner"
    assert pipeline_options(None).get_all_options()["direct_running_mode"] == "in_memory"


def test_job_rejects_bad_k_core() -> None:
    with pytest.raises(SystemExit):
        job.build_parser().parse_args(["--dataset", "amazon", "--input", "i", "--output", "o", "--k-core", "film=5"])


@pytest.mark.slow
def test_cli_multi_processing_2023_gzip(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    simulate(str(tmp_path / "raw"), dataset="amazon", scale="tiny", seed=5, amazon_format="2023json", gzip=True,
             malformed_fraction=MALFORMED)
    glove = glob.glob(str(tmp_path / "raw" / "glove" / "*"))[0]
    code = job.main(["--dataset", "amazon", "--input", str(tmp_path / "raw" / "amazon"), "--glove", glove,
                     "--output", str(tmp_path / "out"), "--k-core", "movie=5,book=5",
                     "--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert code == 0
    # Worker processes log to the stderr they inherit: none of it reaches the console, the progress does.
    err = capfd.readouterr().err
    assert "movie: wrote " in err and "book: wrote " in err
    assert all(line.startswith("[preprocess ") for line in err.splitlines()), err
    for domain in ("movie", "book"):
        schema = DomainSchema.load(str(tmp_path / "out" / domain))
        assert schema.metadata["raw_files"]["interactions"].endswith(".jsonl.gz")
        assert sum(read_split(tmp_path / "out" / domain, s).num_rows for s in SPLITS) > 0
