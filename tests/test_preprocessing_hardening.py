"""Preprocessing under hostile input and hostile conditions (issue 12 point 4, issue 13's progress lines).

No crafted line stops the job (each is one dead letter with file, line and reason); errors raised
inside Beam steps reach the user as one line naming the file; an empty input file is named; staging
left by a killed run is removed by the next one; the local runner never tries Prism; the job prints
progress lines instead of Beam's logging.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
from apache_beam.runners.portability import prism_runner
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs import preprocess as job
from cdanet.preprocessing import PreprocessingError, PreprocessOptions, run_preprocessing
from cdanet.preprocessing.formats import (
    BROKEN_JSON,
    INVALID_VALUE,
    PARSER_ERROR,
    TIMESTAMP_RANGE,
    AmazonMetaLine,
    AmazonRatingsCsv,
    AmazonReviewJson,
    LineFormat,
    Malformed,
    TaobaoAdFeature,
    TaobaoRawSample,
    TaobaoUserBehavior,
)
from cdanet.preprocessing.glove import check_glove_header
from cdanet.preprocessing.io import DEAD_LETTERS, ROWS, ParseLines
from cdanet.preprocessing.pipeline import LOCAL_RUNNER, pipeline_options
from cdanet.preprocessing.progress import Progress, one_line_error, quiet_beam
from cdanet.preprocessing.staging import OWNER_LOCK, STALE_UNLOCKED_SECONDS, Staging, remove_stale_staging
from cdanet.preprocessing.tables import ToRows
from cdanet.simulate import simulate

REPO = Path(__file__).resolve().parents[1]
IN_PROCESS = ["--runner=FnApiRunner"]
HUGE = "99999999999999999999"
NESTED_JSON = '{"asin": "B0001", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
NESTED_LITERAL = "{'asin': 'B0002', 'x': " + "[" * 100_000 + "]" * 100_000 + "}"
#: Beam's own console output that the job must not show by default.
BEAM_NOISE = ("INFO", "apache_beam", "Traceback", "sdk_worker", "semi_persistent", "apitools")


def reason(fmt: LineFormat, line: str) -> str:
    with pytest.raises(Malformed) as e:
        fmt.parse(line)
    return e.value.reason


# ---- one crafted line = one dead letter ----------------------------------------------------------
@pytest.mark.parametrize("fmt, line, why", [
    (AmazonMetaLine(), NESTED_JSON, BROKEN_JSON),
    (AmazonMetaLine(), NESTED_LITERAL, BROKEN_JSON),
    (AmazonRatingsCsv(), f"A,B,4.0,{HUGE}", TIMESTAMP_RANGE),
    (AmazonRatingsCsv(), "A,B,4.0,5", TIMESTAMP_RANGE),  # 1970
    (AmazonRatingsCsv(), "A,B,4.0,4102444800", TIMESTAMP_RANGE),  # 2100-01-01
    (AmazonRatingsCsv(), "A,B,4.0,1e300", TIMESTAMP_RANGE),
    (AmazonReviewJson(), f'{{"reviewerID": "A", "asin": "B", "overall": 5.0, "unixReviewTime": {HUGE}}}',
     TIMESTAMP_RANGE),
    (AmazonReviewJson(), f'{{"user_id": "A", "parent_asin": "B", "rating": 5.0, "timestamp": {HUGE}}}',
     TIMESTAMP_RANGE),
    (AmazonReviewJson(), '{"user_id": "A", "parent_asin": "B", "rating": 5.0, "timestamp": ' + "9" * 5000 + "}",
     BROKEN_JSON),  # longer than Python's int-parsing limit
    (TaobaoRawSample(), f"1,{HUGE},2,430548_1007,1,0", TIMESTAMP_RANGE),
    (TaobaoUserBehavior(), f"1,2,3,pv,{HUGE}", TIMESTAMP_RANGE),
    (TaobaoAdFeature(), "1,2,3,4,NULL,1e12", INVALID_VALUE),
])
def test_crafted_lines_are_malformed_not_fatal(fmt: LineFormat, line: str, why: str) -> None:
    assert reason(fmt, line) == why


def test_timestamp_range_is_an_option() -> None:
    assert AmazonRatingsCsv(timestamp_range=(0, 10)).parse("A,B,4.0,5")[3] == 5
    assert AmazonRatingsCsv().parse("A,B,4.0,631152000")[3] == 631152000  # 1990-01-01, the default's start
    with pytest.raises(PreprocessingError, match="timestamp_range"):
        PreprocessOptions(timestamp_range=(10, 5)).validate()


@dataclass(frozen=True)
class _Hostile(LineFormat):
    """A format whose parser fails in ways no reason names, or returns a value that fits no int64."""

    name: str = "hostile test format"
    columns: tuple[tuple[str, pa.DataType], ...] = (("user_id", pa.string()), ("timestamp", pa.int64()))

    def parse(self, text: str) -> tuple[Any, ...]:
        if text == "overflow":
            raise OverflowError("int too large to convert")
        if text == "recursion":
            raise RecursionError("maximum recursion depth exceeded")
        if text == "huge":
            return ("u", 10**30)
        return (text, 1_300_000_000)


def test_any_parser_failure_is_one_dead_letter() -> None:
    chunk = ("raw.csv", 1, [b"a", b"overflow", b"b", b"recursion", b"huge", b"c"])
    with beam.Pipeline(options=pipeline_options(IN_PROCESS)) as p:
        out = p | beam.Create([chunk]) | ParseLines(_Hostile(), "rec", line_numbers=True)
        assert_that(out[ROWS] | ToRows() | beam.Map(lambda r: (r["user_id"], r["_line"])),
                    equal_to([("a", 1), ("b", 3), ("c", 6)]), label="rows")
        assert_that(out[DEAD_LETTERS] | beam.Map(lambda d: (d["file"], d["line"], d["reason"], d["detail"][:13])),
                    equal_to([("raw.csv", 2, PARSER_ERROR, "OverflowError"),
                              ("raw.csv", 4, PARSER_ERROR, "RecursionErro"),
                              ("raw.csv", 5, INVALID_VALUE, "a value does ")]), label="dead")


@pytest.fixture
def prism_tripwire(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every attempt to run on Prism (which would download its binary first)."""
    calls: list[str] = []

    def tripped(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append("PrismRunner.run_pipeline")
        raise RuntimeError("the Prism runner was tried")

    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", tripped)
    return calls


@pytest.mark.slow
def test_crafted_raw_lines_land_in_dead_letters_and_the_job_succeeds(tmp_path: Path,
                                                                     prism_tripwire: list[str]) -> None:
    simulate(str(tmp_path / "raw"), dataset="amazon", scale="tiny", seed=4)
    amazon = tmp_path / "raw" / "amazon"
    injected = {
        "ratings_Movies_and_TV.csv": [f"AX1,B01,4.0,{HUGE}", f"AX2,B02,5.0,{HUGE}", "AX3,B03,1.0,5",
                                      "AX4,B04,2.0,4102444800"],
        "meta_Movies_and_TV.json": [NESTED_JSON, NESTED_LITERAL],
    }
    clean = {}
    for name, lines in injected.items():
        path = amazon / name
        clean[name] = len(path.read_text().splitlines())
        with open(path, "a") as fh:
            fh.write("\n".join(lines) + "\n")
    out = tmp_path / "out"
    stats = run_preprocessing("amazon", str(amazon), str(out), glove_path=glob.glob(str(tmp_path / "raw/glove/*"))[0],
                              options=PreprocessOptions(domains=("movie",), malformed_threshold=0.05),
                              beam_args=["--runner=DirectRunner"])
    dead = [json.loads(line) for f in glob.glob(str(out / "movie" / "dead_letter-*.jsonl")) for line in open(f)
            if line.strip()]
    by_kind = Counter((os.path.basename(d["file"]), d["reason"]) for d in dead)
    assert by_kind == {("ratings_Movies_and_TV.csv", TIMESTAMP_RANGE): 4, ("meta_Movies_and_TV.json", BROKEN_JSON): 2}
    assert sorted(d["line"] for d in dead if d["file"].endswith(".csv")) == list(range(clean["ratings_Movies_and_TV.csv"] + 1,
                                                                                       clean["ratings_Movies_and_TV.csv"] + 5))
    files = {os.path.basename(p): c for p, c in stats["movie"]["files"].items()}
    for name, n in clean.items():  # every clean line still parsed
        assert files[name]["parsed"] == n and sum(files[name]["malformed"].values()) == len(injected[name])
    assert prism_tripwire == []


# ---- the runner ----------------------------------------------------------------------------------
def test_local_runner_is_the_fn_api_runner_and_never_tries_prism(prism_tripwire: list[str]) -> None:
    for args in (None, [], ["--runner=DirectRunner"], ["--runner", "DirectRunner"], ["--runner=direct"]):
        assert pipeline_options(args).view_as(StandardOptions).runner == LOCAL_RUNNER, args
    default = pipeline_options(None).view_as(DirectOptions)
    assert default.direct_running_mode == "in_memory" and default.direct_num_workers == 1
    assert pipeline_options(["--runner=DataflowRunner"]).view_as(StandardOptions).runner == "DataflowRunner"
    # A pipeline Prism supports: Beam's DirectRunner would try Prism (and its download) first.
    with beam.Pipeline(options=pipeline_options(["--runner=DirectRunner"])) as p:
        assert_that(p | beam.Create([1, 2]) | beam.Map(lambda x: x * 2), equal_to([2, 4]))
    assert prism_tripwire == []


# ---- errors: one line naming the file ------------------------------------------------------------
def test_glove_header_is_checked_before_beam(tmp_path: Path) -> None:
    named = tmp_path / "glove.6B.300d.txt"
    named.write_text("the 0.1 0.2 0.3\nstar 1 2 3\n")
    with pytest.raises(PreprocessingError, match=r"glove.6B.300d.txt: line 1 has 3 values but the file name says 300d"):
        check_glove_header(str(named))
    words = tmp_path / "vectors.txt"
    words.write_text("the 0.1 zero 0.3\n")
    with pytest.raises(PreprocessingError, match=r"vectors.txt: line 1 has a non-numeric value"):
        check_glove_header(str(words))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(PreprocessingError, match=r"empty.txt is empty"):
        check_glove_header(str(tmp_path / "empty.txt"))
    ok = tmp_path / "glove.6B.3d.txt"
    ok.write_text("the 0.1 0.2 0.3\n")
    assert check_glove_header(str(ok)) == 3


def test_a_wrong_glove_dimension_fails_in_one_line_before_any_beam_run(tmp_path: Path) -> None:
    simulate(str(tmp_path / "raw"), dataset="amazon", scale="tiny", seed=4)
    real = tmp_path / "raw" / "glove" / "glove.sim.50d.txt"
    wrong = tmp_path / "glove.sim.300d.txt"
    wrong.write_bytes(real.read_bytes())
    with pytest.raises(PreprocessingError) as e:
        run_preprocessing("amazon", str(tmp_path / "raw" / "amazon"), str(tmp_path / "out"), glove_path=str(wrong),
                          beam_args=IN_PROCESS)
    assert str(e.value).startswith(f"{wrong}: line 1 has 50 values") and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_errors_from_beam_become_one_line() -> None:
    remote = RuntimeError(
        "Pipeline job failed:\nTraceback (most recent call last):\n  File \"glove.py\", line 148\n"
        "cdanet.preprocessing.options.PreprocessingError: /data/glove.txt: line 11 of word 'x' has a non-numeric "
        "value; expected 50 numbers after the word [while running 'movie/Featurize/TitleVectors/ReadGlove']\n\n")
    assert str(one_line_error("features", remote)) == (
        "/data/glove.txt: line 11 of word 'x' has a non-numeric value; expected 50 numbers after the word")
    local = PreprocessingError("f.csv: cannot be read after line 3 (EOFError: x) [while running 'movie/Read']")
    assert str(one_line_error("ingest", local, "/tmp/beam.log")) == (
        "f.csv: cannot be read after line 3 (EOFError: x) (Beam's log: /tmp/beam.log)")
    other = str(one_line_error("ingest", ValueError("bad thing\nmore\nlines")))
    assert "\n" not in other and other.startswith("the ingest run failed: ValueError: bad thing")


@pytest.mark.slow
def test_a_non_numeric_glove_value_on_a_used_word_is_one_line(tmp_path: Path, capfd: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the failed run's Beam log is kept
    simulate(str(tmp_path / "raw"), dataset="amazon", scale="tiny", seed=4)
    lines = (tmp_path / "raw" / "glove" / "glove.sim.50d.txt").read_text().splitlines()
    bad = tmp_path / "glove.sim.50d.txt"
    bad.write_text("\n".join([lines[0]] + [ln.rsplit(" ", 1)[0] + " x1" for ln in lines[1:]]) + "\n")
    code = job.main(["--dataset", "amazon", "--input", str(tmp_path / "raw" / "amazon"), "--glove", str(bad),
                     "--output", str(tmp_path / "out"), "--domains", "movie", *IN_PROCESS])
    err = capfd.readouterr().err
    assert code == 2
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"{bad}: line " in errors[0] and "non-numeric value" in errors[0], err
    (log,) = glob.glob(str(tmp_path / "cdanet-beam-*.log"))
    assert errors[0].endswith(f"(Beam's log: {log})") and "Traceback" in Path(log).read_text()
    assert not any(noise in err for noise in BEAM_NOISE), err
    assert not glob.glob(str(tmp_path / "out" / "_staging-*"))


@pytest.mark.slow
def test_an_empty_ratings_file_is_named(tmp_path: Path) -> None:
    simulate(str(tmp_path / "raw"), dataset="taobao", scale="tiny", seed=2)
    empty = tmp_path / "raw" / "taobao" / "UserBehavior.csv"
    empty.write_text("")
    with pytest.raises(PreprocessingError) as e:
        run_preprocessing("taobao", str(tmp_path / "raw" / "taobao"), str(tmp_path / "out"),
                          options=PreprocessOptions(domains=("rec",)), beam_args=IN_PROCESS)
    assert str(e.value) == (f"{empty} is empty (no lines): expected Taobao UserBehavior.csv "
                            "(user_id,item_id,category_id,behavior_type,timestamp; no header) data lines")


@pytest.mark.parametrize("verbose", [False, True])
def test_beam_output_is_kept_off_the_console_unless_verbose(verbose: bool, capfd: pytest.CaptureFixture) -> None:
    beam_log = logging.getLogger("apache_beam.runners.worker.sdk_worker")
    handler = logging.StreamHandler(sys.stderr)  # as basicConfig would have set up before the run
    logging.getLogger().addHandler(handler)
    old_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.INFO)
    try:
        with quiet_beam(verbose) as log_path:
            beam_log.info("Creating insecure control channel")
            beam_log.error("a worker's error report")
            os.write(2, b"WARNING:__main__:what a worker process writes to the inherited stderr\n")
            Progress()("movie: read 10 lines")
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(old_level)
    err = capfd.readouterr().err
    assert "movie: read 10 lines" in err
    noise = ("Creating insecure control channel", "a worker's error report", "inherited stderr")
    if verbose:
        assert log_path is None and all(n in err for n in noise), err
    else:
        assert not any(n in err for n in noise), err
        assert "inherited stderr" in Path(log_path).read_text()
        os.unlink(log_path)


def test_importing_the_library_prints_none_of_beams_notes() -> None:
    # As a KFP component does: logging at INFO, then the first import of Beam (through the library).
    code = "import logging; logging.basicConfig(level=logging.INFO); import cdanet.preprocessing"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done.stderr


def test_a_long_beam_run_says_it_still_runs() -> None:
    stream = io.StringIO()
    say = Progress(stream)
    with say.heartbeat("ingest run", every=0.01):
        time.sleep(0.5)
    beats = stream.getvalue().splitlines()
    assert beats and all(b.startswith("[preprocess 0:00:0") and "ingest run: still running (0:00:0" in b for b in beats)
    time.sleep(0.05)
    assert stream.getvalue().splitlines() == beats  # stopped with the block
    with Progress(stream, enabled=False).heartbeat("x", every=0.01):
        time.sleep(0.05)
    assert stream.getvalue().splitlines() == beats


# ---- staging left by a killed run ----------------------------------------------------------------
def test_only_stale_staging_is_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    live = Staging(str(out))
    dead = out / "_staging-dead"
    dead.mkdir()
    (dead / OWNER_LOCK).write_text("12345 0\n")  # nobody holds its lock: its run is gone
    young = out / "_staging-young"  # no lock yet: could be a run that is starting
    young.mkdir()
    other = out / "movie"
    other.mkdir()
    assert remove_stale_staging(str(out)) == [str(dead)]
    assert os.path.isdir(live.path) and young.is_dir() and other.is_dir()
    assert remove_stale_staging(str(out), now=time.time() + STALE_UNLOCKED_SECONDS + 1) == [str(young)]
    assert os.path.isdir(live.path)  # still locked by this process
    live.remove()
    assert not os.path.exists(live.path) and other.is_dir()


@pytest.mark.slow
def test_a_killed_run_leaves_staging_that_the_next_run_removes(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    simulate(str(tmp_path / "raw"), dataset="taobao", scale="tiny", seed=2)
    out = tmp_path / "out"
    args = ["--dataset", "taobao", "--input", str(tmp_path / "raw" / "taobao"), "--output", str(out),
            "--domains", "rec", *IN_PROCESS]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "beam_jobs.preprocess", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not glob.glob(str(out / "_staging-*" / "_work")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the job ended before it could be killed"
            time.sleep(0.2)
        assert glob.glob(str(out / "_staging-*" / "_work")), "the job never started writing"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (left,) = glob.glob(str(out / "_staging-*"))
    capfd.readouterr()
    assert job.main(args) == 0
    err = capfd.readouterr().err
    assert not glob.glob(str(out / "_staging-*")) and (out / "rec" / "schema.json").exists()
    # The progress lines of every stage, and none of Beam's own output.
    assert f"removed {left} (left by a run that did not finish)" in err
    for expected in ("rec: ingest run: reading UserBehavior.csv", "rec: read UserBehavior.csv ",
                     " dead letters", "rec: 10-core passes 1-", "rec: features run:", "rec: wrote "):
        assert expected in err, (expected, err)
    assert all(ln.startswith("[preprocess ") for ln in err.splitlines()), err
    assert not any(noise in err for noise in BEAM_NOISE), err


# ---- the stats table of the preprocess step ------------------------------------------------------
@pytest.mark.slow
def test_stats_markdown_shows_the_positive_rate(tmp_path: Path) -> None:
    from helpers import configure

    from cdanet import steps

    simulate(str(tmp_path / "raw"), dataset="taobao", scale="tiny", seed=2)
    cfg = configure(tmp_path, dataset="taobao", raw_uri=str(tmp_path / "raw" / "taobao"), glove_uri="")
    config = tmp_path / "config.json"
    config.write_text(cfg.to_json())
    out = tmp_path / "out"
    result = steps.preprocess(str(config), str(tmp_path / "raw" / "taobao"), "", str(out), "", 0, IN_PROCESS)
    rows = [ln.split("|")[1:-1] for ln in result.markdown.splitlines() if ln.startswith("| ") and "---" not in ln]
    header, *domains = [[c.strip() for c in r] for r in rows]
    assert header[-1] == "positive rate" and {d[0] for d in domains} == {"ad", "rec"}
    for d in domains:
        stats = json.loads((out / d[0] / "stats.json").read_text())
        rate = stats["positives"]["total"] / sum(stats["rows"][s] for s in ("train", "validation", "test"))
        assert d[-1] != "" and float(d[-1]) == pytest.approx(rate, abs=1e-6)


def _domain_run(tmp_path: Path, kept: int, splits: dict[str, int]):
    """A finished features run's record: k-core kept ``kept`` rows; each split counted and written as given."""
    import pyarrow.parquet as pq

    from cdanet.preprocessing.composites import DomainInputs
    from cdanet.preprocessing.domains import LAYOUTS
    from cdanet.preprocessing.staging import DomainRun
    run = DomainRun(inputs=DomainInputs("movie", ()), layout=LAYOUTS["movie"], work=str(tmp_path / "work"),
                    out=str(tmp_path / "out"), row_schema=pa.schema([]), k=5, kcore_run=1, last_pass=2)
    run.record_counts([(("kcore", "002", "rows"), kept)])
    os.makedirs(run.out)
    for name, n in splits.items():
        run.record_counts([(("split", name, "rows"), n)])
        pq.write_table(pa.table({"label": [0] * n}), os.path.join(run.out, f"{name}-00000-of-00001.parquet"))
    return run


def test_rows_lost_between_k_core_and_the_splits_fail_the_job_in_one_line(tmp_path: Path) -> None:
    from cdanet.preprocessing.pipeline import check_no_rows_lost
    o = PreprocessOptions()
    check_no_rows_lost(_domain_run(tmp_path / "ok", 100, {"train": 80, "validation": 10, "test": 10}), o)
    # A runner that drops elements: the splits are 8:1:1 of fewer rows than k-core kept (seen at paper scale).
    with pytest.raises(PreprocessingError, match=r"domain movie: the splits hold 87 rows .* but k-core kept 100"):
        check_no_rows_lost(_domain_run(tmp_path / "lost", 100, {"train": 70, "validation": 8, "test": 9}), o)
    # ... or while writing: the shards hold fewer rows than their split
    run = _domain_run(tmp_path / "write", 100, {"train": 80, "validation": 10, "test": 10})
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"label": [0] * 9}), os.path.join(run.out, "test-00000-of-00001.parquet"))
    with pytest.raises(PreprocessingError, match=r"test-\*\.parquet holds 9 rows, the test split 10"):
        check_no_rows_lost(run, o)
