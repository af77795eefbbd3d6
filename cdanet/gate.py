"""The blessing rule: may a candidate model replace the registry's champion?

It mirrors TFX's Evaluator blessing with two checks on the target domain's test AUC (the paper's
metric, Sec. 5.2.1):

1. an absolute floor: ``candidate_auc >= min_auc``;
2. non-regression against the current champion, scored on the SAME test split:
   ``candidate_auc >= champion_auc - tolerance``.

The first model (no champion yet) is judged by the floor alone. The decision travels between
pipeline steps as a JSON artifact (:meth:`GateDecision.to_json` / :meth:`GateDecision.from_json`)
and is shown to people as Markdown (:meth:`GateDecision.to_markdown`); its ``reasons`` explain
both outcomes, so a rejected model's registry tag says why.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["GateConfig", "GateDecision", "decide"]

DECISION_FORMAT_VERSION = 1


def _check_auc(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        # A NaN AUC (e.g. a single-class split) must never bless a model by comparing False quietly.
        raise ValueError(f"{what} must be a finite AUC in [0, 1], got {value}")
    return value


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the gate.

    ``min_auc`` is the absolute floor (0.5 is a random ranker); ``tolerance`` is how far below the
    champion's AUC a candidate may land and still be blessed (0 means "no worse"); ``domain`` is
    the target domain whose test AUC is compared.
    """

    min_auc: float = 0.5
    tolerance: float = 0.0
    domain: str = field(kw_only=True)

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.min_auc, bool) or not isinstance(self.min_auc, (int, float)) or not (
            math.isfinite(self.min_auc) and 0.0 <= self.min_auc <= 1.0
        ):
            problems.append(f"min_auc must be in [0, 1], got {self.min_auc!r}")
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float)) or not (
            math.isfinite(self.tolerance) and self.tolerance >= 0.0
        ):
            problems.append(f"tolerance must be a finite number >= 0, got {self.tolerance!r}")
        if not isinstance(self.domain, str) or not self.domain:
            problems.append(f"domain must name the target domain, got {self.domain!r}")
        if problems:
            raise ValueError("invalid GateConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict with everything needed to audit it later.

    ``non_regression_passed`` is ``None`` when there was no champion to compare with.
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
        if version != DECISION_FORMAT_VERSION:
            raise ValueError(
                f"{source} has format_version {version!r}; this library reads version {DECISION_FORMAT_VERSION}"
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
        return f"{verdict}: candidate AUC {self.candidate_auc:.4f} on {self.domain}/{self.split} ({champion})"

    def to_markdown(self) -> str:
        """A Markdown report (KFP renders Markdown artifacts): verdict, checks table, reasons."""
        def fmt(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.4f}"

        def mark(ok: bool | None) -> str:
            return "skipped (no champion)" if ok is None else ("pass" if ok else "**FAIL**")

        threshold = None if self.champion_auc is None else self.champion_auc - self.tolerance
        lines = [
            f"## Model gate: {'BLESSED' if self.blessed else 'REJECTED'}",
            "",
            f"Target domain `{self.domain}`, split `{self.split}`, metric AUC.",
            "",
            "| check | candidate | threshold | result |",
            "|---|---|---|---|",
            f"| absolute floor | {fmt(self.candidate_auc)} | >= {fmt(self.min_auc)} | {mark(self.floor_passed)} |",
            f"| non-regression vs champion"
            f"{'' if self.champion_version is None else f' (version {self.champion_version})'} "
            f"| {fmt(self.candidate_auc)} | >= {fmt(threshold)} "
            f"(champion {fmt(self.champion_auc)} - tolerance {fmt(self.tolerance)}) "
            f"| {mark(self.non_regression_passed)} |",
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
) -> GateDecision:
    """Bless or reject a candidate by its test AUC on ``cfg.domain``.

    Args:
        candidate_auc: the candidate's AUC on ``cfg.domain``'s ``split``.
        champion_auc: the current champion's AUC on the same rows, or ``None`` if the registry has
            no champion yet (then only the floor applies).
        cfg: thresholds.
        split: recorded in the decision; both AUCs must come from this split.
        champion_version: recorded in the decision (the registry version that was compared).

    Raises:
        ValueError: an AUC is not a finite number in [0, 1] (an evaluation bug must stop the run,
            not be read as a regression or an improvement).
    """
    cand = _check_auc(candidate_auc, "candidate_auc")
    champ = None if champion_auc is None else _check_auc(champion_auc, "champion_auc")
    where = f"{cfg.domain}/{split}"
    reasons: list[str] = []

    floor_ok = cand >= cfg.min_auc
    reasons.append(
        f"candidate AUC {cand:.4f} on {where} {'meets' if floor_ok else 'is below'} the floor min_auc={cfg.min_auc:.4f}"
    )
    if champ is None:
        regression_ok: bool | None = None
        reasons.append("no champion in the registry: the first model is judged by the floor only")
    else:
        threshold = champ - cfg.tolerance
        regression_ok = cand >= threshold
        version = "" if champion_version is None else f" (version {champion_version})"
        reasons.append(
            f"candidate AUC {cand:.4f} {'does not regress' if regression_ok else 'regresses'} against the "
            f"champion{version}: {cand - champ:+.4f} vs its AUC {champ:.4f} on the same split "
            f"(allowed drop: tolerance={cfg.tolerance:.4f}, threshold {threshold:.4f})"
        )
    blessed = floor_ok and regression_ok is not False
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
    )
