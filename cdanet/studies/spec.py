"""The study spec: which runs each of the paper's studies trains, as one typed, file-loadable object.

A spec is YAML or JSON with every key optional (the defaults reproduce the paper's protocol)::

    dataset: amazon          # amazon | taobao
    profile: paper           # paper | strict | tiny (cdanet.config.PROFILES)
    seeds: [0, 1, 2]
    targets: [movie, book]   # each domain in turn as the target; default: both domains
    overrides: ["train.max_epochs=30"]   # applied to every run (dotted keys of ExperimentConfig)
    table2:
      models: [mlp, share_middle, star, ddtcdr, mmoe, ple, cdanet]
      grid:                  # optional grid search on the validation split, per model ("*" = all)
        "*": {train.learning_rate: [0.001, 0.003]}
        cdanet: {model.alpha: [0.01, 0.03]}
    table5: {ablations: [none, no_mmoe, no_orth, no_cross, no_translation, no_augmentation]}
    fig5: {models: [cdanet, share_middle, star, ddtcdr, mmoe, ple], train_fractions: [0.2, 0.4, 0.6, 0.8, 1.0]}
    fig6: {alpha: [...], beta: [...], num_experts: [1, 2, 3, 4]}
    table4: {k: 5, users: 3, items_per_user: 1, pool: users, target_domain: movie, seed: 0}

Unknown keys are errors (a typo must not silently run the defaults).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdanet.config import ABLATIONS, DATASETS, MODEL_NAMES, PROFILES, ConfigError, ExperimentConfig

#: The studies, in the order ``all`` runs them.
STUDIES: tuple[str, ...] = ("table2", "table5", "fig5", "fig6", "table4")
#: Studies made of independent training runs (fanned out by the experiments pipeline).
TRAINING_STUDIES: tuple[str, ...] = ("table2", "table5", "fig5", "fig6")
#: Fig. 6 hyper-parameters and the config key each one sets.
FIG6_PARAMS: dict[str, str] = {"alpha": "model.alpha", "beta": "model.beta", "num_experts": "model.num_experts"}
#: Table 4 neighbour pools: the paper's (positive source rows of the analysed users) or every source row.
TABLE4_POOLS: tuple[str, ...] = ("users", "all")
#: The cross-domain models of Fig. 5 (MLP is single-domain, so the paper leaves it out).
CROSS_DOMAIN_MODELS: tuple[str, ...] = ("cdanet", "share_middle", "star", "ddtcdr", "mmoe", "ple")


class StudySpecError(ValueError):
    """An invalid study spec; the message names the file and the offending key."""


@dataclass
class Table2Spec:
    """Table 2: every model on the same splits; optional per-model grid on the validation split."""

    models: list[str] = field(default_factory=lambda: list(MODEL_NAMES))
    #: ``{model name or "*": {dotted config key: [values]}}``; the cartesian product per model is searched.
    grid: dict[str, dict[str, list[Any]]] = field(default_factory=dict)


@dataclass
class Table5Spec:
    """Table 5: CDAnet's ablations next to the full model (``"none"``)."""

    ablations: list[str] = field(default_factory=lambda: list(ABLATIONS))


@dataclass
class Fig5Spec:
    """Fig. 5: fraction of the target's training split kept (validation and test fixed)."""

    models: list[str] = field(default_factory=lambda: list(CROSS_DOMAIN_MODELS))
    train_fractions: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8, 1.0])


@dataclass
class Fig6Spec:
    """Fig. 6: CDAnet's sensitivity to alpha (Eq. 9), beta (Eq. 9, 11) and K experts (Eq. 2-4).

    Each hyper-parameter is varied alone; the others keep the profile's (paper's) values.
    """

    alpha: list[float] = field(default_factory=lambda: [0.001, 0.003, 0.01, 0.03, 0.1, 0.3])
    beta: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0])
    num_experts: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])


@dataclass
class Table4Spec:
    """Table 4 (Sec. 5.3): nearest source-domain neighbours of translated target latents.

    ``pool="users"`` follows the paper: the neighbours are searched among the latent features of
    the positive source-domain training rows of the users who have positives in both domains
    (``Z_b``); ``pool="all"`` searches every source training row.
    """

    k: int = 5
    users: int = 3  # analysed users, drawn with ``seed`` among those with positives in both domains
    items_per_user: int = 1  # positive target items shown per user
    pool: str = "users"
    target_domain: str | None = None  # default: the dataset's sparse domain (movie / ad)
    seed: int = 0


