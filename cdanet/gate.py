"""The blessing rule: decides whether a candidate model may replace the registry's champion.

It mirrors TFX's Evaluator blessing, extended so that a model that has not learnt the users' taste
cannot pass. All checks are on the target domain's test split:

1. an absolute floor: ``candidate_auc >= min_auc`` (AUC is the paper's metric, Sec. 5.2.1);
2. non-regression against the current champion, scored on the SAME test split:
   ``candidate_auc >= champion_auc - tolerance``;
3. a cheap model trained in the same run on the same split (the id-only logistic regression: a
   user bias plus an item bias) must be beaten: ``candidate_auc >= baseline_auc + baseline_margin``.
   A deep model that ranks no better than "popular items for active users" is not worth serving;
4. calibration: ``candidate_logloss < base_rate_logloss``, the logloss of predicting the training
   click rate for every row. Scores that lose to a constant are no usable click probabilities,
   whatever their AUC.

Check 2 is bounded over a chain of promotions by a drift anchor. ``tolerance`` lets each promotion
land a little below its champion, so n promotions could otherwise drift n x tolerance down. The
anchor is the last champion that was no worse than every model it was compared with (the first
model is its own anchor); each blessed version records its anchor in the registry. When the
champion is not its own anchor, the anchor is re-scored on the same split as well and the candidate
must also satisfy ``candidate_auc >= anchor_auc - tolerance``; a candidate that is no worse than the
champion and the anchor becomes the next anchor. So every champion lies within ``tolerance`` of the
best model of its chain *on the same rows*, however many promotions used the tolerance. If the
anchor can no longer score the split (deleted, or trained on other features), no tolerance is
granted: the candidate must not regress against the champion at all, and then anchors itself.

The first model (no champion yet) skips check 2 only. Checks 3 and 4 are skipped (and say so) when
their inputs are not given, for callers outside the pipeline; the pipeline always gives them. The
decision travels between pipeline steps as a JSON artifact (:meth:`GateDecision.to_json` /
:meth:`GateDecision.from_json`, which still reads format-1 decisions written before checks 3 and 4)
and is shown to people as Markdown (:meth:`GateDecision.to_markdown`); its ``reasons`` explain
every check in both outcomes, so a rejected model's registry tag says why.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

__all__ = ["GateConfig", "GateDecision", "decide", "decide_again", "superseded"]

DECISION_FORMAT_VERSION = 3
#: Versions :meth:`GateDecision.from_json` reads: 1 predates the baseline and calibration checks,
#: 2 the drift anchor.
READABLE_FORMAT_VERSIONS = (1, 2, 3)


def _check_auc(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        # A NaN AUC (e.g. a single-class split) must never bless a model by comparing False quietly.
        raise ValueError(f"{what} must be a finite AUC in [0, 1], got {value}")
    return value


def _check_logloss(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number >= 0, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{what} must be a finite logloss >= 0, got {value}")
    return value


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the gate.

    ``min_auc`` is the absolute floor (0.5 is a random ranker); ``tolerance`` is how far below the
    champion's AUC a candidate may land and still be blessed (0 means "no worse");
    ``baseline_margin`` is how far above the in-run baseline's AUC the candidate must land (0 means
    "at least as good"; a negative margin, down to -1, lets it trail the baseline by that much, and
    -1 turns the check off in effect); ``domain`` is the target domain whose test AUC is compared.
    """

    min_auc: float = 0.5
    tolerance: float = 0.0
    baseline_margin: float = 0.0
    domain: str = field(kw_only=True)

    def __post_init__(self) -> None:
        # Declared floats: an int (``tolerance=0`` from a command line or a KFP integer) is the same
        # number, so it is stored as a float; every other type is rejected below, in one line.
        for name in ("min_auc", "tolerance", "baseline_margin"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        problems = []
        if isinstance(self.min_auc, bool) or not isinstance(self.min_auc, (int, float)) or not (
            math.isfinite(self.min_auc) and 0.0 <= self.min_auc <= 1.0
        ):
            problems.append(f"min_auc must be in [0, 1], got {self.min_auc!r}")
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float)) or not (
            math.isfinite(self.tolerance) and self.tolerance >= 0.0
        ):
            problems.append(f"tolerance must be a finite number >= 0, got {self.tolerance!r}")
        if isinstance(self.baseline_margin, bool) or not isinstance(self.baseline_margin, (int, float)) or not (
            math.isfinite(self.baseline_margin) and -1.0 <= self.baseline_margin <= 1.0
        ):
            problems.append(f"baseline_margin must be a number in [-1, 1], got {self.baseline_margin!r}")
        if not isinstance(self.domain, str) or not self.domain:
            problems.append(f"domain must name the target domain, got {self.domain!r}")
        if problems:
            raise ValueError("invalid GateConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict with everything needed to audit it later.

    ``non_regression_passed`` is ``None`` when there was no champion to compare with;
    ``baseline_passed`` / ``calibration_passed`` are ``None`` when that check had no input (and in
    format-1 decisions, which predate them). ``baseline_logloss`` is recorded, not checked.
    """

    blessed: bool
    reasons: list[str]
    candidate_auc: float
    champion_auc: float | None
    domain: str
    split: str
    min_auc: float
    tolerance: float
    floor_passed: bool
    non_regression_passed: bool | None
    champion_version: str | None = None
    baseline_model: str | None = None
    baseline_auc: float | None = None
    baseline_logloss: float | None = None
    baseline_margin: float | None = None
    baseline_passed: bool | None = None
    candidate_logloss: float | None = None
    base_rate_logloss: float | None = None
    calibration_passed: bool | None = None
    anchor_version: str | None = None
    anchor_auc: float | None = None
    anchor_passed: bool | None = None
    anchor_note: str | None = None

    # ---- compare-and-set ----------------------------------------------------------------------
    def compared_with(self, champion_version: str | None) -> bool:
        """Whether this decision still holds when ``champion_version`` is the champion (None: none).

        A rejection moves no alias, so it always holds. A blessing holds only against the champion
        the gate compared with; a decision that recorded a champion AUC but not its version (written
        before the gate recorded it) holds against nothing.
        """
        if not self.blessed:
            return True
        if self.champion_auc is None:
            return champion_version is None
        return self.champion_version is not None and self.champion_version == champion_version

    @property
    def sets_anchor(self) -> bool:
        """A blessed candidate no worse than the champion and the anchor it was compared with."""
        return self.blessed and all(ref is None or self.candidate_auc >= ref
                                    for ref in (self.champion_auc, self.anchor_auc))

    @property
    def anchor_for_successor(self) -> str | None:
        """The anchor a promoted candidate inherits when it does not anchor itself."""
        return self.anchor_version if self.anchor_version is not None else self.champion_version

    # ---- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format_version": DECISION_FORMAT_VERSION, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "<gate decision>") -> GateDecision:
        """Parse :meth:`to_json` output; a clear error names ``source`` and the expected keys."""
        expected = sorted(f.name for f in fields(cls))
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source} is not valid JSON ({e}); expected a gate decision object") from e
        if not isinstance(d, dict):
            raise ValueError(f"{source} must hold a JSON object with keys {expected}, got {type(d).__name__}")
        version = d.pop("format_version", None)
        if version not in READABLE_FORMAT_VERSIONS:
            raise ValueError(
                f"{source} has format_version {version!r}; this library reads versions {list(READABLE_FORMAT_VERSIONS)}"
            )
        try:
            decision = cls(**d)
        except TypeError as e:
            raise ValueError(f"{source} is not a gate decision ({e}); expected keys {expected}") from e
        if not isinstance(decision.reasons, list) or not all(isinstance(r, str) for r in decision.reasons):
            raise ValueError(f"{source}: 'reasons' must be a list of strings")
        return decision

    # ---- rendering ----------------------------------------------------------------------------
    @property
    def summary(self) -> str:
        """One line, e.g. for a registry tag or a log: ``BLESSED: candidate AUC 0.7312 ...``."""
        verdict = "BLESSED" if self.blessed else "REJECTED"
        champion = "no champion" if self.champion_auc is None else f"champion AUC {self.champion_auc:.4f}"
        baseline = "" if self.baseline_auc is None else f", baseline AUC {self.baseline_auc:.4f}"
        return f"{verdict}: candidate AUC {self.candidate_auc:.4f} on {self.domain}/{self.split} ({champion}{baseline})"

    def to_markdown(self) -> str:
        """A Markdown report (KFP renders Markdown artifacts): verdict, checks table, reasons."""
        def fmt(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.4f}"

        def mark(ok: bool | None, skipped: str) -> str:
            return f"skipped ({skipped})" if ok is None else ("pass" if ok else "**FAIL**")

        threshold = None if self.champion_auc is None else self.champion_auc - self.tolerance
        beat = None if self.baseline_auc is None or self.baseline_margin is None else (
            self.baseline_auc + self.baseline_margin)
        lines = [
            f"## Model gate: {'BLESSED' if self.blessed else 'REJECTED'}",
            "",
            f"Target domain `{self.domain}`, split `{self.split}`, metric AUC (and logloss for calibration).",
            "",
            "| check | candidate | threshold | result |",
            "|---|---|---|---|",
            f"| absolute floor | {fmt(self.candidate_auc)} | >= {fmt(self.min_auc)} | {mark(self.floor_passed, '')} |",
            f"| non-regression vs champion"
            f"{'' if self.champion_version is None else f' (version {self.champion_version})'} "
            f"| {fmt(self.candidate_auc)} | >= {fmt(threshold)} "
            f"(champion {fmt(self.champion_auc)} - tolerance {fmt(self.tolerance)}) "
            f"| {mark(self.non_regression_passed, 'no champion')} |",
            f"| beats the in-run baseline ({self.baseline_model or 'n/a'}) | {fmt(self.candidate_auc)} | >= {fmt(beat)} "
            f"(baseline {fmt(self.baseline_auc)} + margin {fmt(self.baseline_margin)}) "
            f"| {mark(self.baseline_passed, 'no baseline')} |",
            f"| logloss below the base rate | {fmt(self.candidate_logloss)} | < {fmt(self.base_rate_logloss)} "
            f"(training click rate for every row) | {mark(self.calibration_passed, 'no logloss')} |",
            f"| within tolerance of the drift anchor"
            f"{'' if self.anchor_version is None else f' (version {self.anchor_version})'} | {fmt(self.candidate_auc)} "
            f"| >= {fmt(None if self.anchor_auc is None else self.anchor_auc - self.tolerance)} "
            f"| {mark(self.anchor_passed, self.anchor_note or 'the champion is its own anchor')} |",
            "",
            "Reasons:",
            "",
            *[f"- {r}" for r in self.reasons],
            "",
        ]
        return "\n".join(lines)


def decide(
    candidate_auc: float,
    champion_auc: float | None,
    cfg: GateConfig,
    *,
    split: str = "test",
    champion_version: str | None = None,
    baseline_auc: float | None = None,
    baseline_model: str = "baseline",
    baseline_logloss: float | None = None,
    candidate_logloss: float | None = None,
    base_rate_logloss: float | None = None,
    anchor_version: str | None = None,
    anchor_auc: float | None = None,
    anchor_unavailable: str | None = None,
) -> GateDecision:
    """Bless or reject a candidate by its test AUC (and logloss) on ``cfg.domain``.

    Args:
        candidate_auc: the candidate's AUC on ``cfg.domain``'s ``split``.
        champion_auc: the current champion's AUC on the same rows, or ``None`` if the registry has
            no champion yet (then the non-regression check is skipped).
        cfg: thresholds.
        split: recorded in the decision; every figure must come from this split.
        champion_version: recorded in the decision (the registry version that was compared).
        baseline_auc: the AUC of a simple model trained in the same run on the same split
            (``baseline_model`` names it); ``None`` skips the baseline check.
        baseline_logloss: the baseline's logloss, recorded for comparison, not checked.
        candidate_logloss, base_rate_logloss: the candidate's logloss and that of predicting the
            training click rate for every row; both or neither (``None`` skips the calibration check).
        anchor_version, anchor_auc: the champion's drift anchor and its AUC on the same rows, when
            the champion is not its own anchor (see the module docstring).
        anchor_unavailable: why the champion's anchor could not be scored; then no tolerance is
            granted against the champion.

    Raises:
        ValueError: an AUC is not a finite number in [0, 1], or a logloss not a finite number >= 0,
            or only one of the two loglosses is given (an evaluation bug must stop the run, not be
            read as a regression or an improvement).
    """
    cand = _check_auc(candidate_auc, "candidate_auc")
    champ = None if champion_auc is None else _check_auc(champion_auc, "champion_auc")
    base = None if baseline_auc is None else _check_auc(baseline_auc, "baseline_auc")
    base_ll = None if baseline_logloss is None else _check_logloss(baseline_logloss, "baseline_logloss")
    if (candidate_logloss is None) != (base_rate_logloss is None):
        raise ValueError("give both candidate_logloss and base_rate_logloss, or neither: the calibration check "
                         f"needs both (got {candidate_logloss!r} and {base_rate_logloss!r})")
    anchor = None if anchor_auc is None else _check_auc(anchor_auc, "anchor_auc")
    if anchor is not None and (champ is None or anchor_version is None or anchor_unavailable):
        raise ValueError("anchor_auc needs a champion, an anchor_version and no anchor_unavailable")
    cand_ll = None if candidate_logloss is None else _check_logloss(candidate_logloss, "candidate_logloss")
    rate_ll = None if base_rate_logloss is None else _check_logloss(base_rate_logloss, "base_rate_logloss")
    where = f"{cfg.domain}/{split}"
    reasons: list[str] = []

    floor_ok = cand >= cfg.min_auc
    reasons.append(
        f"candidate AUC {cand:.4f} on {where} {'meets' if floor_ok else 'is below'} the floor min_auc={cfg.min_auc:.4f}"
    )
    if champ is None:
        regression_ok: bool | None = None
        reasons.append("no champion in the registry: the first model skips the non-regression check")
    else:
        allowed = 0.0 if anchor_unavailable else cfg.tolerance
        threshold = champ - allowed
        regression_ok = cand >= threshold
        version = "" if champion_version is None else f" (version {champion_version})"
        reasons.append(
            f"candidate AUC {cand:.4f} {'does not regress' if regression_ok else 'regresses'} against the "
            f"champion{version}: {cand - champ:+.4f} vs its AUC {champ:.4f} on the same split "
            f"(allowed drop: tolerance={allowed:.4f}, threshold {threshold:.4f})"
        )
        if anchor_unavailable:
            reasons.append(f"the champion's drift anchor could not score this split ({anchor_unavailable}): "
                           "no tolerance is granted against the champion")
    anchor_ok: bool | None = None
    if anchor is not None:
        anchor_ok = cand >= anchor - cfg.tolerance
        reasons.append(
            f"candidate AUC {cand:.4f} {'is' if anchor_ok else 'is not'} within tolerance of the drift anchor "
            f"(version {anchor_version}, the best model of the champion's chain): {cand - anchor:+.4f} vs its AUC "
            f"{anchor:.4f} on the same split (allowed drop: tolerance={cfg.tolerance:.4f}, "
            f"threshold {anchor - cfg.tolerance:.4f})"
        )
    if base is None:
        baseline_ok: bool | None = None
        reasons.append("no in-run baseline was given: the baseline check is skipped")
    else:
        needed = base + cfg.baseline_margin
        baseline_ok = cand >= needed
        if not baseline_ok:
            verdict = f"does not beat the in-run baseline ({baseline_model}) by the margin"
        elif cand >= base:
            verdict = f"beats the in-run baseline ({baseline_model}) by the margin"
        else:  # a negative margin lets it trail
            verdict = f"trails the in-run baseline ({baseline_model}) within the allowed margin"
        reasons.append(
            f"candidate AUC {cand:.4f} {verdict}: {cand - base:+.4f} vs its AUC {base:.4f} on the same split "
            f"(required: baseline_margin={cfg.baseline_margin:+.4f}, threshold {needed:.4f})"
        )
    if cand_ll is None or rate_ll is None:
        calibration_ok: bool | None = None
        reasons.append("no logloss was given: the calibration check is skipped")
    else:
        calibration_ok = cand_ll < rate_ll
        reasons.append(
            f"candidate logloss {cand_ll:.4f} on {where} {'is below' if calibration_ok else 'is not below'} the "
            f"base-rate logloss {rate_ll:.4f} (predicting the training click rate for every row): "
            f"{cand_ll - rate_ll:+.4f}"
        )
    blessed = (floor_ok and regression_ok is not False and anchor_ok is not False and baseline_ok is not False
               and calibration_ok is not False)
    return GateDecision(
        blessed=blessed,
        reasons=reasons,
        candidate_auc=cand,
        champion_auc=champ,
        domain=cfg.domain,
        split=split,
        min_auc=float(cfg.min_auc),
        tolerance=float(cfg.tolerance),
        floor_passed=floor_ok,
        non_regression_passed=regression_ok,
        champion_version=champion_version,
        baseline_model=None if base is None else baseline_model,
        baseline_auc=base,
        baseline_logloss=base_ll,
        baseline_margin=None if base is None else float(cfg.baseline_margin),
        baseline_passed=baseline_ok,
        candidate_logloss=cand_ll,
        base_rate_logloss=rate_ll,
        calibration_passed=calibration_ok,
        anchor_version=None if anchor is None else anchor_version,
        anchor_auc=anchor,
        anchor_passed=anchor_ok,
        anchor_note=anchor_unavailable,
    )


def decide_again(
    previous: GateDecision,
    champion_auc: float | None,
    *,
    champion_version: str | None,
    anchor_version: str | None = None,
    anchor_auc: float | None = None,
    anchor_unavailable: str | None = None,
) -> GateDecision:
    """``previous``'s candidate judged again, with the same thresholds and figures, against another champion.

    Used when the champion changed between the gate and the promotion (another run promoted first).
    """
    cfg = GateConfig(min_auc=previous.min_auc, tolerance=previous.tolerance,
                     baseline_margin=previous.baseline_margin or 0.0, domain=previous.domain)
    again = decide(
        previous.candidate_auc, champion_auc, cfg, split=previous.split, champion_version=champion_version,
        baseline_auc=previous.baseline_auc, baseline_model=previous.baseline_model or "baseline",
        baseline_logloss=previous.baseline_logloss, candidate_logloss=previous.candidate_logloss,
        base_rate_logloss=previous.base_rate_logloss, anchor_version=anchor_version, anchor_auc=anchor_auc,
        anchor_unavailable=anchor_unavailable,
    )
    note = (f"re-gated at promotion: the gate had compared with champion {previous.champion_version or 'none'}, "
            f"but another run made version {champion_version or 'none'} the champion meanwhile")
    return replace(again, reasons=[*again.reasons, note])


def superseded(decision: GateDecision, champion_version: str | None) -> GateDecision:
    """``decision`` turned into a rejection: the champion it was blessed against is no longer the champion."""
    note = (f"not promoted: the gate compared with champion {decision.champion_version or 'none'}, but the champion "
            f"is now {champion_version or 'none'} and the candidate was not re-gated against it")
    return replace(decision, blessed=False, reasons=[*decision.reasons, note])
