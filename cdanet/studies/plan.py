"""Plans: which training runs a study needs, and which table cell each run fills.

A *cell* is one entry of a study's result frame (model x target x seed x swept value). A *run* is
one ``run_experiment`` call, identified by a hash of its fully resolved config, so cells of
different studies that need the same config (full CDAnet at the paper's settings appears in Table 2,
Table 5, Fig. 5 at ratio 1.0 and Fig. 6) share one run. The plan is a pure function of the spec:
the experiments pipeline re-derives it in its aggregation step instead of passing it around.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cdanet.config import ExperimentConfig
from cdanet.studies.spec import FIG6_PARAMS, TRAINING_STUDIES, StudySpec, as_int, grid_points


def run_id_of(cfg: ExperimentConfig) -> str:
    """A stable 12-hex-digit id of everything that can change a run's result.

    ``train.progress`` only changes what is printed, so it is left out of the hash.
    """
    d = cfg.to_dict()
    d["train"].pop("progress", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Run:
    """One training run: a resolved config and a human-readable label for progress lines."""

    run_id: str
    label: str
    config: dict[str, Any]

    def experiment_config(self) -> ExperimentConfig:
        return ExperimentConfig.from_dict(self.config).validate()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Run:
        try:
            d = json.loads(text)
            run = cls(run_id=d["run_id"], label=d["label"], config=d["config"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"not a run spec ({type(e).__name__}: {e}); expected JSON with run_id, label, config") from e
        actual = run_id_of(run.experiment_config())
        if actual != run.run_id:
            raise ValueError(f"run spec {run.run_id} does not match its config (hash {actual}); it was edited or corrupted")
        return run


@dataclass(frozen=True)
class Cell:
    """One row of a study's result frame (before the run's metrics are joined on ``run_id``).

    ``variant`` is the row label of the study's table: the model name (Table 2, Fig. 5), the
    ablation (Table 5) or ``"cdanet"`` (Fig. 6). ``param``/``value`` name the swept quantity
    (``"train_fraction"``, ``"alpha"``, ``"beta"``, ``"num_experts"``; ``""`` otherwise).
    ``grid_index`` numbers Table 2's grid points per model; ``grid_point`` is that point as JSON.
    """

    study: str
    model: str
    variant: str
    target_domain: str
    source_domain: str
    seed: int
    run_id: str
    param: str = ""
    value: float | None = None
    grid_index: int = 0
    grid_point: str = "{}"


@dataclass
class StudyPlan:
    """The cells of one study and the distinct runs behind them (in first-use order)."""

    study: str
    cells: list[Cell] = field(default_factory=list)
    runs: dict[str, Run] = field(default_factory=dict)

    def add(self, spec: StudySpec, *, model: str, variant: str, target: str, seed: int,
            overrides: Mapping[str, Any], label: str, param: str = "", value: float | None = None,
            grid_index: int = 0, grid_point: Mapping[str, Any] | None = None) -> None:
        base = spec.base_config(target, model)
        # base_config switched train.progress off; with_overrides keeps it.
        typed = _typed_like(base, overrides)
        cfg = base.with_overrides({**typed, "train.seed": seed}).validate()
        rid = run_id_of(cfg)
        self.runs.setdefault(rid, Run(rid, label, cfg.to_dict()))
        self.cells.append(Cell(
            study=self.study, model=model, variant=variant, target_domain=target, source_domain=cfg.source_domain,
            seed=seed, run_id=rid, param=param, value=value, grid_index=grid_index,
            grid_point=json.dumps({k: typed.get(k, v) for k, v in (grid_point or {}).items()}, sort_keys=True),
        ))


def _typed_like(cfg: ExperimentConfig, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides with integral floats turned into ints where the config field is an int.

    Grid values from a KFP ``dict`` parameter arrive as doubles (``num_experts: 2.0``); an int field
    must stay an int (it sizes modules) and must hash like the same spec given on the command line.
    """
    current = cfg.to_dict()
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        node: Any = current
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        is_int = isinstance(node, int) and not isinstance(node, bool)
        out[key] = as_int(value) if is_int else value
    return out


def plan_study(study: str, spec: StudySpec) -> StudyPlan:
    """The cells and runs of one training study (``table2``, ``table5``, ``fig5``, ``fig6``)."""
    if study not in TRAINING_STUDIES:
        raise ValueError(f"unknown training study {study!r}; expected one of {TRAINING_STUDIES}")
    plan = StudyPlan(study)
    for target in spec.target_domains:
        for seed in spec.seeds:
            tag = f"target={target} seed={seed}"
            if study == "table2":
                for model in spec.table2.models:
                    points = grid_points(spec.table2.grid, model)
                    for i, point in enumerate(points):
                        grid_tag = f" grid#{i}" if len(points) > 1 else ""
                        plan.add(spec, model=model, variant=model, target=target, seed=seed, overrides=point,
                                 label=f"table2 {model} {tag}{grid_tag}", grid_index=i, grid_point=point)
            elif study == "table5":
                for ablation in spec.table5.ablations:
                    plan.add(spec, model="cdanet", variant=ablation, target=target, seed=seed,
                             overrides={"model.ablation": ablation}, label=f"table5 {ablation} {tag}")
            elif study == "fig5":
                for model in spec.fig5.models:
                    for fraction in spec.fig5.train_fractions:
                        plan.add(spec, model=model, variant=model, target=target, seed=seed,
                                 overrides={"train.train_fraction": fraction}, param="train_fraction",
                                 value=float(fraction), label=f"fig5 {model} ratio={fraction:g} {tag}")
            else:
                for param, key in FIG6_PARAMS.items():
                    for v in getattr(spec.fig6, param):
                        plan.add(spec, model="cdanet", variant="cdanet", target=target, seed=seed,
                                 overrides={key: v}, param=param, value=float(v),
                                 label=f"fig6 {param}={v:g} {tag}")
    return plan


def unique_runs(plans: Iterable[StudyPlan]) -> list[Run]:
    """The distinct runs of several plans, in first-use order (what the pipeline fans out over)."""
    runs: dict[str, Run] = {}
    for plan in plans:
        for rid, run in plan.runs.items():
            runs.setdefault(rid, run)
    return list(runs.values())


def check_studies(studies: Iterable[str], allowed: Iterable[str] = TRAINING_STUDIES) -> list[str]:
    """``studies`` as a list without duplicates; a clear error for an unknown name."""
    allowed = tuple(allowed)
    out: list[str] = []
    for s in studies:
        if s not in allowed:
            raise ValueError(f"unknown study {s!r}; expected some of {allowed}")
        if s not in out:
            out.append(s)
    if not out:
        raise ValueError(f"no study selected; expected some of {allowed}")
    return out
