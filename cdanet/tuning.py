"""Hyperparameter search on the target domain's validation AUC (Optuna), and its typed search spaces.

A study trains each trial with the project's own trainer (:func:`cdanet.training.fit_stages`), on
the training split, and scores it on the validation split only: the test split is never read, so
the test AUC of the tuned model stays an unbiased estimate.

* Sampler: TPE, seeded. Pruner: median (a trial stops when its validation AUC falls below the
  median of earlier trials at the same validation of the same stage).
* Storage: ``<output>/study.db`` (SQLite): a study resumes where it stopped, and several
  ``cdanet tune`` processes can share one output folder on one machine.
* Outputs: ``best_config.json`` (the winner's full :class:`ExperimentConfig`), ``trials.csv`` (one
  row per trial: number, state, value, params, seconds).

A search space maps dotted config keys to :class:`FloatParam`, :class:`IntParam` or
:class:`CategoricalParam`; :meth:`SearchSpace.validate` checks it against the config before any
trial runs. The YAML form (``cdanet tune --space space.yaml``)::

    train.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    model.dropout: {type: float, low: 0.0, high: 0.5}
    model.num_experts: {type: int, low: 1, high: 4}
    train.batch_size: {type: categorical, choices: [512, 1024, 2048]}
    train.embedding_update: [lazy, dense]          # a bare list is categorical
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cdanet.atomic import replacing, write_json
from cdanet.config import ConfigError, ExperimentConfig, config_types

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

STUDY_FILENAME = "study.db"
BEST_CONFIG_FILENAME = "best_config.json"
TRIALS_FILENAME = "trials.csv"
PRUNERS: tuple[str, ...] = ("median", "none")

#: Steps of one stage's validations are offset by this, so the pruner compares stage-1 validations
#: with stage-1 validations and stage-2 with stage-2, even when stage 1 stops early in some trials.
STAGE_STEP_STRIDE = 1_000_000

#: Keys a search space may not name: they choose what is trained, not how well.
_UNSEARCHABLE = {"model.name", "model.tower_layers_by_domain"}

#: The ``train`` keys that are hyperparameters of the winner (see :func:`tuned_overrides`); the
#: other ``train`` keys set the budget (epochs, patience), the seed or the runtime (device, threads).
TUNED_TRAIN_KEYS: tuple[str, ...] = (
    "batch_size", "learning_rate", "weight_decay", "embedding_update", "finetune_learning_rate", "epoch_basis",
)


class SpaceError(ConfigError):
    """An invalid search space, reported in one line before any trial runs."""


# ---- search spaces ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FloatParam:
    """A float drawn from [low, high], log-uniformly when ``log`` (then low > 0), on a grid when ``step``."""

    low: float
    high: float
    log: bool = False
    step: float | None = None


@dataclass(frozen=True)
class IntParam:
    """An integer drawn from [low, high] (inclusive), log-uniformly when ``log`` (then low >= 1)."""

    low: int
    high: int
    log: bool = False
    step: int = 1


@dataclass(frozen=True)
class CategoricalParam:
    """One of ``choices`` (scalars: numbers, strings, booleans, null)."""

    choices: tuple[Any, ...]


Param = FloatParam | IntParam | CategoricalParam
_TYPES: dict[str, type] = {"float": FloatParam, "int": IntParam, "categorical": CategoricalParam}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(v: Any, what: str) -> float:
    # PyYAML reads 1e-4 (no dot) as a string; accept numeric strings for float bounds.
    if _is_number(v):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            pass
    raise SpaceError(f"invalid search space: {what} must be a number, got {v!r}")


def _integer(v: Any, what: str) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise SpaceError(f"invalid search space: {what} must be an integer, got {v!r}")


def _param_from_spec(key: str, spec: Any) -> Param:
    if isinstance(spec, (list, tuple)):
        return CategoricalParam(tuple(spec))
    if not isinstance(spec, Mapping):
        raise SpaceError(f"invalid search space: {key}: expected a mapping with 'type' or a list of choices, got {spec!r}")
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in _TYPES:
        raise SpaceError(f"invalid search space: {key}: type must be one of {sorted(_TYPES)}, got {kind!r}")
    allowed = {f.name for f in dataclasses.fields(_TYPES[kind])}
    unknown = sorted(set(spec) - allowed)
    missing = sorted(f.name for f in dataclasses.fields(_TYPES[kind])
                     if f.default is dataclasses.MISSING and f.name not in spec)
    if unknown or missing:
        detail = (f"unknown field(s) {unknown}" if unknown else "") + ("; " if unknown and missing else "") + (
            f"missing field(s) {missing}" if missing else "")
        raise SpaceError(f"invalid search space: {key}: {kind} takes {sorted(allowed)}: {detail}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"invalid search space: {key}: log must be true or false, got {log!r}")
    if kind == "float":
        step = spec.get("step")
        return FloatParam(_number(spec["low"], f"{key}.low"), _number(spec["high"], f"{key}.high"), log,
                          None if step is None else _number(step, f"{key}.step"))
    if kind == "int":
        return IntParam(_integer(spec["low"], f"{key}.low"), _integer(spec["high"], f"{key}.high"), log,
                        _integer(spec.get("step", 1), f"{key}.step"))
    choices = spec["choices"]
    if not isinstance(choices, (list, tuple)):
        raise SpaceError(f"invalid search space: {key}: choices must be a list, got {choices!r}")
    return CategoricalParam(tuple(choices))


def _field_kind(key: str) -> str | None:
    """'float', 'int', 'bool' or 'str' for a ``model.``/``train.`` key; None when it is not searchable."""
    if not key.startswith(("model.", "train.")):
        return None
    tp = config_types().get(key)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # an optional setting: its value's type
        tp = next((a for a in typing.get_args(tp) if a is not type(None)), None)
    return {bool: "bool", float: "float", int: "int", str: "str"}.get(tp)


_KIND_NAMES = {"float": "a float", "int": "an integer", "bool": "a boolean", "str": "a string"}


def _one_line(e: ConfigError) -> str:
    return " ".join(part.strip().lstrip("- ") for part in str(e).splitlines() if part.strip()).replace(
        "invalid config: ", "")


@dataclass(frozen=True)
class SearchSpace:
    """Dotted config keys (``model.*``, ``train.*``) -> how to draw each value, in a fixed order."""

    params: tuple[tuple[str, Param], ...]

    @classmethod
    def of(cls, params: Mapping[str, Param]) -> SearchSpace:
        return cls(tuple(params.items()))

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> SearchSpace:
        """Parse the YAML/JSON form (see the module docstring); raises :class:`SpaceError`."""
        if not isinstance(spec, Mapping) or not spec:
            raise SpaceError(f"invalid search space: expected a non-empty mapping of config keys, got {spec!r}")
        return cls(tuple((str(k), _param_from_spec(str(k), v)) for k, v in spec.items()))

    @classmethod
    def load(cls, path: str) -> SearchSpace:
        import yaml

        try:
            with open(path, encoding="utf-8") as fh:
                spec = yaml.safe_load(fh)
        except OSError as e:
            raise SpaceError(f"invalid search space: cannot read {path}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise SpaceError(f"invalid search space: {path} is not YAML: {' '.join(str(e).split())}") from e
        return cls.from_dict(spec)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.params)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The YAML/JSON form; ``SearchSpace.from_dict(s.to_dict()) == s``."""
        out: dict[str, dict[str, Any]] = {}
        for key, p in self.params:
            kind = next(k for k, t in _TYPES.items() if isinstance(p, t))
            d = dataclasses.asdict(p)
            if isinstance(p, CategoricalParam):
                d["choices"] = list(p.choices)
            out[key] = {"type": kind, **d}
        return out

    def validate(self, base: ExperimentConfig, fixed: Sequence[str] = ()) -> SearchSpace:
        """Raise :class:`SpaceError` (one line, every problem) unless each value the space can draw gives a
        valid config on top of ``base``; ``fixed`` are keys set by ``--set``, which the space may not name."""
        problems: list[str] = []
        if not self.params:
            problems.append("the space is empty")
        seen: set[str] = set()
        for key, p in self.params:
            problems += [f"{key}: {m}" for m in self._check(key, p, base, set(fixed))]
            if key in seen:
                problems.append(f"{key}: named twice")
            seen.add(key)
        if problems:
            raise SpaceError("invalid search space: " + "; ".join(problems))
        return self

    @staticmethod
    def _check(key: str, p: Param, base: ExperimentConfig, fixed: set[str]) -> list[str]:
        if key in _UNSEARCHABLE:
            return ["not searchable (choose the model with --model)"]
        kind = _field_kind(key)
        if kind is None:
            return ["unknown config key (expected model.<field> or train.<field> of a number, string or boolean)"]
        if key in fixed:
            return ["also fixed with --set; drop one of the two"]
        out: list[str] = []
        if isinstance(p, (FloatParam, IntParam)):
            if isinstance(p, FloatParam) and kind != "float":
                out.append(f"is {_KIND_NAMES[kind]} field; use type {'int' if kind == 'int' else 'categorical'}")
            if isinstance(p, IntParam) and kind != "int":
                out.append(f"is {_KIND_NAMES[kind]} field; use type {'float' if kind == 'float' else 'categorical'}")
            if not math.isfinite(p.low) or not math.isfinite(p.high) or not p.low < p.high:
                out.append(f"low must be < high, got low={p.low} high={p.high}")
            if p.log and p.low <= 0:
                out.append(f"log needs low > 0, got {p.low}")
            if p.step is not None and not p.step > 0:
                out.append(f"step must be > 0, got {p.step}")
            if p.log and p.step not in (None, 1):
                out.append("log and step cannot be combined")
            values: list[Any] = [p.low, p.high]
        else:
            if not p.choices:
                return ["choices is empty"]
            bad = [c for c in p.choices if not (c is None or isinstance(c, (bool, int, float, str)))]
            if bad:
                return [f"choices must be scalars, got {bad}"]
            if len(set(map(repr, p.choices))) != len(p.choices):
                out.append(f"choices repeat a value: {list(p.choices)}")
            accepts = {"float": lambda c: _is_number(c), "int": lambda c: isinstance(c, int) and not isinstance(c, bool),
                       "bool": lambda c: isinstance(c, bool), "str": lambda c: isinstance(c, str)}[kind]
            wrong = [c for c in p.choices if not (c is None or accepts(c))]
            if wrong:
                out.append(f"is {_KIND_NAMES[kind]} field; choices {wrong} are not")
            values = list(p.choices)
        if out:
            return out
        for v in values:
            try:
                base.with_overrides({key: v}).validate()
            except ConfigError as e:
                out.append(f"value {v!r} gives an invalid config ({_one_line(e)})")
        return out

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Draw one value per key from ``trial`` (Optuna's distributions; param names are the dotted keys)."""
        out: dict[str, Any] = {}
        for key, p in self.params:
            if isinstance(p, FloatParam):
                out[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
            elif isinstance(p, IntParam):
                out[key] = trial.suggest_int(key, p.low, p.high, log=p.log, step=p.step)
            else:
                out[key] = trial.suggest_categorical(key, list(p.choices))
        return out


def default_space(model: str, profile: str = "paper") -> SearchSpace:
    """A CTR search space around the paper's settings; the ``tiny`` profile keeps widths and batches small.

    Every model: learning rate (log-uniform), weight decay (0, or around the measured 1e-4), dropout, latent size
    ``model.d`` and batch size. CDAnet adds the loss weights alpha (L^cross) and beta (L^orth), DDTCDR
    its orthogonality weight. ``model.embedding_dim`` only matters for the concat/sum combiners, so it
    is left out of the default.
    """
    tiny = profile == "tiny"
    params: dict[str, Param] = {
        "train.learning_rate": FloatParam(1e-4, 1e-2, log=True),
        "train.weight_decay": CategoricalParam((0.0, 3e-5, 1e-4, 3e-4, 1e-3)),
        "model.dropout": FloatParam(0.0, 0.5),
        "model.d": CategoricalParam((4, 8, 16) if tiny else (16, 32, 64, 128)),
        "train.batch_size": CategoricalParam((32, 64, 128) if tiny else (512, 1024, 2048, 4096)),
    }
    if model == "cdanet":
        params["model.alpha"] = FloatParam(1e-3, 1e-1, log=True)
        params["model.beta"] = FloatParam(1e-3, 1.0, log=True)
    elif model == "ddtcdr":
        params["model.ddtcdr_orth_weight"] = FloatParam(1e-3, 1.0, log=True)
    return SearchSpace.of(params)


# ---- the objective: validation AUC of one config ------------------------------------------------


def validation_auc(
    cfg: ExperimentConfig,
    processed_root: str,
    *,
    on_validation: Callable[[str, dict[str, Any]], None] | None = None,
    data_cache: dict[tuple[str, str], Any] | None = None,
) -> tuple[float, dict[str, Any]]:
    """Train ``cfg`` on the training split; return the final stage's best validation AUC of the target.

    Also returns a per-stage summary (best epoch and AUC, epochs run). Never reads the test split.
    """
    from cdanet.training import fit_stages

    _, stages = fit_stages(cfg, processed_root, data_cache=data_cache, on_epoch_end=on_validation)
    final = list(stages.values())[-1]
    summary = {name: {"best_epoch": r.best_epoch, "best_val_auc": r.best_val_auc, "epochs": len(r.history)}
               for name, r in stages.items()}
    return float(final.best_val_auc), summary


class PruningReporter:
    """``fit_stages``'s ``on_epoch_end``: reports each validation's target AUC to an Optuna trial and
    raises ``optuna.TrialPruned`` when the pruner says so.

    Relies only on ``entry["val_auc_<target>"]`` and on being called once per validation, in order;
    the step is ``stage index * STAGE_STEP_STRIDE + validations so far in that stage``, so it works
    whether the trainer validates once per epoch or several times.
    """

    def __init__(self, trial: optuna.Trial, target_domain: str) -> None:
        self.trial, self.key = trial, f"val_auc_{target_domain}"
        self._stage_index: dict[str, int] = {}
        self._count: dict[str, int] = {}

    def __call__(self, stage: str, entry: Mapping[str, Any]) -> None:
        import optuna

        index = self._stage_index.setdefault(stage, len(self._stage_index))
        k = self._count[stage] = self._count.get(stage, -1) + 1
        self.trial.report(float(entry[self.key]), index * STAGE_STEP_STRIDE + k)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{stage} validation {k + 1}: {self.key} {float(entry[self.key]):.4f}")


# ---- the study ----------------------------------------------------------------------------------


@dataclass
class TuneResult:
    """What :func:`run_study` produced."""

    best_number: int
    best_value: float
    best_params: dict[str, Any]
    best_config: ExperimentConfig
    counts: dict[str, int]  # trials per state (COMPLETE, PRUNED, FAIL, RUNNING, ...)
    ran: int  # trials this call ran (a resumed study ran the others before)
    best_config_path: str
    trials_path: str
    storage_url: str

    def summary(self) -> str:
        cfg = self.best_config
        params = "\n".join(f"    {k} = {v!r}" for k, v in self.best_params.items())
        counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(self.counts.items()))
        return (
            f"study: {sum(self.counts.values())} trials ({counts}); {self.ran} run now\n"
            f"best trial #{self.best_number}: validation AUC {self.best_value:.4f} ({cfg.target_domain}, "
            f"model {cfg.model.name})\n{params}\n"
            f"best config: {self.best_config_path}\ntrials: {self.trials_path}\nstudy: {self.storage_url}\n"
            f"pipeline: python pipeline.py run ... tuned_config_uri={self.best_config_path}"
        )


def study_name_for(cfg: ExperimentConfig) -> str:
    return f"cdanet-{cfg.dataset}-{cfg.target_domain}-{cfg.model.name}"


def _make_pruner(name: str) -> optuna.pruners.BasePruner:
    import optuna

    if name == "median":
        # The first validation of each stage is noisy; compare from the second one on.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown pruner {name!r}; expected one of {PRUNERS}")


def run_study(
    base: ExperimentConfig,
    processed_root: str,
    output_dir: str,
    space: SearchSpace,
    *,
    n_trials: int,
    fixed: Sequence[str] = (),
    seed: int | None = None,
    pruner: str | optuna.pruners.BasePruner = "median",
    study_name: str | None = None,
) -> TuneResult:
    """Run (or resume) a study until it holds ``n_trials`` finished (complete or pruned) trials.

    Args:
        base: the config every trial starts from (profile + fixed overrides), validated.
        processed_root: processed data (schemas + parquet); only train and validation are read.
        output_dir: ``study.db``, ``best_config.json`` and ``trials.csv`` go here.
        space: what to search; validated against ``base`` and ``fixed`` before any trial runs.
        n_trials: the study's total of finished trials (a resumed study runs only the missing ones).
        fixed: the ``--set`` keys (only to reject a space that also names one of them).
        seed: the TPE sampler's seed (default: ``base.train.seed``).
        pruner: ``"median"``, ``"none"`` or an Optuna pruner.
        study_name: default ``cdanet-<dataset>-<target>-<model>``.

    Raises:
        SpaceError / ConfigError: a bad space or config (nothing has run).
        RuntimeError: the study finished without a completed trial.
    """
    import optuna

    base.validate()
    space.validate(base, [f.split("=", 1)[0].strip() for f in fixed])
    if n_trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {n_trials}")
    pruner_obj = _make_pruner(pruner) if isinstance(pruner, str) else pruner
    os.makedirs(output_dir, exist_ok=True)
    storage_url = f"sqlite:///{os.path.abspath(os.path.join(output_dir, STUDY_FILENAME))}"
    name = study_name or study_name_for(base)
    identity = {"base_config": base.to_dict(), "space": space.to_dict()}
    study = optuna.create_study(
        storage=optuna.storages.RDBStorage(storage_url), study_name=name, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=base.train.seed if seed is None else seed),
        pruner=pruner_obj, load_if_exists=True,
    )
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", identity)
    elif stored != json.loads(json.dumps(identity)):
        differing = [k for k in identity if json.loads(json.dumps(identity[k])) != stored.get(k)]
        raise ConfigError(f"study {name!r} in {output_dir} was run with a different {' and '.join(differing)}; "
                          "use another --output (or --study-name) for a new search")

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    todo = max(0, n_trials - len(study.get_trials(deepcopy=False, states=finished)))
    caches: dict[tuple[float, int], dict] = {}

    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial)
        cfg = base.with_overrides(params).validate()
        trial.set_user_attr("config", cfg.to_dict())
        cache = caches.setdefault((cfg.train.train_fraction, cfg.train.seed), {})
        start = time.perf_counter()
        value, stages = validation_auc(cfg, processed_root, data_cache=cache,
                                       on_validation=PruningReporter(trial, cfg.target_domain))
        trial.set_user_attr("stages", stages)
        logger.debug("trial %d: validation AUC %.4f in %.1fs", trial.number, value, time.perf_counter() - start)
        return value

    from cdanet.training import NonFiniteLossError

    if todo:
        # A NaN loss or an invalid combination of drawn values fails that trial, not the study;
        # the callback stops at n_trials finished trials even when other processes share the study.
        study.optimize(objective, n_trials=todo, catch=(NonFiniteLossError, ConfigError),
                       callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=finished)])
    return _finish(study, output_dir, storage_url, ran=todo)


