"""Training throughput and peak memory of every model on CPU at Amazon-movie-like sizes.

Measures one optimisation step (forward, loss, backward, Adam step) on pre-generated random batches
(:func:`cdanet.batch.random_batch`, so data generation is not timed) and reports samples/s, counting
the rows of every domain a step trains on (two domains for cross-domain models). Each model runs in
its own subprocess so that its peak RSS (``ru_maxrss``) is its own.

Two throughputs per model (:func:`step_time_summary`): *sustained*, from the median of all timed
steps, and *uncontended*, from the median of the fastest window of ``--window`` consecutive steps.
On a shared host the two differ by the slowdown that other tenants cause while the model runs.

Each model's FLOPs per step (forward and backward, counted once with
:class:`torch.utils.flop_counter.FlopCounterMode`) give its effective GFLOP/s. Before and after the
models, a probe measures what the machine delivers at that moment: the sgemm rate at the models'
typical shape (8192 x 64 times 64 x 64) and the memory bandwidth of a 64 MB copy. On a shared host both
drift by tens of percent within minutes, so compare figures against the probe of the same run.

Sizes (each domain with its own fields): a 50-d title vector and two categorical fields (movie: genre
30, director 3k; book: category 30, writer 3k); d = 64; the user and item tables by ``--tables``:

* ``movie`` (default): 30k users and 16k items in both domains (Amazon-movie-like);
* ``taobao``: the paper's Taobao sizes after k-core (issue 15), the target (movie) domain with 252k
  users and 105k items like Taobao's ad domain, the source (book) with 343k users and 240k items like
  its rec domain. Only the tables grow: the batch and the dense part are the same, so the ratio of the
  two presets' throughputs is what the table size costs a step.

``--users`` / ``--items`` set both domains' tables instead.

    .venv/bin/python benchmarks/bench_models.py                 # all models
    .venv/bin/python benchmarks/bench_models.py --models cdanet --threads 2
    .venv/bin/python -m benchmarks.bench_models --models cdanet --threads 2 --tables taobao --embedding-update lazy
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from cdanet.batch import Batch, random_batch
from cdanet.config import EMBEDDING_COMBINERS, EMBEDDING_UPDATES, paper_config
from cdanet.contract import DomainSchema, FieldKind, FieldSpec
from cdanet.layers import set_fast_paths
from cdanet.losses import compute_loss
from cdanet.models import AugmentationNetwork, build_model
from cdanet.training.optim import make_optimizer, resolve_embedding_update, retain_heap, training_fast_paths

MODEL_CHOICES = ("cdanet", "cdanet_stage2", "mlp", "share_middle", "star", "ddtcdr", "mmoe", "ple")


#: ``--tables`` presets: (users, items) of the target (movie) and the source (book) domain.
TABLE_SIZES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "movie": ((30_000, 16_000), (30_000, 16_000)),
    "taobao": ((252_000, 105_000), (343_000, 240_000)),  # ad-like target, rec-like source
}


def bench_schemas(users: int, items: int, title_dim: int,
                  source: tuple[int, int] | None = None) -> dict[str, DomainSchema]:
    """The benchmark's two domains: ``users`` x ``items`` tables in both, or ``source`` = (users, items) for book."""
    def schema(domain: str, small: str, large: str, users: int, items: int) -> DomainSchema:
        return DomainSchema("amazon", domain, (
            FieldSpec("user_id", FieldKind.CATEGORICAL_ID, vocab_size=users),
            FieldSpec("item_id", FieldKind.CATEGORICAL_ID, vocab_size=items),
            FieldSpec(small, FieldKind.CATEGORICAL, vocab_size=30),
            FieldSpec(large, FieldKind.CATEGORICAL, vocab_size=3000),
            FieldSpec("title", FieldKind.DENSE_VECTOR, dim=title_dim),
        ))

    source_users, source_items = source if source is not None else (users, items)
    return {"movie": schema("movie", "genre", "director", users, items),
            "book": schema("book", "category", "writer", source_users, source_items)}


def table_sizes(args: argparse.Namespace) -> tuple[tuple[int, int], tuple[int, int]]:
    """(users, items) of the target and the source from ``--tables``, or both ``--users`` / ``--items``."""
    target, source = TABLE_SIZES[args.tables]
    if args.users is not None or args.items is not None:
        both = (args.users if args.users is not None else target[0], args.items if args.items is not None else target[1])
        return both, both
    return target, source


