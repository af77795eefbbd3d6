"""Trainer throughput and peak memory at Amazon-movie-like sizes, on synthetic processed data.

Measures samples/s through :func:`cdanet.training.train_model` (batch sampling, forward, loss,
backward and Adam included; the end-of-epoch validation excluded) and the peak RSS of the process
for CDAnet stage 1 (translation network, one batch per domain per step), stage 2 (augmentation
network, target only) and the MLP baseline. Each case runs in its own subprocess so peak RSS is its own.

    .venv/bin/python benchmarks/bench_training.py                   # the default sizes below
    .venv/bin/python benchmarks/bench_training.py --rows 200000 --threads 2

Sizes: ~30k users and ~16k items per domain (Amazon movie: 29,680 / 16,494), a 50-d title vector,
genre / director / writer categoricals and a multi-hot category list, d = 64, batch 4096 per domain.
Samples/s counts the rows of every domain in a step (stage 1 consumes 2 x 4096 rows per step).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

CASES = ("stage1", "stage2", "mlp")


def _run_case(case: str, data_dir: str, threads: int, epochs: int, batch_size: int) -> dict[str, float]:
    import torch

    from cdanet.config import paper_config
    from cdanet.contract import load_schemas
    from cdanet.data import load_split
    from cdanet.models import AugmentationNetwork, build_model
    from cdanet.training import train_model

    cfg = paper_config("amazon", model="mlp" if case == "mlp" else "cdanet")
    cfg = cfg.with_overrides([
        f"train.num_threads={threads}", f"train.batch_size={batch_size}", f"train.max_epochs={epochs}",
        "train.progress=false", "train.device=cpu",
    ]).validate()
    schemas = load_schemas(data_dir, cfg.domains)
    t0 = time.perf_counter()
    train = {d: load_split(data_dir, schemas[d], "train") for d in cfg.domains}
    val = {d: load_split(data_dir, schemas[d], "validation") for d in cfg.domains}
    load_s = time.perf_counter() - t0
    torch.manual_seed(0)
    model = build_model(cfg, schemas)
    stage = {"stage1": "pretrain", "stage2": "finetune", "mlp": "train"}[case]
    if case == "stage2":
        model = AugmentationNetwork.from_translation(model, cfg)
    result = train_model(model, train, val, cfg, stage)
    last = result.history[-1]
    return {
        "samples_per_s": last["samples_per_s"],
        "steps": last["steps"],
        "samples": last["samples"],
        "train_s": last["train_seconds"],
        "load_s": load_s,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=30_000)
    p.add_argument("--items", type=int, default=16_000)
    p.add_argument("--rows", type=int, default=300_000, help="rows per domain (all splits; train is 80%%)")
    p.add_argument("--title-dim", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--epochs", type=int, default=2, help="samples/s is read from the last epoch (warm)")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.case:
        print(json.dumps(_run_case(args.case, args.data, args.threads, args.epochs, args.batch_size)))
        return 0

    from cdanet.synthetic import write_synthetic_processed

    with tempfile.TemporaryDirectory(prefix="cdanet-bench-") as data_dir:
        t0 = time.perf_counter()
        write_synthetic_processed(
            data_dir, "amazon", n_users=args.users, rows_per_domain={"movie": args.rows, "book": args.rows},
            n_items=args.items, title_dim=args.title_dim, user_overlap=1.0, seed=0,
        )
        print(f"synthetic data: {args.rows:,} rows per domain, {args.users:,} users, {args.items:,} items, "
              f"title dim {args.title_dim} ({time.perf_counter() - t0:.1f}s to write)")
        rows = []
        for case in args.cases:
            cmd = [sys.executable, os.path.abspath(__file__), "--case", case, "--data", data_dir,
                   "--threads", str(args.threads), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            rows.append((case, json.loads(out)))

    load1, _, _ = os.getloadavg()
    print(f"\nbatch {args.batch_size} per domain, d = 64, {args.threads} thread(s), torch {_torch_version()}, "
          f"{os.cpu_count()} CPUs, 1-min load average at the end {load1:.1f} (other processes slow every figure)")
    print(f"{'case':<8} {'samples/s':>12} {'steps':>6} {'train s':>8} {'load s':>7} {'params M':>9} {'peak RSS MB':>12}")
    for case, r in rows:
        print(f"{case:<8} {r['samples_per_s']:>12,.0f} {r['steps']:>6.0f} {r['train_s']:>8.2f} {r['load_s']:>7.2f} "
              f"{r['params_m']:>9.2f} {r['peak_rss_mb']:>12,.0f}")
    print("\nreproduce: .venv/bin/python benchmarks/bench_training.py " + " ".join(sys.argv[1:]))
    return 0


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    sys.exit(main())
