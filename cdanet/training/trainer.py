"""The training loop shared by both CDAnet stages and the baselines.

Adam on the model's objective (:func:`cdanet.losses.compute_loss`), early stopping on the target
domain's validation AUC, end-of-epoch checkpoints with exact resume, bf16 autocast on CUDA.

The loop avoids per-step host syncs: losses are summed on the device and read, together with a
non-finite flag, once every ``_SYNC_EVERY`` steps (which is also when the progress bar refreshes).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from cdanet import native
from cdanet.batch import Batch
from cdanet.config import ConfigError, ExperimentConfig
from cdanet.data import DomainData, TwoDomainSampler, stable_seed
from cdanet.evaluation import evaluate
from cdanet.layers import set_fast_paths
from cdanet.training import distributed
from cdanet.training.checkpoint import (
    checkpoint_path,
    fingerprint,
    load_checkpoint,
    run_identity,
    save_checkpoint,
)
from cdanet.training.optim import (
    make_optimizer,
    resolve_embedding_update,
    retain_heap,
    table_parameters,
    training_fast_paths,
)

logger = logging.getLogger(__name__)

#: ``pretrain``: CDAnet stage 1 (translation network, Eq. 9); ``finetune``: stage 2 (augmentation
#: network, Eq. 11); ``train``: the single stage of a baseline.
STAGES: tuple[str, ...] = ("pretrain", "finetune", "train")

_SYNC_EVERY = 16


class WeightAverage:
    """An exponential moving average of a model's parameters (Polyak averaging), updated after
    every optimiser step; validation, early stopping and the kept weights then use the average.

    The decay ramps up as ``min(decay, (1 + n) / (ramp + n))`` after ``n`` updates (``ramp`` 10 is
    TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``), so the average forgets the
    random start; until the decay binds, it spans about the last ``n / (ramp - 1)`` updates.
    Buffers (the users' profiles) are not averaged: they do not change in training.
    """

    def __init__(self, model: nn.Module, decay: float, every: int = 1, ramp: float = 10.0) -> None:
        self.decay, self.every, self.ramp = decay, every, ramp
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._values = [p.detach() for p in self.params]  # views: they follow the in-place optimiser steps
        self.shadow = [p.clone() for p in self._values]
        self.steps = 0  # optimiser steps seen

    @property
    def updates(self) -> int:
        """Averaging steps taken so far."""
        return self.steps // self.every

    @torch.no_grad()
    def update(self, before_take: Callable[[], None] | None = None) -> None:
        """After an optimiser step. With ``every = k`` the average takes every k-th step's weights,
        with decay ``decay ** k`` per take (the same horizon in steps, 1/k of the cost)."""
        self.steps += 1
        if self.steps % self.every:
            return
        if before_take is not None:  # e.g. TableAdam.flush: the rows a lazy optimiser has not moved yet
            before_take()
        n = self.updates - 1  # takes before this one
        decay = min(self.decay ** self.every, (1 + n) / (self.ramp + n))
        torch._foreach_lerp_(self.shadow, self._values, 1.0 - decay)

    @contextlib.contextmanager
    def swapped_in(self) -> Any:
        """The model holds the averaged weights inside the block, its own ones again after it."""
        with torch.no_grad():
            own = [p.detach().clone() for p in self.params]
            torch._foreach_copy_([p.data for p in self.params], self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self.params], own)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": [s.detach().cpu() for s in self.shadow], "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            for s, v in zip(self.shadow, state["shadow"], strict=True):
                s.copy_(v)
        self.steps = int(state["steps"])


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; carries where it happened."""

    def __init__(self, stage: str, epoch: int, step: int, parts: Mapping[str, float]) -> None:
        self.stage, self.epoch, self.step, self.parts = stage, epoch, step, dict(parts)
        shown = ", ".join(f"{k}={v:.6g}" for k, v in self.parts.items())
        super().__init__(
            f"non-finite training loss in stage {stage!r}, epoch {epoch}, step {step} (0-based within the epoch); "
            f"loss parts: {shown}. Check the inputs for NaN/inf and lower the learning rate."
        )


@dataclass
class TrainResult:
    """Outcome of one :func:`train_model` call.

    ``history`` has one entry per validation; ``best_epoch`` is the best validation's point in epochs
    trained, like ``history[i]["epoch"]`` (1.0 = the end of the first epoch).
    """

    history: list[dict[str, Any]]
    best_epoch: float
    best_val_auc: float
    stopped_early: bool
    stage: str = ""
    resumed_from_epoch: int = 0  # epochs already done by a checkpoint this call resumed (0: fresh)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _EarlyStopping:
    """Patience on a metric that should increase (validation AUC of the target domain).

    Counted in validations, which run ``train.evals_per_epoch`` times per epoch; ``best_epoch`` is
    the point of the best one in epochs trained (1.0 at the end of the first epoch, 0.25 a quarter in).
    A validation resets the patience only if it beats ``reference``, the value of the last one that
    reset it, by more than ``min_delta`` (``train.min_delta``); the best one, whose weights are kept,
    is any strictly greater value. With ``min_delta`` 0 the two coincide.
    """

    patience: int
    min_delta: float = 0.0
    best: float = -math.inf
    best_epoch: float = 0
    reference: float = -math.inf
    bad_epochs: int = 0  # validations since the last one that reset the patience
    stopped: bool = False

    def update(self, value: float, epoch: float) -> bool:
        """Record ``value``; True if it is a new best (strictly greater)."""
        is_best = value > self.best
        if is_best:
            self.best, self.best_epoch = value, epoch
        if value > self.reference + self.min_delta:
            self.reference, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            self.stopped = self.bad_epochs >= self.patience
        return is_best

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the counts, not the settings (``patience`` and ``min_delta`` are
        the resumed run's, :data:`cdanet.training.checkpoint.RESUMABLE_KEYS`)."""
        return {k: v for k, v in asdict(self).items() if k not in ("patience", "min_delta")}

    @classmethod
    def resumed(cls, state: Mapping[str, Any], patience: int, min_delta: float) -> _EarlyStopping:
        # checkpoints written before train.min_delta have no reference: it was the best
        return cls(patience, min_delta, **{"reference": state["best"], **state})


@dataclass
class _NonFiniteWatch:
    """Remembers, on the device, the first step whose loss was not finite and its loss parts."""

    device: torch.device
    names: list[str] = field(default_factory=list)
    step: torch.Tensor | None = None
    parts: torch.Tensor | None = None

    def observe(self, step: int, total: torch.Tensor, parts: Mapping[str, torch.Tensor]) -> None:
        if self.step is None:
            self.names = ["total", *parts]
            self.step = torch.full((), -1, dtype=torch.long, device=self.device)
            self.parts = torch.zeros(len(self.names), device=self.device)
        values = torch.stack([total.float(), *(parts[n].detach().float() for n in self.names[1:])])
        first = (self.step < 0) & ~torch.isfinite(total)
        self.step = torch.where(first, torch.full_like(self.step, step), self.step)
        self.parts = torch.where(first, values, self.parts)

    def check(self, stage: str, epoch: int) -> None:
        if self.step is not None and int(self.step) >= 0:
            assert self.parts is not None
            raise NonFiniteLossError(stage, epoch, int(self.step), dict(zip(self.names, self.parts.tolist(), strict=True)))


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but torch sees no CUDA device (use 'auto' or 'cpu')")
    return torch.device(name)


def stage_hyperparameters(cfg: ExperimentConfig, stage: str) -> tuple[float, int]:
    """(learning rate, max epochs) of ``stage``: stage 2 may override both."""
    t = cfg.train
    if stage == "finetune":
        return (
            t.finetune_learning_rate if t.finetune_learning_rate is not None else t.learning_rate,
            t.finetune_max_epochs if t.finetune_max_epochs is not None else t.max_epochs,
        )
    return t.learning_rate, t.max_epochs


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def eval_points(steps: int, evals_per_epoch: int, min_steps: int = 1) -> list[int]:
    """The 1-based steps of an epoch after which the model is validated: ``evals_per_epoch`` evenly
    spaced points, the last one at the epoch's end; fewer when they would be less than ``min_steps``
    apart (at least the epoch's end)."""
    n = max(1, min(evals_per_epoch, steps // max(min_steps, 1)))
    return sorted({max(1, round(steps * k / n)) for k in range(1, n + 1)})


def _train_one_epoch(
    model: nn.Module,
    sampler: TwoDomainSampler,
    optimizer: torch.optim.Optimizer,
    compute_loss: Callable[[nn.Module, Mapping[str, Batch]], Any],
    autocast: contextlib.AbstractContextManager[Any],
    *,
    stage: str,
    epoch: int,
    max_epochs: int,
    show_progress: bool,
    evals_per_epoch: int = 1,
    min_eval_steps: int = 1,
    on_segment: Callable[[int, dict[str, float]], bool] | None = None,
    grad_sync: Callable[[], None] | None = None,
    average: WeightAverage | None = None,
) -> None:
    """One pass of ``sampler`` (epoch is 1-based), split into ``evals_per_epoch`` segments.

    After each segment ``on_segment(steps_done, stats)`` is called with the segment's mean loss
    (+ parts), steps, samples and throughput; when it returns True (early stop) the epoch ends there.
    ``grad_sync`` (data-parallel training, :mod:`cdanet.training.distributed`) runs between the
    backward pass and the optimiser step.
    """
    device = next(model.parameters()).device
    steps = len(sampler)
    points = set(eval_points(steps, evals_per_epoch, min_eval_steps))
    bar = tqdm(total=steps, desc=f"{stage} {epoch}/{max_epochs}", unit="step", leave=False,
               disable=not show_progress, dynamic_ncols=True)

    def fresh() -> tuple[_NonFiniteWatch, torch.Tensor, dict[str, torch.Tensor], float]:
        return _NonFiniteWatch(device), torch.zeros((), device=device), {}, time.perf_counter()

    model.train()
    watch, loss_sum, part_sums, start = fresh()
    samples, seg_start_step = 0, 0
    try:
        for step, batches in enumerate(sampler.epoch(epoch - 1)):
            with autocast:
                out = compute_loss(model, batches)
            optimizer.zero_grad(set_to_none=True)
            out.total.backward()
            if grad_sync is not None:
                grad_sync()
            optimizer.step()
            if average is not None:
                average.update(before_take=getattr(optimizer, "flush", None))
            total = out.total.detach()
            watch.observe(step, total, out.parts)
            loss_sum += total.float()
            for name, value in out.parts.items():
                part_sums[name] = part_sums.get(name, 0.0) + value.detach().float()
            samples += sum(len(b) for b in batches.values())
            done = step + 1
            if done % _SYNC_EVERY == 0 or done in points:
                watch.check(stage, epoch)  # the one host sync of this window
                if show_progress:
                    bar.update(done - bar.n)
                    elapsed = max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix(loss=f"{loss_sum.item() / (done - seg_start_step):.4f}",
                                    samples_s=f"{samples / elapsed:,.0f}")
            if done in points:
                seconds = time.perf_counter() - start
                n = done - seg_start_step
                stats = {
                    "train_loss": loss_sum.item() / n,
                    **{f"train_loss_{k}": float(v) / n for k, v in part_sums.items()},
                    "steps": n,
                    "samples": samples,
                    "samples_per_s": samples / max(seconds, 1e-9),
                    "train_seconds": seconds,
                }
                stop = on_segment(done, stats) if on_segment is not None else False
                if stop:
                    break
                model.train()
                watch, loss_sum, part_sums, start = fresh()
                samples, seg_start_step = 0, done
    finally:
        bar.close()


def train_model(
    model: nn.Module,
    train: Mapping[str, DomainData],
    val: Mapping[str, DomainData],
    cfg: ExperimentConfig,
    stage: str,
    checkpoint_dir: str | None = None,
    *,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place and restore its best epoch's weights.

    Args:
        model: a model of :mod:`cdanet.models` (``train_domains``, ``eval_domains``, ``forward``).
        train: training split per domain; must cover ``model.train_domains``.
        val: validation split per domain; must cover ``model.eval_domains``, which must include
            ``cfg.target_domain`` (its AUC drives early stopping).
        cfg: the experiment config (``cfg.train`` holds the optimisation settings).
        stage: one of :data:`STAGES`; ``"finetune"`` uses ``finetune_learning_rate`` and
            ``finetune_max_epochs`` when set.
        checkpoint_dir: when given, a checkpoint is written there after every epoch, and an
            existing checkpoint of the same run (config, schemas, stage, model class, data size)
            is resumed; one of a different run raises ``CheckpointMismatchError``.
        on_epoch_end: called with each validation's history entry (``train.evals_per_epoch`` per
            epoch; at an epoch's end after its checkpoint is written).

    Raises:
        NonFiniteLossError: a NaN/inf loss (the weights are then undefined; the last checkpoint is not).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    t = cfg.train
    target = cfg.target_domain
    train_domains = tuple(model.train_domains)
    eval_domains = tuple(model.eval_domains)
    if target not in eval_domains:
        raise ConfigError(f"{type(model).__name__} does not score the target domain {target!r} (scores {eval_domains})")
    missing = [f"train[{d!r}]" for d in train_domains if d not in train] + [
        f"val[{d!r}]" for d in eval_domains if d not in val
    ]
    if missing:
        raise ValueError(f"train_model: missing data {missing} for {type(model).__name__}")
    lr, max_epochs = stage_hyperparameters(cfg, stage)
    device = resolve_device(t.device)
    if t.num_threads > 0:
        torch.set_num_threads(t.num_threads)
    if t.retain_heap and device.type == "cpu":
        retain_heap()
    use_bf16 = t.mixed_precision and device.type == "cuda"
    if t.mixed_precision and not use_bf16:
        logger.warning("train.mixed_precision needs CUDA; training in float32 on %s", device)

    # Dropout draws from the global RNG: seed it per stage so a stage's result does not depend on
    # what ran before it in the same process.
    torch.manual_seed(stable_seed(t.seed, stage, "rng"))
    model.to(device)
    train_dev = {d: train[d].to(device) for d in train_domains}
    val_dev = {d: val[d].to(device) for d in eval_domains}
    # The one place training picks the blocks' implementations (each the same function as its equation).
    update, average_every = resolve_embedding_update(t.embedding_update, t.weight_average_every, model)
    logger.info("%s: embedding update %s%s (%.1fM table parameters)%s", stage, update,
                " (auto)" if t.embedding_update == "auto" else "", table_parameters(model) / 1e6,
                f", weight average every {average_every} steps" if t.weight_average > 0 else "")
    set_fast_paths(model, training_fast_paths(device, update))
    optimizer = make_optimizer(model, lr, t.weight_decay, device, update)
    sampler = TwoDomainSampler(
        train_dev, t.batch_size, epoch_basis=t.epoch_basis, target_domain=target, seed=stable_seed(t.seed, stage)
    )
    # --- data-parallel hook (cdanet.training.distributed): rank 0's weights, this rank's shard of each step
    dist_ctx = distributed.current()
    grad_sync: Callable[[], None] | None = None
    if dist_ctx is not None:
        dist_ctx.broadcast_model(model)
        sampler = dist_ctx.shard(sampler)
        shard = sampler

        def grad_sync() -> None:
            dist_ctx.sync_gradients(model, shard.last_rows, shard.last_global_rows)
    # --- end of the data-parallel hook
    schemas = {d: data.schema for d, data in {**train, **val}.items() if d in train_domains + eval_domains}
    identity = run_identity(cfg, stage, model, schemas, {d: len(train[d]) for d in train_domains})

    average = WeightAverage(model, t.weight_average, average_every, t.weight_average_ramp) if t.weight_average > 0 else None
    stopper = _EarlyStopping(t.patience, t.min_delta)
    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    done = 0
    ckpt = checkpoint_path(checkpoint_dir, stage) if checkpoint_dir else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, identity, map_location=device)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"].cpu())
            if device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
            history = list(state["history"])
            stopper = _EarlyStopping.resumed(state["early_stopping"], t.patience, t.min_delta)
            best_state = state["best_state"]
            if average is not None:
                average.load_state_dict(state["weight_average"])
            done = int(state["epoch"])
            logger.info("%s: resuming from %s after epoch %d", stage, ckpt, done)

    resumed_from = done
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    )
    from cdanet.losses import compute_loss  # the models/losses modules import torch-heavy code lazily

    show_progress = t.progress and sys.stderr.isatty()
    steps_per_epoch = len(sampler)

    def checkpoint(epoch: int) -> None:
        if ckpt is None or (dist_ctx is not None and not dist_ctx.is_main):  # rank 0 writes
            return
        save_checkpoint(ckpt, {
            "fingerprint": fingerprint(identity),
            "identity": identity,
            "stage": stage,
            "epoch": epoch,
            "model": _cpu_state(model),
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
            "history": history,
            "early_stopping": stopper.state_dict(),
            "best_state": best_state,
            **({"weight_average": average.state_dict()} if average is not None else {}),
        })

    # Denormal floats read and written as zero (x86 FTZ/DAZ) on every training thread: rarely seen rows
    # decay towards zero, and denormal arithmetic slowed the Taobao preset's steps 3x within an epoch.
    with native.flush_denormal(t.flush_denormal and device.type == "cpu"):
        for epoch in range(done + 1, max_epochs + 1):
            if stopper.stopped:
                break

            def on_segment(steps_done: int, stats: dict[str, float], epoch: int = epoch) -> bool:
                nonlocal best_state
                # Epochs trained so far: 1.0 at the end of the first epoch, 0.25 a quarter into it.
                point = round(epoch - 1 + steps_done / steps_per_epoch, 4)
                val_start = time.perf_counter()
                flush = getattr(optimizer, "flush", None)
                if flush is not None:  # train.embedding_update=catchup: every row as dense Adam holds it
                    flush()
                with average.swapped_in() if average is not None else contextlib.nullcontext():
                    val_result = evaluate(model, val_dev, split="validation", batch_size=t.eval_batch_size, device=device)
                    target_auc = val_result[target].auc
                    if stopper.update(target_auc, point):
                        best_state = _cpu_state(model)
                entry: dict[str, Any] = {
                    "stage": stage,
                    "epoch": point,
                    "step": (epoch - 1) * steps_per_epoch + steps_done,
                    **stats,
                    **{f"val_auc_{d}": m.auc for d, m in val_result.domains.items()},
                    **{f"val_logloss_{d}": m.logloss for d, m in val_result.domains.items()},
                    "seconds": stats["train_seconds"] + (time.perf_counter() - val_start),
                    "learning_rate": lr,
                }
                history.append(entry)
                logger.info(
                    "%s epoch %g/%d: loss %.4f, val %s AUC %.4f (best %.4f @ %g), %.0f samples/s, %.1fs",
                    stage, point, max_epochs, entry["train_loss"], target, target_auc, stopper.best,
                    stopper.best_epoch, entry["samples_per_s"], entry["seconds"],
                )
                if steps_done == steps_per_epoch or stopper.stopped:
                    checkpoint(epoch)
                if on_epoch_end is not None:
                    on_epoch_end(entry)
                if stopper.stopped:
                    logger.info("%s: early stop at epoch %g (no %s AUC better by more than %g for %d validations)",
                                stage, point, target, t.min_delta, t.patience)
                return stopper.stopped

            _train_one_epoch(
                model, sampler, optimizer, compute_loss, autocast, stage=stage, epoch=epoch, max_epochs=max_epochs,
                show_progress=show_progress, evals_per_epoch=t.evals_per_epoch, min_eval_steps=t.min_eval_steps,
                on_segment=on_segment, grad_sync=grad_sync, average=average,
            )

    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(
        history=history,
        best_epoch=stopper.best_epoch,
        best_val_auc=stopper.best,
        # Patience running out in the last allowed epoch ends the run no earlier than planned.
        stopped_early=stopper.stopped and bool(history) and history[-1]["epoch"] < max_epochs,
        stage=stage,
        resumed_from_epoch=resumed_from,
    )
