"""The embedding tables' Adam updates compared in one process, step by step alternately.

Three copies of the same CDAnet stage-1 model train on the same pre-generated batches:

* ``dense``: ``train.embedding_update=dense`` (the default): sparse table gradients and the C kernel
  that applies dense Adam's update to every row in one pass (:mod:`cdanet.native`);
* ``dense-torch``: the same update from dense table gradients and torch's fused Adam (what ``dense``
  falls back to without the C kernels);
* ``lazy``: ``train.embedding_update=lazy``: only the looked-up rows are updated.

Their steps alternate, so host drift hits all alike, and the script prints the median forward,
backward, optimiser and whole-step times of each, and the step-time ratios against ``dense-torch``.
Sizes as in ``bench_models.py`` (``--tables movie|taobao``).

    .venv/bin/python -m benchmarks.bench_embedding_update --rounds 40 --threads 2
    .venv/bin/python -m benchmarks.bench_embedding_update --rounds 15 --threads 2 --tables taobao
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch

from benchmarks.bench_models import TABLE_SIZES, bench_schemas, table_sizes
from cdanet.batch import random_batch
from cdanet.config import paper_config
from cdanet.layers import FastPaths, set_fast_paths
from cdanet.losses import compute_loss
from cdanet.models import build_model
from cdanet.native import library
from cdanet.training.optim import make_optimizer, retain_heap, training_fast_paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=40, help="timed rounds; each times one step of each variant")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4096, help="rows per domain and step")
    p.add_argument("--tables", choices=list(TABLE_SIZES), default="movie",
                   help="user and item table sizes, as bench_models.py's --tables")
    p.add_argument("--users", type=int, default=None, help="users of both domains (instead of --tables)")
    p.add_argument("--items", type=int, default=None, help="items of both domains (instead of --tables)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    retain_heap()
    (users, items), source = table_sizes(args)
    schemas = bench_schemas(users, items, 50, source)
    base = build_model(paper_config("amazon", model="cdanet"), schemas).train()
    variants = {}
    for name, update in (("dense", "dense"), ("dense-torch", "dense"), ("lazy", "lazy")):
        model = copy.deepcopy(base)
        # dense-torch: dense table gradients, which TableAdam leaves to torch's fused Adam
        paths = FastPaths() if name == "dense-torch" else training_fast_paths(torch.device("cpu"), update)
        set_fast_paths(model, paths)
        variants[name] = (model, make_optimizer(model, 1e-3, 0.0, torch.device("cpu"), update))
    gen = torch.Generator().manual_seed(0)
    batches = [{d: random_batch(schemas[d], args.batch_size, gen) for d in (base.source, base.target)}
               for _ in range(4)]
    times: dict[str, list[tuple[float, float, float]]] = {k: [] for k in variants}

    def step(update: str, i: int) -> None:
        model, opt = variants[update]
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = compute_loss(model, batches[i % len(batches)]).total
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        times[update].append((t1 - t0, t2 - t1, t3 - t2))

    for i in range(args.warmup + args.rounds):
        for update in variants:
            step(update, i)
    native = library()
    print(f"# batch {args.batch_size}/domain, target {users} users, {items} items, source {source[0]} users, "
          f"{source[1]} items, {args.threads} threads, "
          f"{args.rounds} alternating rounds; C kernels: {native.path if native else 'off (torch ops)'}")
    print(f"{'update':<13}{'forward':>10}{'backward':>10}{'optimizer':>11}{'step ms':>10}{'samples/s':>12}")
    medians = {}
    for update, rows in times.items():
        rows = rows[args.warmup:]
        f, b, o = (statistics.median(r[j] for r in rows) * 1e3 for j in range(3))
        medians[update] = statistics.median(sum(r) for r in rows) * 1e3
        print(f"{update:<13}{f:>10.1f}{b:>10.1f}{o:>11.1f}{medians[update]:>10.1f}"
              f"{2 * args.batch_size / medians[update] * 1e3:>12,.0f}")
    for name in ("dense", "lazy"):
        print(f"# dense-torch / {name} step time: {medians['dense-torch'] / medians[name]:.3f}")
    print("# reproduce: .venv/bin/python -m benchmarks.bench_embedding_update " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
