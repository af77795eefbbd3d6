"""The blessing rule: floor for the first model, non-regression against the champion afterwards."""

from __future__ import annotations

import json
import math

import pytest

from cdanet.gate import GateConfig, GateDecision, decide

CFG = GateConfig(min_auc=0.6, tolerance=0.01, domain="movie")


class TestFirstModel:
    def test_floor_met_is_blessed(self) -> None:
        d = decide(0.65, None, CFG)
        assert d.blessed and d.floor_passed and d.non_regression_passed is None
        assert any("no champion" in r and "floor only" in r for r in d.reasons)
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
    assert json.loads(d.to_json())["format_version"] == 1


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
