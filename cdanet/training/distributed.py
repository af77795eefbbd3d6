"""Data-parallel training over ``torch.distributed`` (torchrun: gloo on CPU, NCCL on GPU).

Every rank holds the whole model and runs the same steps. A step's *global* batch is the one a
single process would draw (:class:`~cdanet.data.TwoDomainSampler` with the same seed); each rank
takes its contiguous shard of every domain's batch (:class:`ShardedSampler`), computes the loss and
its gradients on that shard, and :meth:`DistContext.sync_gradients` combines them before the
optimiser step:

* dense gradients: one flat ``all_reduce`` (sum) of the rank-weighted gradients;
* sparse row gradients of the embedding tables (``FastPaths.sparse_rows``: the ``dense`` update on
  CPU and the ``lazy`` one): each rank's ``(rows, values)`` are ``all_gather``-ed (padded to the
  largest rank's row count) and merged into one coalesced sparse gradient, so no ``R x e`` dense
  table gradient is ever built or sent; the optimiser (:class:`~cdanet.training.optim.TableAdam`)
  then updates exactly as in one process.

Every loss of :mod:`cdanet.losses` is a sum of per-domain means over the batch, so when each rank
holds ``1/W`` of every domain's batch, the mean of the ranks' gradients *is* the single-process
gradient (float summation order aside). A rank's gradient is weighted by its share of the step's
rows, which is ``1/W`` whenever every domain's batch splits evenly over the ranks; the one step that
may not (an epoch's trailing partial batch, when its size is not a multiple of ``W``) is then
approximated. ``tests/test_distributed.py`` checks the parameters after N steps and the validation
AUC of 2 gloo processes against one process.

All ranks start from rank 0's parameters (broadcast), and since they apply identical updates they
stay identical: each validates on the whole validation split and reaches the same early-stopping
decision without further communication. Only rank 0 writes checkpoints and outputs
(:func:`rank_output`). Dropout masks (``model.dropout``, 0 by default) differ per rank, and the
training history's losses, samples and samples/s are rank 0's own shard's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from cdanet.batch import Batch
from cdanet.config import ConfigError
from cdanet.data import TwoDomainSampler

logger = logging.getLogger(__name__)

#: Environment variables torchrun sets for every worker.
TORCHRUN_ENV: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """True when this process is one of several torchrun workers (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or "1") > 1


@dataclass(frozen=True)
class DistContext:
    """This process's place in an initialised process group."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- set-up ---------------------------------------------------------------------------------

    def broadcast_model(self, model: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (in place)."""
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t.data, src=0)

    def shard(self, sampler: TwoDomainSampler) -> ShardedSampler:
        return ShardedSampler(sampler, self.rank, self.world_size)

    # ---- per step -------------------------------------------------------------------------------

    def sync_gradients(self, model: nn.Module, local_rows: int, global_rows: int) -> None:
        """Replace every gradient by the global batch's: sum over ranks of ``local/global * grad``.

        ``local_rows`` / ``global_rows``: the rows of this rank's shard and of the whole step (all
        domains). Dense gradients are all-reduced in one flat buffer; sparse ones gathered and merged.
        """
        weight = local_rows / global_rows
        dense: list[torch.Tensor] = []
        for p in model.parameters():
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                p.grad = self._merge_sparse(g, weight)
            else:
                dense.append(g)
        if dense:
            flat = torch.cat([g.reshape(-1) for g in dense]).mul_(weight)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for g in dense:
                n = g.numel()
                g.copy_(flat[offset:offset + n].view_as(g))
                offset += n

    def _merge_sparse(self, grad: torch.Tensor, weight: float) -> torch.Tensor:
        """All ranks' ``R x e`` sparse gradients (each times its weight), summed: still sparse, coalesced."""
        grad = grad.coalesce()
        rows, values = grad.indices()[0], grad.values() * weight
        count = torch.tensor([rows.numel()], device=rows.device)
        counts = [torch.zeros_like(count) for _ in range(self.world_size)]
        dist.all_gather(counts, count)
        sizes = [int(c) for c in counts]
        most = max(sizes)
        pad = most - rows.numel()
        rows_p = torch.cat([rows, rows.new_zeros(pad)])
        values_p = torch.cat([values, values.new_zeros(pad, *values.shape[1:])])
        all_rows = [torch.empty_like(rows_p) for _ in range(self.world_size)]
        all_values = [torch.empty_like(values_p) for _ in range(self.world_size)]
        dist.all_gather(all_rows, rows_p)
        dist.all_gather(all_values, values_p)
        merged_rows = torch.cat([r[:n] for r, n in zip(all_rows, sizes, strict=True)])
        merged_values = torch.cat([v[:n] for v, n in zip(all_values, sizes, strict=True)])
        return torch.sparse_coo_tensor(merged_rows.unsqueeze(0), merged_values, grad.shape).coalesce()


