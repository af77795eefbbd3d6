"""The paper's studies on tiny synthetic data: plans, runs, tables, figures, Table 4, oracle, CLI."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdanet.contract import split_files
from cdanet.studies import (
    StudySpec,
    StudySpecError,
    fig5,
    fig6,
    grid_points,
    oracle_auc,
    plan_study,
    run_many,
    table2,
    table4,
    table5,
    unique_runs,
)
from cdanet.studies.cli import main as cli_main
from cdanet.studies.oracle import SCOPE_DOMAIN, SCOPE_TEST
from cdanet.studies.plan import Run
from cdanet.studies.report import RESULT_COLUMNS, select_grid
from cdanet.studies.runner import RECORD_FILENAME
from cdanet.studies.semantics import TABLE4_COLUMNS
from cdanet.studies.study import translation_model_dir
from cdanet.synthetic import write_synthetic_processed


@pytest.fixture(scope="module")
def tiny_processed(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("studies_processed"))
    write_synthetic_processed(root, "amazon", n_users=80, rows_per_domain={"movie": 600, "book": 1200}, seed=0)
    return root


@pytest.fixture(scope="module")
def study_out(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One output folder for the training studies, so shared configs train once (the runs cache)."""
    return str(tmp_path_factory.mktemp("studies_out"))


def tiny_spec(**changes) -> StudySpec:
    spec = StudySpec.tiny("amazon").with_changes(targets=["movie"])
    for section, values in changes.items():
        for key, value in values.items():
            setattr(getattr(spec, section), key, value)
    return spec.validate()


# ---- spec and plan ----------------------------------------------------------------------------------
def test_spec_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("dataset: amazon\nseeds: [3, 4]\ntable2:\n  models: [mlp, cdanet]\n  grid:\n"
                    "    '*': {train.learning_rate: [0.001, 0.01]}\n")
    spec = StudySpec.load(str(path))
    assert spec.seeds == [3, 4] and spec.table2.models == ["mlp", "cdanet"]
    assert spec.target_domains == ["movie", "book"]
    assert StudySpec.from_dict(json.loads(spec.to_json())) == spec

    path.write_text("table2:\n  modles: [mlp]\n")
    with pytest.raises(StudySpecError, match=r"spec\.yaml.*'table2'.*unknown key\(s\) \['modles'\]"):
        StudySpec.load(str(path))
    with pytest.raises(StudySpecError, match="fig5.train_fractions"):
        StudySpec.from_dict({"fig5": {"train_fractions": [0.0, 1.0]}})
    with pytest.raises(StudySpecError, match="unknown target domain 'ad'"):
        StudySpec.from_dict({"targets": ["ad"]})
    with pytest.raises(StudySpecError, match="unknown config key 'model.alhpa'"):
        StudySpec.from_dict({"overrides": ["model.alhpa=0.1"]})


def test_grid_points_product_and_model_override():
    grid = {"*": {"train.learning_rate": [1e-3, 1e-2], "model.dropout": [0.0]},
            "cdanet": {"model.alpha": [0.01, 0.03], "model.dropout": [0.1, 0.2]}}
    assert grid_points(grid, "mlp") == [
        {"model.dropout": 0.0, "train.learning_rate": 1e-3}, {"model.dropout": 0.0, "train.learning_rate": 1e-2}]
    cdanet = grid_points(grid, "cdanet")
    assert len(cdanet) == 2 * 2 * 2 and all(p["model.dropout"] in (0.1, 0.2) for p in cdanet)
    assert grid_points({}, "mlp") == [{}]


def test_plans_share_identical_configs_across_studies():
    spec = StudySpec.tiny("amazon")  # both targets, one seed
    plans = {s: plan_study(s, spec) for s in ("table2", "table5", "fig5", "fig6")}
    assert len(plans["table2"].cells) == 2 * 2  # models x targets
    assert len(plans["fig5"].cells) == 2 * 2 * 2  # models x fractions x targets
    assert len(plans["fig6"].cells) == (2 + 1 + 2) * 2
    full = {c.run_id for p in plans.values() for c in p.cells if c.model == "cdanet" and c.target_domain == "movie"
            and c.variant in ("cdanet", "none") and (c.value in (None, 1.0, 0.01, 0.1, 2.0))}
    runs = unique_runs(plans.values())
    assert len(runs) < sum(len(p.cells) for p in plans.values())
    # Full CDAnet at the profile's settings is one run, whichever study asks for it.
    table2_cdanet = next(c.run_id for c in plans["table2"].cells if c.model == "cdanet" and c.target_domain == "movie")
    assert table2_cdanet in full
    assert any(c.run_id == table2_cdanet for c in plans["table5"].cells if c.variant == "none")
    assert any(c.run_id == table2_cdanet for c in plans["fig5"].cells if c.value == 1.0)
    cfg = runs[0].experiment_config()
    assert cfg.train.max_epochs == 1 and cfg.train.progress is False


