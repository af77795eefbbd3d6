"""The blessing rule: floor, non-regression against the champion, the in-run baseline, logloss vs the base rate."""

from __future__ import annotations

import json
import math

import pytest

from cdanet.gate import GateConfig, GateDecision, decide, decide_again, superseded

CFG = GateConfig(min_auc=0.6, tolerance=0.01, domain="movie")


class TestFirstModel:
    def test_floor_met_is_blessed(self) -> None:
        d = decide(0.65, None, CFG)
        assert d.blessed and d.floor_passed and d.non_regression_passed is None
        assert any("no champion" in r and "skips the non-regression check" in r for r in d.reasons)
        assert any("0.6500" in r and "meets the floor" in r for r in d.reasons)

    def test_below_floor_is_rejected(self) -> None:
        d = decide(0.55, None, CFG)
        assert not d.blessed and not d.floor_passed
        assert any("0.5500" in r and "below the floor" in r and "0.6000" in r for r in d.reasons)

    def test_floor_is_inclusive(self) -> None:
        assert decide(0.6, None, CFG).blessed


class TestAgainstChampion:
    def test_improvement_is_blessed(self) -> None:
        d = decide(0.72, 0.70, CFG, champion_version="3")
        assert d.blessed and d.non_regression_passed
        assert any("does not regress" in r and "version 3" in r and "+0.0200" in r for r in d.reasons)

    def test_drop_within_tolerance_is_blessed(self) -> None:
        assert decide(0.695, 0.70, CFG).blessed

    def test_regression_beyond_tolerance_is_rejected(self) -> None:
        d = decide(0.685, 0.70, CFG)
        assert not d.blessed and d.floor_passed and d.non_regression_passed is False
        assert any("regresses" in r and "-0.0150" in r and "0.6900" in r for r in d.reasons)

    def test_zero_tolerance_rejects_any_drop_but_not_a_tie(self) -> None:
        strict = GateConfig(min_auc=0.5, tolerance=0.0, domain="movie")
        assert decide(0.7, 0.7, strict).blessed
        assert not decide(0.6999, 0.7, strict).blessed

    def test_floor_still_applies_when_champion_is_worse(self) -> None:
        d = decide(0.58, 0.55, CFG)
        assert not d.blessed and not d.floor_passed and d.non_regression_passed

    @pytest.mark.parametrize("bad", [math.nan, math.inf, -0.1, 1.5, "0.7", True])
    def test_invalid_auc_raises(self, bad: object) -> None:
        with pytest.raises(ValueError, match="candidate_auc"):
            decide(bad, 0.7, CFG)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="champion_auc"):
            decide(0.7, bad, CFG)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_auc": 1.2}, "min_auc"),
        ({"min_auc": -0.1}, "min_auc"),
        ({"min_auc": math.nan}, "min_auc"),
        ({"tolerance": -0.01}, "tolerance"),
        ({"tolerance": math.inf}, "tolerance"),
        ({"baseline_margin": 1.5}, "baseline_margin"),
        ({"baseline_margin": math.nan}, "baseline_margin"),
        ({"baseline_margin": True}, "baseline_margin"),
        ({"domain": ""}, "domain"),
    ],
)
def test_invalid_config_is_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GateConfig(**{"domain": "movie", **kwargs})


def test_config_needs_a_domain() -> None:
    with pytest.raises(TypeError):
        GateConfig(0.5, 0.0)  # type: ignore[call-arg]


@pytest.mark.parametrize("champion", [None, 0.7])
def test_json_round_trip(champion: float | None) -> None:
    d = decide(0.71, champion, CFG, champion_version=None if champion is None else "2")
    back = GateDecision.from_json(d.to_json())
    assert back == d
    assert json.loads(d.to_json())["format_version"] == 3