@dataclass
class StudySpec:
    """Everything that decides the runs of the studies; see the module docstring for the file format."""

    dataset: str = "amazon"
    profile: str = "paper"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    targets: list[str] | None = None
    overrides: list[str] = field(default_factory=list)
    table2: Table2Spec = field(default_factory=Table2Spec)
    table5: Table5Spec = field(default_factory=Table5Spec)
    fig5: Fig5Spec = field(default_factory=Fig5Spec)
    fig6: Fig6Spec = field(default_factory=Fig6Spec)
    table4: Table4Spec = field(default_factory=Table4Spec)

    # ---- derived --------------------------------------------------------------------------------
    @property
    def target_domains(self) -> list[str]:
        """The targets to run, in the dataset's order (sparse domain first)."""
        return list(self.targets) if self.targets else list(DATASETS[self.dataset])

    @property
    def table4_target(self) -> str:
        return self.table4.target_domain or DATASETS[self.dataset][0]

    def base_config(self, target_domain: str, model: str) -> ExperimentConfig:
        """The profile's config for ``model`` with ``target_domain`` as target and the spec's overrides."""
        cfg = PROFILES[self.profile](self.dataset, target_domain, model)
        if self.overrides:
            cfg = cfg.with_overrides(self.overrides)
        # One progress display per study; per-epoch bars of each run would interleave with it.
        cfg.train.progress = False
        return cfg.validate()

    # ---- validation -----------------------------------------------------------------------------
    def validate(self, source: str = "study spec") -> StudySpec:
        """Raise :class:`StudySpecError` listing every problem (naming ``source``); return self."""
        errors: list[str] = []
        if self.dataset not in DATASETS:
            raise StudySpecError(f"{source}: unknown dataset {self.dataset!r}; expected one of {sorted(DATASETS)}")
        domains = DATASETS[self.dataset]
        if self.profile not in PROFILES:
            errors.append(f"unknown profile {self.profile!r}; expected one of {sorted(PROFILES)}")
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            errors.append(f"seeds must be a non-empty list of integers, got {self.seeds!r}")
        elif len(set(self.seeds)) != len(self.seeds):
            errors.append(f"seeds has duplicates: {self.seeds}")
        for t in self.targets or []:
            if t not in domains:
                errors.append(f"unknown target domain {t!r} for dataset {self.dataset!r}; expected one of {domains}")
        for where, models in (("table2.models", self.table2.models), ("fig5.models", self.fig5.models)):
            unknown = [m for m in models if m not in MODEL_NAMES]
            if unknown or not models:
                errors.append(f"{where} must be a non-empty list of {MODEL_NAMES}, got {models!r}")
        for name, grid in self.table2.grid.items():
            if name != "*" and name not in MODEL_NAMES:
                errors.append(f"table2.grid names unknown model {name!r}; expected '*' or one of {MODEL_NAMES}")
            if not isinstance(grid, Mapping):
                errors.append(f"table2.grid.{name} must map config keys to lists of values, got {grid!r}")
                continue
            for key, values in grid.items():
                if not isinstance(values, list) or not values:
                    errors.append(f"table2.grid.{name}.{key} must be a non-empty list of values, got {values!r}")
        bad = [a for a in self.table5.ablations if a not in ABLATIONS]
        if bad or not self.table5.ablations:
            errors.append(f"table5.ablations must be a non-empty list of {ABLATIONS}, got {self.table5.ablations!r}")
        if not self.fig5.train_fractions or not all(0 < f <= 1 for f in self.fig5.train_fractions):
            errors.append(f"fig5.train_fractions must be values in (0, 1], got {self.fig5.train_fractions!r}")
        for name in FIG6_PARAMS:
            values = getattr(self.fig6, name)
            if not values:
                errors.append(f"fig6.{name} must be a non-empty list")
            elif name == "num_experts" and not all(isinstance(v, int) and v >= 1 for v in values):
                errors.append(f"fig6.num_experts must be integers >= 1, got {values!r}")
            elif name != "num_experts" and not all(v >= 0 for v in values):
                errors.append(f"fig6.{name} must be values >= 0, got {values!r}")
        t4 = self.table4
        if t4.k < 1 or t4.users < 1 or t4.items_per_user < 1:
            errors.append(f"table4.k, table4.users and table4.items_per_user must be >= 1, got {t4.k}, "
                          f"{t4.users}, {t4.items_per_user}")
        if t4.pool not in TABLE4_POOLS:
            errors.append(f"unknown table4.pool {t4.pool!r}; expected one of {TABLE4_POOLS}")
        if t4.target_domain is not None and t4.target_domain not in domains:
            errors.append(f"unknown table4.target_domain {t4.target_domain!r}; expected one of {domains}")
        if not errors:
            # Catches bad overrides and grid keys/values with the config's own messages.
            try:
                for target in self.target_domains:
                    for model in sorted(set(self.table2.models) | set(self.fig5.models) | {"cdanet"}):
                        base = self.base_config(target, model)
                        for point in grid_points(self.table2.grid, model):
                            base.with_overrides(point).validate()
            except ConfigError as e:
                errors.append(str(e).replace("\n", " "))
        if errors:
            raise StudySpecError(f"{source} is invalid:\n  - " + "\n  - ".join(errors))
        return self

    # ---- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "study spec") -> StudySpec:
        """Build and validate a spec; unknown keys raise :class:`StudySpecError` naming ``source``."""
        if not isinstance(d, Mapping):
            raise StudySpecError(f"{source} must be a mapping of spec keys, got {type(d).__name__}")
        d = dict(d)
        sections = {"table2": Table2Spec, "table5": Table5Spec, "fig5": Fig5Spec, "fig6": Fig6Spec, "table4": Table4Spec}
        kwargs: dict[str, Any] = {}
        for name, section_cls in sections.items():
            if name in d:
                kwargs[name] = _build(section_cls, d.pop(name), f"{source}: section {name!r}")
        top = _build(cls, d, source)
        for name, value in kwargs.items():
            setattr(top, name, value)
        return top.validate(source)

    @classmethod
    def load(cls, path: str) -> StudySpec:
        """Read a YAML (``.yaml``/``.yml``) or JSON spec file."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"no study spec at {path}: expected a YAML or JSON file (see docs/studies.md)")
        with open(path) as fh:
            text = fh.read()
        try:
            if path.endswith((".yaml", ".yml")):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except Exception as e:  # yaml.YAMLError / json.JSONDecodeError: both mean "not parseable"
            raise StudySpecError(f"{path} is not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}: {e}") from e
        return cls.from_dict(data, source=path)

    @classmethod
    def tiny(cls, dataset: str = "amazon") -> StudySpec:
        """The test variant: tiny profile, one seed, one epoch, a couple of models and values per study."""
        return cls(
            dataset=dataset,
            profile="tiny",
            seeds=[0],
            overrides=["train.max_epochs=1", "train.finetune_max_epochs=1"],
            table2=Table2Spec(models=["mlp", "cdanet"]),
            table5=Table5Spec(ablations=["none", "no_translation"]),
            fig5=Fig5Spec(models=["cdanet", "mmoe"], train_fractions=[0.5, 1.0]),
            fig6=Fig6Spec(alpha=[0.01, 0.1], beta=[0.1], num_experts=[1, 2]),
            table4=Table4Spec(k=3, users=2),
        ).validate("tiny study spec")

    def with_changes(self, **changes: Any) -> StudySpec:
        """A validated copy with top-level fields replaced (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None}).validate()