def test_run_spec_json_is_checked():
    run = unique_runs([plan_study("table2", StudySpec.tiny("amazon"))])[0]
    assert Run.from_json(run.to_json()) == run
    tampered = json.loads(run.to_json())
    tampered["config"]["model"]["alpha"] = 0.5
    with pytest.raises(ValueError, match="does not match its config"):
        Run.from_json(json.dumps(tampered))


def test_select_grid_uses_mean_validation_auc_over_seeds():
    rows = []
    # grid 0: seeds 0.70, 0.60 (mean 0.65); grid 1: 0.66, 0.66 (mean 0.66, but lower max); grid 2 ties grid 1.
    for gi, vals in enumerate([(0.70, 0.60), (0.66, 0.66), (0.66, 0.66)]):
        for seed, v in enumerate(vals):
            rows.append({"variant": "mlp", "target_domain": "movie", "grid_index": gi, "seed": seed,
                         "status": "ok", "val_auc": v, "test_auc": 0.5 + gi / 10})
    rows.append({"variant": "mlp", "target_domain": "book", "grid_index": 0, "seed": 0, "status": "failed",
                 "val_auc": np.nan, "test_auc": np.nan})
    out = select_grid(pd.DataFrame(rows))
    chosen = out[out["selected"]]
    assert set(chosen.loc[chosen["target_domain"] == "movie", "grid_index"]) == {1}  # tie 1 vs 2 -> lower index
    assert chosen.loc[chosen["target_domain"] == "book", "grid_index"].tolist() == [0]


# ---- training studies ---------------------------------------------------------------------------------
def test_table2_outputs_and_cache(tiny_processed, study_out):
    df = table2(tiny_processed, study_out, tiny_spec(), progress=False)
    assert list(df.columns) == list(RESULT_COLUMNS)
    assert len(df) == 2 and set(df["model"]) == {"mlp", "cdanet"} and (df["status"] == "ok").all()
    assert df["test_auc"].between(0, 1).all() and df["val_auc"].between(0, 1).all()
    assert (df["test_rows"] == 60).all()  # the 10% chronological test split of 600 movie rows
    csv = pd.read_csv(os.path.join(study_out, "table2.csv"))
    assert list(csv.columns) == list(RESULT_COLUMNS) and len(csv) == 2
    md = open(os.path.join(study_out, "table2.md")).read()
    assert "| Model | movie |" in md and "| MLP |" in md and "| CDAnet |" in md
    assert f"{df.loc[df['model'] == 'mlp', 'test_auc'].iloc[0]:.4f}" in md

    def must_not_train(run, processed_root, run_dir):
        raise AssertionError(f"{run.label} was trained again instead of read from the cache")

    plan = plan_study("table2", tiny_spec())
    records = run_many(list(plan.runs.values()), tiny_processed, os.path.join(study_out, "runs"),
                       progress=False, execute=must_not_train)
    assert all(r.cached for r in records.values())
    assert {rid: r.metric("auc") for rid, r in records.items()} == dict(zip(df["run_id"], df["test_auc"], strict=True))


def test_table2_grid_search_selects_best_validation_auc(tiny_processed, study_out):
    spec = tiny_spec(table2={"models": ["mlp"], "grid": {"mlp": {"train.learning_rate": [1e-5, 3e-2]}}})
    df = table2(tiny_processed, study_out, spec, progress=False)
    assert len(df) == 2 and sorted(df["grid_index"]) == [0, 1]
    best = df.loc[df["val_auc"].idxmax()]
    assert df.loc[df["selected"], "grid_index"].tolist() == [best["grid_index"]]
    md = open(os.path.join(study_out, "table2.md")).read()
    assert f"{best['test_auc']:.4f}" in md and best["grid_point"] in md