@pytest.mark.parametrize(
    "text, match",
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"format_version": 99}', "format_version"),
        ('{"format_version": 1, "blessed": true}', "expected keys"),
    ],
)
def test_from_json_rejects_malformed_input(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GateDecision.from_json(text, source="gate.json")


def test_markdown_shows_verdict_checks_and_reasons() -> None:
    rejected = decide(0.685, 0.70, CFG, champion_version="4").to_markdown()
    assert rejected.startswith("## Model gate: REJECTED")
    assert "| non-regression vs champion (version 4) | 0.6850 | >= 0.6900" in rejected
    assert "**FAIL**" in rejected and "- candidate AUC 0.6850" in rejected

    first = decide(0.65, None, CFG).to_markdown()
    assert "BLESSED" in first and "skipped (no champion)" in first


def test_summary_line() -> None:
    assert decide(0.65, None, CFG).summary == "BLESSED: candidate AUC 0.6500 on movie/test (no champion)"
    assert decide(0.6, 0.7, CFG).summary.startswith("REJECTED: candidate AUC 0.6000")


BASE_CFG = GateConfig(min_auc=0.5, tolerance=0.0, baseline_margin=0.005, domain="movie")
#: A candidate that passes every check against a baseline at 0.64 and a base-rate logloss of 0.50.
GOOD = dict(baseline_auc=0.64, baseline_model="id-only logistic regression", baseline_logloss=0.48,
            candidate_logloss=0.45, base_rate_logloss=0.50)


class TestBaseline:
    def test_beating_the_baseline_by_the_margin_is_blessed(self) -> None:
        d = decide(0.66, None, BASE_CFG, **GOOD)
        assert d.blessed and d.baseline_passed
        assert (d.baseline_auc, d.baseline_margin, d.baseline_logloss) == (0.64, 0.005, 0.48)
        assert d.baseline_model == "id-only logistic regression"
        assert any("beats the in-run baseline (id-only logistic regression)" in r and "+0.0200" in r
                   and "baseline_margin=+0.0050" in r and "threshold 0.6450" in r for r in d.reasons)

    def test_within_the_margin_is_rejected_with_the_reason(self) -> None:
        d = decide(0.643, None, BASE_CFG, **GOOD)
        assert not d.blessed and d.floor_passed and d.calibration_passed and d.baseline_passed is False
        assert any("does not beat the in-run baseline" in r and "+0.0030" in r and "0.6450" in r for r in d.reasons)

    def test_margin_is_inclusive_and_zero_margin_accepts_a_tie(self) -> None:
        assert decide(0.645, None, BASE_CFG, **GOOD).blessed
        tie = GateConfig(min_auc=0.5, baseline_margin=0.0, domain="movie")
        assert decide(0.64, None, tie, **GOOD).blessed
        assert not decide(0.6399, None, tie, **GOOD).blessed

    def test_negative_margin_lets_the_candidate_trail_the_baseline(self) -> None:
        lenient = GateConfig(min_auc=0.5, baseline_margin=-0.02, domain="movie")
        trailing = decide(0.63, None, lenient, **GOOD)
        assert trailing.blessed and trailing.baseline_passed
        assert any("trails the in-run baseline (id-only logistic regression) within the allowed margin: -0.0100" in r
                   and "baseline_margin=-0.0200, threshold 0.6200" in r for r in trailing.reasons)
        assert not decide(0.61, None, lenient, **GOOD).blessed

    def test_baseline_rejects_even_a_candidate_that_beats_the_champion(self) -> None:
        d = decide(0.64, 0.60, BASE_CFG, champion_version="2", **GOOD)
        assert not d.blessed and d.non_regression_passed and d.baseline_passed is False
        assert d.summary == "REJECTED: candidate AUC 0.6400 on movie/test (champion AUC 0.6000, baseline AUC 0.6400)"

    def test_no_baseline_skips_the_check_and_says_so(self) -> None:
        d = decide(0.66, None, BASE_CFG, candidate_logloss=0.45, base_rate_logloss=0.5)
        assert d.blessed and d.baseline_passed is None and d.baseline_auc is None and d.baseline_model is None
        assert any("no in-run baseline" in r and "skipped" in r for r in d.reasons)

    @pytest.mark.parametrize("bad", [math.nan, -0.1, 1.5, "0.6"])
    def test_invalid_baseline_auc_raises(self, bad: object) -> None:
        with pytest.raises(ValueError, match="baseline_auc"):
            decide(0.7, None, BASE_CFG, baseline_auc=bad)  # type: ignore[arg-type]


class TestCalibration:
    def test_logloss_below_the_base_rate_is_blessed(self) -> None:
        d = decide(0.66, None, BASE_CFG, **GOOD)
        assert d.calibration_passed and (d.candidate_logloss, d.base_rate_logloss) == (0.45, 0.50)
        assert any("logloss 0.4500" in r and "is below the base-rate logloss 0.5000" in r and "-0.0500" in r
                   for r in d.reasons)

    def test_logloss_not_below_the_base_rate_is_rejected_despite_a_good_auc(self) -> None:
        d = decide(0.80, 0.70, BASE_CFG, **{**GOOD, "candidate_logloss": 0.50})  # a tie is not below
        assert not d.blessed and d.floor_passed and d.non_regression_passed and d.baseline_passed
        assert d.calibration_passed is False
        assert any("is not below the base-rate logloss 0.5000" in r for r in d.reasons)

    def test_no_logloss_skips_the_check_and_says_so(self) -> None:
        d = decide(0.66, None, BASE_CFG, baseline_auc=0.6)
        assert d.blessed and d.calibration_passed is None
        assert any("no logloss" in r and "skipped" in r for r in d.reasons)

    def test_one_logloss_without_the_other_raises(self) -> None:
        with pytest.raises(ValueError, match="both candidate_logloss and base_rate_logloss"):
            decide(0.66, None, BASE_CFG, candidate_logloss=0.4)

    @pytest.mark.parametrize("bad", [math.nan, math.inf, -0.1, "0.4", True])
    def test_invalid_logloss_raises(self, bad: object) -> None:
        with pytest.raises(ValueError, match="candidate_logloss"):
            decide(0.66, None, BASE_CFG, candidate_logloss=bad, base_rate_logloss=0.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="base_rate_logloss"):
            decide(0.66, None, BASE_CFG, candidate_logloss=0.4, base_rate_logloss=bad)  # type: ignore[arg-type]


def test_every_check_gives_a_reason_in_both_outcomes() -> None:
    passed = decide(0.70, 0.65, BASE_CFG, **GOOD).reasons
    failed = decide(0.55, 0.65, GateConfig(min_auc=0.6, baseline_margin=0.005, domain="movie"),
                    **{**GOOD, "candidate_logloss": 0.6}).reasons
    assert len(passed) == len(failed) == 4
    for words in (("meets the floor", "is below the floor"), ("does not regress", "regresses"),
                  ("beats the in-run baseline", "does not beat the in-run baseline"),
                  ("is below the base-rate logloss", "is not below the base-rate logloss")):
        assert any(words[0] in r for r in passed) and any(words[1] in r for r in failed), words


def test_full_decision_round_trips_and_renders_every_check() -> None:
    d = decide(0.643, 0.63, BASE_CFG, champion_version="1", **{**GOOD, "candidate_logloss": 0.52})
    assert GateDecision.from_json(d.to_json()) == d
    md = d.to_markdown()
    assert "| beats the in-run baseline (id-only logistic regression) | 0.6430 | >= 0.6450" in md
    assert "(baseline 0.6400 + margin 0.0050) | **FAIL** |" in md
    assert "| logloss below the base rate | 0.5200 | < 0.5000" in md and md.count("**FAIL**") == 2
    skipped = decide(0.66, None, BASE_CFG).to_markdown()
    assert "skipped (no baseline)" in skipped and "skipped (no logloss)" in skipped


def test_format_1_decisions_still_load() -> None:
    """A decision written before the baseline and calibration checks (e.g. by a running older pipeline)."""
    v1 = {"format_version": 1, "blessed": True, "reasons": ["candidate AUC 0.7000 on movie/test meets the floor"],
          "candidate_auc": 0.7, "champion_auc": None, "domain": "movie", "split": "test", "min_auc": 0.6,
          "tolerance": 0.005, "floor_passed": True, "non_regression_passed": None, "champion_version": None}
    d = GateDecision.from_json(json.dumps(v1), source="old.json")
    assert d.blessed and d.baseline_auc is None and d.baseline_passed is None and d.calibration_passed is None
    assert d.summary == "BLESSED: candidate AUC 0.7000 on movie/test (no champion)"
    assert "skipped (no baseline)" in d.to_markdown()
    assert json.loads(d.to_json())["format_version"] == 3  # re-written in the current format


# ---- parameters: declared floats ----------------------------------------------------------------
def test_integer_thresholds_are_taken_as_floats() -> None:
    """``tolerance=0`` / ``min_auc=1`` from a command line or a KFP integer are valid floats."""
    cfg = GateConfig(min_auc=1, tolerance=0, baseline_margin=0, domain="movie")
    assert (cfg.min_auc, cfg.tolerance, cfg.baseline_margin) == (1.0, 0.0, 0.0)
    assert all(type(v) is float for v in (cfg.min_auc, cfg.tolerance, cfg.baseline_margin))
    d = decide(1, 1, cfg, champion_version="1")
    assert d.blessed and type(d.tolerance) is float and type(d.min_auc) is float
    assert GateDecision.from_json(d.to_json()) == d


@pytest.mark.parametrize(
    "kwargs, match",
    [({"min_auc": 2}, r"min_auc must be in \[0, 1\], got 2"), ({"tolerance": -1}, "tolerance must be"),
     ({"baseline_margin": -2}, "baseline_margin must be"), ({"tolerance": "0"}, "tolerance must be")],
)
def test_out_of_range_or_mistyped_thresholds_fail_in_one_line(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as e:
        GateConfig(**{"domain": "movie", **kwargs})
    assert "\n" not in str(e.value) and "GateConfig" in str(e.value)


# ---- compare-and-set: which champion a decision holds against -----------------------------------
def test_a_blessing_holds_only_against_the_champion_it_was_compared_with() -> None:
    first = decide(0.65, None, CFG)
    assert first.compared_with(None) and not first.compared_with("1")
    against_2 = decide(0.72, 0.70, CFG, champion_version="2")
    assert against_2.compared_with("2") and not against_2.compared_with("3") and not against_2.compared_with(None)
    # A decision that recorded the champion's AUC but not its version (the gate before this fix) holds nowhere.
    unknown = decide(0.72, 0.70, CFG)
    assert not unknown.compared_with("2") and not unknown.compared_with(None)
    # A rejection moves no alias: it always holds.
    assert decide(0.5, 0.70, CFG, champion_version="2").compared_with("7")


def test_superseded_decision_is_a_rejection_that_says_why() -> None:
    d = superseded(decide(0.65, None, CFG), "4")
    assert not d.blessed and "champion is now 4" in d.reasons[-1] and "not re-gated" in d.reasons[-1]


def test_decide_again_keeps_the_figures_and_thresholds_and_judges_the_new_champion() -> None:
    cfg = GateConfig(min_auc=0.6, tolerance=0.005, baseline_margin=0.01, domain="movie")
    first = decide(0.70, None, cfg, baseline_auc=0.66, baseline_model="lr", baseline_logloss=0.6,
                   candidate_logloss=0.5, base_rate_logloss=0.55)
    assert first.blessed
    again = decide_again(first, 0.72, champion_version="5")
    assert not again.blessed and again.non_regression_passed is False and again.champion_version == "5"
    assert (again.baseline_auc, again.baseline_margin, again.candidate_logloss, again.tolerance) == (0.66, 0.01, 0.5, 0.005)
    assert "re-gated at promotion" in again.reasons[-1] and "version 5" in again.reasons[-1]
    assert decide_again(first, 0.703, champion_version="5").blessed  # within tolerance


# ---- drift anchor ---------------------------------------------------------------------------------
class TestDriftAnchor:
    def test_candidate_within_tolerance_of_the_champion_but_not_of_the_anchor_is_rejected(self) -> None:
        d = decide(0.692, 0.696, CFG, champion_version="3", anchor_version="1", anchor_auc=0.705)
        assert d.non_regression_passed and d.anchor_passed is False and not d.blessed
        assert any("drift anchor" in r and "version 1" in r and "is not within" in r for r in d.reasons)
        assert "| within tolerance of the drift anchor (version 1) | 0.6920 | >= 0.6950 | **FAIL** |" in d.to_markdown()

    def test_who_anchors_whom(self) -> None:
        tol = decide(0.695, 0.70, CFG, champion_version="3")  # used the tolerance: inherits the champion as anchor
        assert tol.blessed and not tol.sets_anchor and tol.anchor_for_successor == "3"
        inherit = decide(0.699, 0.695, CFG, champion_version="4", anchor_version="3", anchor_auc=0.70)
        assert inherit.blessed and not inherit.sets_anchor and inherit.anchor_for_successor == "3"
        better = decide(0.71, 0.695, CFG, champion_version="4", anchor_version="3", anchor_auc=0.70)
        assert better.blessed and better.sets_anchor
        assert decide(0.65, None, CFG).sets_anchor  # the first model anchors itself
        assert not decide(0.5, None, CFG).sets_anchor  # a rejection anchors nothing

    def test_an_anchor_that_cannot_score_grants_no_tolerance(self) -> None:
        d = decide(0.699, 0.70, CFG, champion_version="4", anchor_unavailable="version 1 was deleted")
        assert not d.blessed and any("no tolerance is granted" in r and "deleted" in r for r in d.reasons)
        ok = decide(0.70, 0.70, CFG, champion_version="4", anchor_unavailable="version 1 was deleted")
        assert ok.blessed and ok.sets_anchor

    def test_a_chain_of_daily_runs_cannot_drift_down_without_bound(self) -> None:
        """Thirty days, each candidate just inside the tolerance of the day's champion.

        The models' AUCs are fixed numbers (the same rows every day, so each re-scores to its own
        AUC): without the anchor each promotion would drop 0.009, 0.27 over the month.
        """
        tol = CFG.tolerance
        aucs = {"1": 0.75}
        champion, anchor = "1", "1"
        history = [0.75]
        for day in range(2, 32):
            version = str(day)
            aucs[version] = aucs[champion] - 0.9 * tol  # the worst candidate the champion alone would bless
            cmp = {} if anchor == champion else {"anchor_version": anchor, "anchor_auc": aucs[anchor]}
            d = decide(aucs[version], aucs[champion], CFG, champion_version=champion, **cmp)
            if d.blessed:
                anchor = version if d.sets_anchor else d.anchor_for_successor
                champion = version
            history.append(aucs[champion])
        assert min(history) >= 0.75 - tol, history
        unbounded = 0.75 - 30 * 0.9 * tol
        assert min(history) > unbounded + 0.2
        # A strictly better model moves the anchor up, and the bound with it.
        d = decide(0.80, aucs[champion], CFG, champion_version=champion, anchor_version=anchor, anchor_auc=aucs[anchor])
        assert d.blessed and d.sets_anchor
