"""Wall time per step and peak memory of the local pipeline (kfp.local, SubprocessRunner).

Runs ``python pipeline.py run`` on simulated data of each requested scale in a fresh work folder
(simulation is timed separately, it is not a pipeline step), then reads the task start/finish times
from the run's log. Peak memory is the largest resident set of any process of the run (the task
subprocesses and their Beam workers), from ``getrusage(RUSAGE_CHILDREN)``. For the two training
steps it also reads the trainer's per-epoch lines: the number of epochs run, the best epoch and the
median training throughput (samples/s) over the epochs.

    .venv/bin/python benchmarks/bench_pipeline.py --scales tiny small
    .venv/bin/python benchmarks/bench_pipeline.py --scales movie --param max_epochs=5
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EPOCH = re.compile(r"(pretrain|finetune) epoch ([\d.]+)/\d+: .*\(best [\d.]+ @ ([\d.]+)\), (\d+) samples/s")
_EVENT = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) - INFO - (?:Executing task '([\w-]+)'|Task '([\w-]+)' finished)")


def step_times(log_path: str) -> dict[str, float]:
    """Seconds from 'Executing task' to 'finished' for every task in a kfp.local log."""
    started: dict[str, datetime] = {}
    seconds: dict[str, float] = {}
    with open(log_path) as fh:
        for line in fh:
            m = _EVENT.match(_ANSI.sub("", line))
            if not m:
                continue
            t = datetime.strptime(m.group(1), "%H:%M:%S.%f")
            # the register component runs as "register" or "register-2" (the gate's two branches)
            name = re.sub(r"-\d+$", "", m.group(2) or m.group(3))
            if m.group(2):
                started[name] = t
            elif name in started:
                seconds[name] = (t - started[name]).total_seconds() % 86400
    return seconds


def run_scale(scale: str, params: list[str], workdir: str) -> dict[str, object]:
    from cdanet.simulate import simulate

    t0 = time.perf_counter()
    simulate(os.path.join(workdir, "raw"), dataset="amazon", scale=scale, seed=0)
    simulate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "pipeline.py"), "run", "--scale", scale,
                           "--workdir", workdir, *params], capture_output=True, text=True, cwd=ROOT)
    total_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pipeline run at scale {scale} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    log = sorted(glob.glob(os.path.join(workdir, "logs", "pipeline-*.log")))[-1]
    auc = re.search(r"test movie\s+AUC (\d\.\d+)", proc.stdout)
    return {"scale": scale, "simulate_s": simulate_s, "pipeline_s": total_s, "steps": step_times(log),
            "training": training_epochs(log),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "movie_test_auc": float(auc.group(1)) if auc else float("nan")}


def training_epochs(log_path: str) -> dict[str, dict[str, float]]:
    """Per training step: epochs run (the last validation's point, fractional when training stopped
    inside an epoch), best epoch and median samples/s, from the trainer's validation lines."""
    rates: dict[str, list[float]] = {}
    best: dict[str, float] = {}
    last: dict[str, float] = {}
    with open(log_path) as fh:
        for line in fh:
            m = _EPOCH.search(_ANSI.sub("", line))
            if m:
                rates.setdefault(m.group(1), []).append(float(m.group(4)))
                best[m.group(1)] = float(m.group(3))
                last[m.group(1)] = float(m.group(2))
    return {stage: {"epochs": last[stage], "best_epoch": best[stage], "median_samples_per_s": statistics.median(r)}
            for stage, r in rates.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", nargs="+", default=["tiny", "small"])
    p.add_argument("--param", action="append", default=[], help="pipeline parameter key=value (repeatable)")
    args = p.parse_args(argv)
    print(f"# load average before: {os.getloadavg()} on {os.cpu_count()} CPUs")
    results = []
    for scale in args.scales:
        with tempfile.TemporaryDirectory(prefix=f"bench-pipeline-{scale}-") as workdir:
            results.append(run_scale(scale, args.param, workdir))
    steps = ["configure", "preprocess", "validate", "baseline", "pretrain", "finetune", "evaluate", "gate",
             "register"]
    print("scale    simulate  " + "  ".join(f"{s[:10]:>10}" for s in steps) + "   pipeline  peakRSS(MB)  AUC")
    for r in results:
        cells = "  ".join(f"{r['steps'].get(s, float('nan')):>10.1f}" for s in steps)
        print(f"{r['scale']:<8} {r['simulate_s']:>8.1f}  {cells}   {r['pipeline_s']:>8.1f}  "
              f"{r['peak_rss_mb']:>11.0f}  {r['movie_test_auc']:.4f}")
    for r in results:
        for stage, t in r["training"].items():
            print(f"# {r['scale']} {stage}: {t['epochs']} epochs (best {t['best_epoch']}), "
                  f"median {t['median_samples_per_s']:,.0f} samples/s")
    print(f"# load average after: {os.getloadavg()}")
    print("# seconds; peak RSS is cumulative over the scales run (the largest process so far)")
    print(f"# reproduce: .venv/bin/python benchmarks/bench_pipeline.py --scales {' '.join(args.scales)}"
          + "".join(f" --param {x}" for x in args.param))
    return 0


if __name__ == "__main__":
    sys.exit(main())