def test_table5_rows_follow_the_paper(tiny_processed, study_out):
    df = table5(tiny_processed, study_out, tiny_spec(), progress=False)
    assert set(df["variant"]) == {"none", "no_translation"} and (df["status"] == "ok").all()
    lines = open(os.path.join(study_out, "table5.md")).read().splitlines()
    header = lines.index("| Variant | movie |")
    assert lines[header + 2].startswith("| w/o translation network |") and lines[header + 3].startswith("| CDAnet |")


def _png_ok(path: str) -> None:
    from matplotlib.image import imread

    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(img[..., :3].std()) > 0  # not a blank canvas


def test_fig5_and_fig6_write_png_and_csv(tiny_processed, study_out):
    spec = tiny_spec(fig5={"models": ["cdanet"]}, fig6={"alpha": [0.01, 0.1], "beta": [0.1], "num_experts": [1, 2]})
    df5 = fig5(tiny_processed, study_out, spec, progress=False)
    assert len(df5) == 2 and sorted(df5["value"]) == [0.5, 1.0] and set(df5["param"]) == {"train_fraction"}
    _png_ok(os.path.join(study_out, "fig5.png"))
    assert "- Id-only LR / movie: test AUC 0." in open(os.path.join(study_out, "fig5.md")).read()
    df6 = fig6(tiny_processed, study_out, spec, progress=False)
    assert sorted(df6.groupby("param").size().items()) == [("alpha", 2), ("beta", 1), ("num_experts", 2)]
    _png_ok(os.path.join(study_out, "fig6.png"))
    assert len(pd.read_csv(os.path.join(study_out, "fig6.csv"))) == 5
    # alpha=0.01, beta=0.1 and K=2 are the profile's defaults: one shared run.
    defaults = df6[((df6["param"] == "alpha") & (df6["value"] == 0.01)) | (df6["param"] == "beta")
                   | ((df6["param"] == "num_experts") & (df6["value"] == 2))]
    assert defaults["run_id"].nunique() == 1


def test_failed_run_is_kept_and_marked(tiny_processed, tmp_path):
    broken = str(tmp_path / "processed")
    shutil.copytree(tiny_processed, broken)
    for path in split_files(os.path.join(broken, "movie"), "test"):
        t = pq.read_table(path)
        labels = pa.array(np.zeros(t.num_rows, dtype=np.int64))
        pq.write_table(t.set_column(t.schema.get_field_index("label"), "label", labels), path)
    df = table2(broken, str(tmp_path / "out"), tiny_spec(table2={"models": ["mlp"]}), progress=False)
    assert df["status"].tolist() == ["failed"] and "EvaluationError" in df["error"].iloc[0]
    assert "failed (1 run)" in open(tmp_path / "out" / "table2.md").read()
    assert not os.path.exists(tmp_path / "out" / "runs" / df["run_id"].iloc[0] / "model")
    with open(tmp_path / "out" / "runs" / df["run_id"].iloc[0] / RECORD_FILENAME) as fh:
        assert json.load(fh)["record"]["status"] == "failed"


# ---- Table 4 ------------------------------------------------------------------------------------------
def test_table4_neighbours_titles_and_determinism(tiny_processed, tmp_path):
    processed = str(tmp_path / "processed")
    shutil.copytree(tiny_processed, processed)
    for domain, prefix in (("movie", "Film"), ("book", "Novel")):
        ids = sorted({i for p in split_files(os.path.join(processed, domain), "train")
                      for i in pq.read_table(p, columns=["item_id_raw"])["item_id_raw"].to_pylist()})
        pq.write_table(pa.table({"item_id_raw": ids, "title": [f"{prefix} {i}" for i in ids]}),
                       os.path.join(processed, domain, "items.parquet"))
    spec = tiny_spec(table4={"k": 4, "users": 3, "items_per_user": 2})
    out = str(tmp_path / "out")
    model_dir = translation_model_dir(processed, out, spec, progress=False)
    df = table4(processed, out, spec, progress=False, model_dir=model_dir)
    assert list(df.columns) == list(TABLE4_COLUMNS)
    per_query = df.groupby(["user_id", "item_id"])
    assert 1 <= per_query.ngroups <= 3 * 2 and (per_query.size() == 4).all()
    assert all(g["rank"].tolist() == [1, 2, 3, 4] and g["neighbour_item_id"].is_unique
               and g["distance"].is_monotonic_increasing for _, g in per_query)
    assert df["title"].str.startswith("Film M").all() and df["neighbour_title"].str.startswith("Novel B").all()
    assert (df["source_domain"] == "book").all()

    again = table4(processed, str(tmp_path / "again"), spec, progress=False, model_dir=model_dir)
    pd.testing.assert_frame_equal(df, again)
    other = table4(processed, str(tmp_path / "other"), tiny_spec(table4={"k": 4, "users": 3, "seed": 7}),
                   progress=False, model_dir=model_dir)
    assert (other["user_id"].tolist() != df["user_id"].tolist()) or len(other) != len(df)
    md = open(os.path.join(out, "table4.md")).read()
    assert "| User ID | movie item | movie title | rank | book item | book title | distance |" in md
    assert md.count("| Film ") == per_query.ngroups