def _finish(study: optuna.Study, output_dir: str, storage_url: str, ran: int) -> TuneResult:
    import optuna

    trials = study.get_trials(deepcopy=False)
    trials_path = write_trials_csv(trials, os.path.join(output_dir, TRIALS_FILENAME))
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"no trial of study {study.study_name!r} completed (see {trials_path})")
    best = study.best_trial
    best_config = ExperimentConfig.from_dict(best.user_attrs["config"]).validate()
    best_path = write_json(os.path.join(output_dir, BEST_CONFIG_FILENAME), best_config.to_dict())
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return TuneResult(best.number, float(best.value), dict(best.params), best_config, counts, ran,
                      best_path, trials_path, storage_url)


def write_trials_csv(trials: Sequence[optuna.trial.FrozenTrial], path: str) -> str:
    """One row per trial: number, state, value, seconds, then one ``params_<key>`` column per searched key.

    ``value`` of a COMPLETE trial is its validation AUC; a PRUNED trial shows the last AUC it reported.
    """
    keys = sorted({k for t in trials for k in t.params})
    with replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["number", "state", "value", "seconds", *(f"params_{k}" for k in keys)])
        for t in trials:
            seconds = t.duration.total_seconds() if t.duration is not None else ""
            writer.writerow([t.number, t.state.name, "" if t.value is None else repr(float(t.value)),
                             seconds, *(json.dumps(t.params[k]) if k in t.params else "" for k in keys)])
    return path


# ---- handing the winner on ----------------------------------------------------------------------


def load_tuned_config(uri: str) -> ExperimentConfig:
    """Read a ``best_config.json`` from a local path or any Beam filesystem URI (gs://, s3://, ...)."""
    try:
        if "://" in uri:
            from apache_beam.io.filesystems import FileSystems

            with FileSystems.open(uri) as fh:
                text = fh.read().decode("utf-8")
        else:
            with open(uri, encoding="utf-8") as fh:
                text = fh.read()
        d = json.loads(text)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the tuned config {uri!r}: {e}") from e
    if not isinstance(d, dict):
        raise ConfigError(f"the tuned config {uri!r} is not a JSON object")
    return ExperimentConfig.from_dict(d).validate()


def tuned_overrides(tuned: ExperimentConfig) -> dict[str, Any]:
    """The winner's hyperparameters as dotted overrides: every ``model`` field except name and ablation,
    and :data:`TUNED_TRAIN_KEYS`. Budget (epochs, patience), seed and runtime settings are left out."""
    d = tuned.to_dict()
    out = {f"model.{k}": v for k, v in d["model"].items() if k not in ("name", "ablation")}
    out.update({f"train.{k}": d["train"][k] for k in TUNED_TRAIN_KEYS})
    return out