class ShardedSampler:
    """This rank's share of a :class:`TwoDomainSampler`: the same steps, each domain's batch cut in
    ``world_size`` contiguous shards (``torch.tensor_split``), of which rank ``r`` takes the r-th.

    ``last_rows`` / ``last_global_rows`` give the row counts of the step just yielded (this rank's
    and the whole step's), which :meth:`DistContext.sync_gradients` weights the gradients with.
    """

    def __init__(self, sampler: TwoDomainSampler, rank: int, world_size: int) -> None:
        small = {d: len(v) for d, v in sampler.data.items() if min(sampler.batch_size, len(v)) < world_size}
        if small:
            raise ConfigError(
                f"distributed training over {world_size} processes needs at least {world_size} rows per "
                f"domain batch; train.batch_size={sampler.batch_size}, domain sizes {small}"
            )
        trailing = len(sampler.data[sampler.basis]) % sampler.batch_size
        if 0 < trailing < world_size:
            raise ConfigError(
                f"the last batch of each epoch of domain {sampler.basis!r} has {trailing} rows, fewer than the "
                f"{world_size} processes: choose a train.batch_size that leaves 0 or >= {world_size} rows"
            )
        self.sampler, self.rank, self.world_size = sampler, rank, world_size
        self.last_rows, self.last_global_rows = 0, 0

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def samples_per_epoch(self) -> int:
        return self.sampler.samples_per_epoch

    def epoch(self, epoch: int) -> Iterator[dict[str, Batch]]:
        indices = self.sampler.epoch_indices(epoch)
        data = self.sampler.data
        mine = {d: [ix.tensor_split(self.world_size)[self.rank] for ix in steps] for d, steps in indices.items()}
        on_device = {d: [ix.to(data[d].device) for ix in steps] for d, steps in mine.items()}
        for step in range(len(self)):
            self.last_rows = sum(len(mine[d][step]) for d in data)
            self.last_global_rows = sum(len(indices[d][step]) for d in data)
            yield {d: data[d].batch(on_device[d][step]) for d in data}


def current() -> DistContext | None:
    """The context of an initialised process group of more than one rank, else None."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return DistContext(dist.get_rank(), dist.get_world_size(), device)


def init_from_env(device: str = "auto") -> DistContext | None:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_*``).

    Backend: NCCL when ``device`` resolves to CUDA (each rank on GPU ``LOCAL_RANK``), else gloo.
    Returns None for a single process. Raises ``ConfigError`` naming the missing variables when
    ``WORLD_SIZE`` > 1 but torchrun's other variables are absent.
    """
    if not launched_by_torchrun():
        return None
    missing = [k for k in TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {missing} are not set: launch with torchrun")
    if not dist.is_initialized():
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return current()


@contextlib.contextmanager
def rank_output(path: str) -> Iterator[str]:
    """``path`` on rank 0 (or a single process); elsewhere a scratch folder removed afterwards.

    Every rank must run the same training code (each step all-reduces), and that code writes its
    outputs: the other ranks write theirs where nobody reads them.
    """
    ctx = current()
    if ctx is None or ctx.is_main:
        yield path
        return
    scratch = tempfile.mkdtemp(prefix=f"cdanet-rank{ctx.rank}-")
    try:
        yield os.path.join(scratch, os.path.basename(os.path.normpath(path)) or "out")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def shutdown() -> None:
    """Leave the process group (no-op when none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