def test_table4_rejects_a_stage2_model(tiny_processed, study_out):
    spec = tiny_spec()
    aug_dir = next(os.path.join(study_out, "runs", c.run_id, "model") for c in plan_study("table2", spec).cells
                   if c.model == "cdanet")
    if not os.path.isdir(aug_dir):
        table2(tiny_processed, study_out, spec, progress=False)
    with pytest.raises(ValueError, match="needs a translation network"):
        table4(tiny_processed, str(study_out), spec, progress=False, model_dir=aug_dir)


# ---- oracle -----------------------------------------------------------------------------------------
def _write_truth(sim_dir, rows: pd.DataFrame, p_click: np.ndarray) -> None:
    os.makedirs(os.path.join(sim_dir, "ground_truth"), exist_ok=True)
    pq.write_table(pa.table({"user": rows["user_id_raw"], "item": rows["item_id_raw"], "timestamp": rows["timestamp"],
                             "p_click": p_click, "label": rows["label"]}),
                   os.path.join(sim_dir, "ground_truth", "movie.parquet"))


def test_oracle_joins_test_rows_or_falls_back_to_the_domain(tiny_processed, tmp_path):
    from sklearn.metrics import log_loss, roc_auc_score

    cols = ["user_id_raw", "item_id_raw", "timestamp", "label"]
    test = pd.concat([pq.read_table(p, columns=cols).to_pandas()
                      for p in split_files(os.path.join(tiny_processed, "movie"), "test")])
    train = pd.concat([pq.read_table(p, columns=cols).to_pandas()
                       for p in split_files(os.path.join(tiny_processed, "movie"), "train")])
    rng = np.random.default_rng(0)
    rows = pd.concat([train, test], ignore_index=True)
    p = np.clip(0.3 + 0.4 * rows["label"].to_numpy() + rng.normal(0, 0.3, len(rows)), 0.01, 0.99)
    sim = str(tmp_path / "sim")
    _write_truth(sim, rows, p)
    o = oracle_auc(os.path.join(sim, "amazon"), tiny_processed, "movie")  # the raw subfolder is accepted too
    assert o.scope == SCOPE_TEST and o.matched == o.n == o.test_rows == len(test)
    expected = roc_auc_score(rows["label"].to_numpy()[len(train):], p[len(train):])
    assert o.auc == pytest.approx(expected)
    assert o.logloss == pytest.approx(log_loss(rows["label"].to_numpy()[len(train):], p[len(train):]))

    shifted = rows.assign(timestamp=rows["timestamp"] + 1)  # preprocessing shifted time: no row joins
    _write_truth(sim, shifted, p)
    o = oracle_auc(sim, tiny_processed, "movie")
    assert o.scope == SCOPE_DOMAIN and o.matched == 0 and o.n == len(rows)
    assert o.auc == pytest.approx(roc_auc_score(rows["label"], p))
    assert o.logloss == pytest.approx(log_loss(rows["label"], p))
    with pytest.raises(FileNotFoundError, match="ground_truth"):
        oracle_auc(str(tmp_path), tiny_processed, "movie")