def as_int(value: Any) -> Any:
    """An integral float as int; anything else unchanged.

    KFP passes ``dict`` pipeline parameters as protobuf Structs, whose numbers are all doubles, so
    ``seeds: [0, 1]`` arrives as ``[0.0, 1.0]``.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _build(cls: type, d: Any, source: str) -> Any:
    if not isinstance(d, Mapping):
        raise StudySpecError(f"{source} must be a mapping, got {d!r}")
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise StudySpecError(f"{source}: unknown key(s) {unknown}; expected some of {sorted(fields)}")
    values = dict(d)
    for name, value in values.items():
        if fields[name] == "list[int]" and isinstance(value, list):
            values[name] = [as_int(v) for v in value]
        elif fields[name].startswith("int"):
            values[name] = as_int(value)
    return cls(**values)


def grid_points(grid: Mapping[str, Mapping[str, Sequence[Any]]], model: str) -> list[dict[str, Any]]:
    """The cartesian product of the ``"*"`` grid and ``model``'s own grid, in a stable order.

    Returns ``[{}]`` (one point, the profile's settings) when neither grid applies. A key in the
    model's grid replaces the same key of ``"*"``.
    """
    merged: dict[str, list[Any]] = {**{k: list(v) for k, v in grid.get("*", {}).items()},
                                    **{k: list(v) for k, v in grid.get(model, {}).items()}}
    points: list[dict[str, Any]] = [{}]
    for key in sorted(merged):
        points = [{**p, key: v} for p in points for v in merged[key]]
    return points