def step_time_summary(times: list[float], window: int) -> tuple[float, float]:
    """``(sustained, uncontended)`` step times from consecutive timed steps.

    ``sustained`` is the median of all steps: what a training run sees on this host as it is.
    ``uncontended`` is the median of the fastest window of ``window`` consecutive steps (the steps
    are cut into whole windows; a shorter run is one window). On a shared host, other tenants slow
    the step by tens of percent for seconds at a time, and they only ever add time: the fastest
    window estimates what the code does on the hardware, as ``timeit`` recommends taking the minimum
    of repeats. A window's median, not the single fastest step, so that one lucky step cannot set it.
    """
    if not times or window < 1:
        raise ValueError(f"need timed steps and window >= 1, got {len(times)} steps, window {window}")
    windows = [times[i : i + window] for i in range(0, len(times) - window + 1, window)] or [times]
    return statistics.median(times), min(statistics.median(w) for w in windows)


def run_one(name: str, args: argparse.Namespace) -> dict[str, float | str]:
    """Benchmark one model in this process; returns the measured figures."""
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.retain_heap:
        retain_heap()  # as the trainer does on CPU
    (users, items), source = table_sizes(args)
    schemas = bench_schemas(users, items, args.title_dim, source)
    cfg = paper_config("amazon", model="cdanet" if name == "cdanet_stage2" else name)
    cfg.model.d = cfg.model.embedding_dim = cfg.model.tower_hidden = args.d
    cfg.model.embedding_combiner = args.combiner
    cfg = cfg.with_overrides(args.overrides).validate()
    model = build_model(cfg, schemas)
    if getattr(model, "user_link", None) is not None:  # model.shared_users: 60 % of the users linked
        link = torch.randint(1, source[0], (users,), generator=torch.Generator().manual_seed(1))
        link[torch.rand(users, generator=torch.Generator().manual_seed(2)) > 0.6] = 0
        model.link_users(link)
    if name == "cdanet_stage2":
        model = AugmentationNetwork.from_translation(model)
    model.train()
    gen = torch.Generator().manual_seed(0)
    steps: list[dict[str, Batch]] = [
        {d: random_batch(schemas[d], args.batch_size, gen) for d in model.train_domains} for _ in range(4)
    ]
    # the trainer's fast paths and optimiser
    update, _ = resolve_embedding_update(args.embedding_update, 1, model)  # auto: by these tables' size
    set_fast_paths(model, training_fast_paths(torch.device("cpu"), update))
    opt = make_optimizer(model, 1e-3, 0.0, torch.device("cpu"), update)

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        compute_loss(model, steps[i % len(steps)]).total.backward()
        opt.step()

    with FlopCounterMode(display=False) as flops:  # one untimed step: its matmul FLOPs, fwd + bwd
        step(0)
    for i in range(args.warmup):
        step(i)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    rows = args.batch_size * len(model.train_domains)
    sustained, uncontended = step_time_summary(times, args.window)
    return {
        "model": name,
        "domains": len(model.train_domains),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "ms_per_step": 1e3 * sustained,
        "samples_per_s": rows / sustained,
        "gflop_per_step": flops.get_total_flops() / 1e9,
        "uncontended_samples_per_s": rows / uncontended,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def machine_probe(threads: int) -> tuple[float, float]:
    """What the host delivers now: (sgemm GFLOP/s at 8192x64 @ 64x64, copy bandwidth GB/s of 64 MB)."""
    if threads:
        torch.set_num_threads(threads)
    a, w = torch.randn(8192, 64), torch.randn(64, 64)
    src, dst = torch.randn(16 << 20), torch.empty(16 << 20)

    def median_s(fn, n: int) -> float:
        for _ in range(3):
            fn()
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return sorted(ts)[n // 2]

    gemm = 2 * 8192 * 64 * 64 / median_s(lambda: a.mm(w), 200) / 1e9
    copy = 2 * src.numel() * 4 / median_s(lambda: dst.copy_(src), 30) / 1e9  # bytes read + written
    return gemm, copy


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODEL_CHOICES), choices=MODEL_CHOICES)
    p.add_argument("--batch-size", type=int, default=4096, help="rows per domain and step")
    p.add_argument("--steps", type=int, default=60, help="timed steps per model")
    p.add_argument("--window", type=int, default=10,
                   help="consecutive steps per window; 'uncontended' is the median of the fastest window")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--tables", choices=list(TABLE_SIZES), default="movie",
                   help="user and item table sizes: movie (30k users, 16k items in both domains) or taobao (the "
                        "paper's Taobao sizes: 252k users / 105k items in the target, 343k / 240k in the source)")
    p.add_argument("--users", type=int, default=None, help="users of both domains (instead of --tables)")
    p.add_argument("--items", type=int, default=None, help="items of both domains (instead of --tables)")
    p.add_argument("--title-dim", type=int, default=50)
    p.add_argument("--combiners", nargs="+", default=["linear"], choices=list(EMBEDDING_COMBINERS),
                   help="embedding combiners to measure (model.embedding_combiner); each model runs with each")
    p.add_argument("--embedding-update", choices=list(EMBEDDING_UPDATES), default="dense",
                   help="Adam's update of the embedding tables (train.embedding_update; auto, the trainer's default, "
                        "decides by the tables' size)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override of every model, e.g. --set model.shared_users=false (repeatable)")
    p.add_argument("--no-retain-heap", dest="retain_heap", action="store_false",
                   help="let glibc return freed memory to the OS (the trainer's train.retain_heap=false)")
    p.add_argument("--combiner", help=argparse.SUPPRESS)  # internal: the child's combiner
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one model, print JSON
    args = p.parse_args(argv)

    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return

    passthrough = list(argv if argv is not None else sys.argv[1:])
    for flag in ("--models", "--combiners"):  # each child gets --one NAME --combiner C instead
        if flag in passthrough:
            i = passthrough.index(flag)
            j = i + 1
            while j < len(passthrough) and not passthrough[j].startswith("--"):
                j += 1
            del passthrough[i:j]
    print(f"# load average before: {os.getloadavg()} on {os.cpu_count()} CPUs, torch {torch.__version__}")
    (users, items), (source_users, source_items) = table_sizes(args)
    print(f"# batch {args.batch_size}/domain, d={args.d}, tables {args.tables if args.users is None and args.items is None else 'custom'}: "
          f"movie (target) {users} users, {items} items; book (source) {source_users} users, {source_items} items, "
          f"title {args.title_dim}-d, Adam with {args.embedding_update} embedding updates, retain_heap={args.retain_heap}, {args.steps} timed steps after "
          f"{args.warmup} warm-up: sustained = median step, uncontended = median of the fastest window of "
          f"{args.window} consecutive steps")
    gemm, copy = machine_probe(args.threads)
    print(f"# machine probe before: sgemm {gemm:.0f} GFLOP/s, copy {copy:.1f} GB/s")
    header = (f"{'model':<28}{'domains':>8}{'params(M)':>11}{'ms/step':>10}{'samples/s':>12}{'uncont./s':>11}"
              f"{'GFLOP/step':>12}{'GFLOP/s':>9}{'peakRSS(MB)':>13}")
    print(header)
    print("-" * len(header))
    for name in args.models:
        for combiner in args.combiners:
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), *passthrough, "--one", name, "--combiner", combiner],
                check=True, capture_output=True, text=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            label = r["model"] if len(args.combiners) == 1 else f"{r['model']}[{combiner}]"
            print(f"{label:<28}{r['domains']:>8}{r['params_m']:>11.2f}{r['ms_per_step']:>10.1f}"
                  f"{r['samples_per_s']:>12,.0f}{r['uncontended_samples_per_s']:>11,.0f}{r['gflop_per_step']:>12.3g}"
                  f"{r['gflop_per_step'] / r['ms_per_step'] * 1e3:>9.3g}{r['peak_rss_mb']:>13.0f}",
                  flush=True)
    gemm, copy = machine_probe(args.threads)
    print(f"# machine probe after: sgemm {gemm:.0f} GFLOP/s, copy {copy:.1f} GB/s; load average {os.getloadavg()}")
    print("# reproduce: .venv/bin/python benchmarks/bench_models.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