def _write_full_truth(sim_dir, processed_root: str) -> None:
    """A ground truth with the logit parts and user priors for every processed row of both domains.

    The clicks are the processed labels; ``p_click`` follows a drawn taste, so the ceiling has signal to find.
    """
    rng = np.random.default_rng(0)
    cols = ["user_id_raw", "item_id_raw", "timestamp", "label"]
    rows = {d: pd.concat([pq.read_table(p, columns=cols).to_pandas() for split in ("train", "validation", "test")
                          for p in split_files(os.path.join(processed_root, d), split)], ignore_index=True)
            for d in ("movie", "book")}
    users = sorted(set(rows["movie"]["user_id_raw"]) | set(rows["book"]["user_id_raw"]))
    taste, activity = rng.normal(0, 1, (len(users), 4)), rng.normal(0, 1, len(users))
    index = {u: i for i, u in enumerate(users)}
    os.makedirs(os.path.join(sim_dir, "ground_truth"), exist_ok=True)
    for d, r in rows.items():
        topic = r["item_id_raw"].str[1:].astype(int).to_numpy() % 4
        offset = rng.normal(-1.0, 0.5, len(r))
        u = r["user_id_raw"].map(index).to_numpy()
        p = 1 / (1 + np.exp(-(offset + 1.3 * taste[u, topic] + 0.15 * activity[u])))
        pq.write_table(pa.table({
            "user": r["user_id_raw"], "item": r["item_id_raw"], "timestamp": r["timestamp"], "p_click": p,
            "label": r["label"], "topic": topic, "offset": offset, "taste_weight": np.full(len(r), 1.3),
            "activity_weight": np.full(len(r), 0.15)}), os.path.join(sim_dir, "ground_truth", f"{d}.parquet"))
    lists = pa.list_(pa.float64(), 4)
    pq.write_table(pa.table({
        "user": users, "prior_mean": pa.array(np.zeros((len(users), 4)).tolist(), lists),
        "prior_sd": pa.array(np.ones((len(users), 4)).tolist(), lists), "activity_prior_sd": np.ones(len(users)),
        "taste": pa.array(taste.tolist(), lists), "activity": activity}),
        os.path.join(sim_dir, "ground_truth", "amazon_users.parquet"))


def _table_rows(md: str, header: str) -> list[list[str]]:
    """The rows (label + cells) of the first Markdown table under ``header``."""
    lines = md.splitlines()
    start = lines.index(header) + 2
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[start:end]]


def test_reference_rows_in_tables_without_and_with_ground_truth(tiny_processed, study_out, tmp_path):
    from cdanet.contract import load_schemas
    from cdanet.data import load_split
    from cdanet.evaluation import compute_metrics
    from cdanet.references import IdLogisticRegression, ItemPopularity
    from cdanet.studies import learnable_ceiling

    schema = load_schemas(tiny_processed, ["movie"])["movie"]
    train, val, test = (load_split(tiny_processed, schema, s) for s in ("train", "validation", "test"))
    labels = test.label.numpy()
    lr = compute_metrics("movie", labels, IdLogisticRegression().fit(train, val).predict(test))
    pop = compute_metrics("movie", labels, ItemPopularity().fit(train, val).predict(test))
    p0 = train.label.numpy().mean()
    base = float(-np.mean(labels * np.log(p0) + (1 - labels) * np.log(1 - p0)))

    # Real data (no simulator): popularity and LR rows, the base rate in the logloss table, no ceilings.
    df = table2(tiny_processed, study_out, tiny_spec(), progress=False)
    md = open(os.path.join(study_out, "table2.md")).read()
    auc_rows = _table_rows(md, "| Model | movie |")
    assert [r[0] for r in auc_rows] == ["MLP", "CDAnet", "Item popularity", "Id-only LR"]
    assert auc_rows[2][1] == f"{pop.auc:.4f}" and auc_rows[3][1] == f"{lr.auc:.4f}"
    logloss_md = md[md.index("Test logloss"):]
    loss_rows = _table_rows(logloss_md, "| Model | movie |")
    assert [r[0] for r in loss_rows] == ["MLP", "CDAnet", "Base rate", "Item popularity", "Id-only LR"]
    assert loss_rows[0][1].strip("*") == f"{df.loc[df['model'] == 'mlp', 'test_logloss'].iloc[0]:.4f}"
    assert loss_rows[2][1] == f"{base:.4f}" and loss_rows[4][1] == f"{lr.logloss:.4f}"
    assert "Ceiling" not in md and "ceiling (target" not in md
    refs = pd.read_csv(os.path.join(study_out, "table2_references.csv"))
    assert refs["reference"].tolist() == ["base_rate", "popularity", "id_lr"]
    assert refs.loc[2, "test_auc"] == pytest.approx(lr.auc) and (refs["test_rows"] == 60).all()

    # Simulated data: the two learnable ceilings and the oracle follow, in that order.
    sim = str(tmp_path / "sim")
    _write_full_truth(sim, tiny_processed)
    ceiling = learnable_ceiling(sim, tiny_processed, "movie")
    table5(tiny_processed, study_out, tiny_spec(), progress=False, oracle_from=sim)
    md = open(os.path.join(study_out, "table5.md")).read()
    auc_rows = _table_rows(md, "| Variant | movie |")
    assert [r[0] for r in auc_rows][-5:] == ["Item popularity", "Id-only LR", "Learnable ceiling (target)",
                                             "Learnable ceiling (target + source)", "Oracle (simulator p_click)"]
    assert auc_rows[-3][1] == f"{ceiling['target'].auc:.4f}"
    assert auc_rows[-2][1] == f"{ceiling['target + source'].auc:.4f}"
    assert ceiling["target + source"].pretest_rows > ceiling["target"].pretest_rows
    loss_rows = _table_rows(md[md.index("Test logloss"):], "| Variant | movie |")
    assert loss_rows[-2][0] == "Learnable ceiling (target + source)"
    assert loss_rows[-2][1] == f"{ceiling['target + source'].logloss:.4f}"
    assert "- Learnable ceiling (target + source) / movie: tastes inferred from 1620 pre-test rows" in md
    refs = pd.read_csv(os.path.join(study_out, "table5_references.csv"))
    assert refs["reference"].tolist() == ["base_rate", "popularity", "id_lr", "ceiling_target", "ceiling_both",
                                          "oracle"]


def test_pipeline_aggregation_reports_the_references(tiny_processed, study_out, tmp_path):
    from cdanet.studies import pipeline_steps

    spec = {"targets": ["movie"]}
    table2(tiny_processed, study_out, pipeline_steps.resolve_spec(spec, tiny=True), progress=False)
    records = []
    for run_id in plan_study("table2", pipeline_steps.resolve_spec(spec, tiny=True)).runs:
        with open(os.path.join(study_out, "runs", run_id, RECORD_FILENAME)) as fh:
            records.append(json.dumps(json.load(fh)["record"]))
    paths = [str(tmp_path / name) for name in ("results.csv", "tables.md", "figures.html")]
    metrics = pipeline_steps.aggregate(spec, True, ["table2"], records, tiny_processed, "", *paths)
    refs = pd.read_csv(os.path.join(study_out, "table2_references.csv")).set_index("reference")
    assert metrics["reference_id_lr_movie_auc"] == pytest.approx(refs.loc["id_lr", "test_auc"])
    assert metrics["reference_base_rate_movie_logloss"] == pytest.approx(refs.loc["base_rate", "test_logloss"])
    assert "reference_base_rate_movie_auc" not in metrics  # 0.5 by construction
    tables = open(paths[1]).read()
    assert "| Item popularity |" in tables and "| Id-only LR |" in tables
    assert "Id-only LR / movie: test AUC" in open(paths[2]).read()


def test_oracle_row_in_table(tiny_processed, study_out, tmp_path):
    cols = ["user_id_raw", "item_id_raw", "timestamp", "label"]
    rows = pd.concat([pq.read_table(p, columns=cols).to_pandas()
                      for p in split_files(os.path.join(tiny_processed, "movie"), "test")])
    _write_truth(str(tmp_path), rows, np.where(rows["label"] == 1, 0.9, 0.1))
    df = table2(tiny_processed, study_out, tiny_spec(), progress=False, oracle_from=str(tmp_path))
    assert (df["oracle_auc"] == 1.0).all() and (df["oracle_scope"] == SCOPE_TEST).all()
    md = open(os.path.join(study_out, "table2.md")).read()
    assert "| Oracle (simulator p_click) | 1.0000 |" in md and "oracle on the 60 test rows" in md


# ---- command line -----------------------------------------------------------------------------------
def test_cli_runs_a_study_and_reports_bad_input(tiny_processed, study_out, tmp_path, capsys):
    rc = cli_main(["table2", "--processed", tiny_processed, "--output", study_out, "--tiny", "--models", "mlp",
                   "cdanet", "--targets", "movie", "--no-progress"])
    assert rc == 0
    assert len(pd.read_csv(os.path.join(study_out, "table2.csv"))) == 2
    assert f"table2: {study_out}/table2.md" in capsys.readouterr().out

    assert cli_main(["table2", "--processed", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "cannot tell the dataset" in capsys.readouterr().err
    assert cli_main(["fig5", "--processed", tiny_processed, "--output", str(tmp_path / "o"), "--dataset", "taobao"]) == 2
    assert "schema.json" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"seeds": []}')
    assert cli_main(["table5", "--processed", tiny_processed, "--output", str(tmp_path / "o"), "--spec", str(bad)]) == 2
    assert "seeds must be a non-empty list" in capsys.readouterr().err
