"""Benchmark: Beam preprocessing of the Amazon movie domain at the paper's size (~2.1M ratings).

Measures wall time, rows/s and peak memory (RSS summed over the process tree, sampled every
0.2 s) of ``run_preprocessing`` on the DirectRunner with one worker per core, next to a
single-process pandas/pyarrow implementation of the same steps run in the same process, and
checks that both give the same row counts per stage. Prints the figures and the load average
(the machine may be shared). Not a test: nothing here asserts on time.

    python benchmarks/bench_preprocess.py [--raw DIR] [--workers 2] [--scale movie|paper] [--domains movie book]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cdanet.preprocessing import PreprocessOptions, run_preprocessing
from cdanet.preprocessing.formats import AmazonMetaLine, Malformed
from cdanet.preprocessing.glove import read_glove, title_vectors, tokenize, vector_column

PAGE = os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Peak of the summed resident memory of this process and all its descendants."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def tree_rss(root: int) -> int:
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        tree, frontier = {root}, [root]
        while frontier:
            kids = [p for p, pp in parents.items() if pp in frontier and p not in tree]
            tree.update(kids)
            frontier = kids
        total = 0
        for pid in tree:
            try:
                with open(f"/proc/{pid}/statm") as fh:
                    total += int(fh.read().split()[1]) * PAGE
            except OSError:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.tree_rss(os.getpid()))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


#: Per Amazon domain: the raw file stem and the names of its multi-hot and person fields.
DOMAIN_FILES = {"movie": ("Movies_and_TV", "genre", "director"), "book": ("Books", "category", "writer")}


def pandas_reference(raw: Path, glove: str, out: Path, k: int, fractions: tuple[float, ...],
                     domain: str = "movie") -> dict[str, int]:
    """The same steps in one process with pandas / pyarrow (clean input: no malformed lines)."""
    stem, multi, person = DOMAIN_FILES[domain]
    counts: dict[str, int] = {}
    ratings = pacsv.read_csv(
        raw / f"ratings_{stem}.csv",
        read_options=pacsv.ReadOptions(column_names=["user_id", "item_id", "rating", "timestamp"]),
        convert_options=pacsv.ConvertOptions(column_types={"user_id": pa.string(), "item_id": pa.string(),
                                                           "rating": pa.float64(), "timestamp": pa.int64()}),
    ).to_pandas()
    counts["parsed"] = len(ratings)
    ratings["label"] = (ratings["rating"] > 3.0).astype("int64")
    df = ratings.groupby(["user_id", "item_id", "timestamp"], as_index=False, sort=False)["label"].max()
    counts["duplicates"] = counts["parsed"] - len(df)
    n_pass = 0
    while True:
        n_pass += 1
        col = "user_id" if n_pass % 2 else "item_id"
        vc = df[col].value_counts()
        kept = df[df[col].isin(vc.index[vc >= k])]
        removed = len(df) - len(kept)
        df = kept
        if n_pass > 1 and removed == 0:
            break
    counts["after_kcore"], counts["users"], counts["items"] = len(df), df["user_id"].nunique(), df["item_id"].nunique()
    parser = AmazonMetaLine(domain=domain)
    meta_rows = []
    with open(raw / f"meta_{stem}.json", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    meta_rows.append(parser.parse(line.rstrip("\n")))
                except Malformed:
                    continue
    meta = pd.DataFrame(meta_rows, columns=["item_id", "title", "categories", "person"]).drop_duplicates("item_id")
    items = pd.DataFrame({"item_id": df["item_id"].unique()}).merge(meta, on="item_id", how="left")
    vocab_words = {t for title in items["title"].dropna() for t in tokenize(title)}
    g = read_glove(glove, vocab_words)
    vectors, _, _ = title_vectors([t if isinstance(t, str) else None for t in items["title"]], g)
    df = df.merge(items[["item_id", "categories", "person"]], on="item_id", how="left")
    df = df.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    n = len(df)
    c1, c2 = math.floor(fractions[0] * n + 1e-9), math.floor((fractions[0] + fractions[1]) * n + 1e-9)
    splits = {"train": df.iloc[:c1], "validation": df.iloc[c1:c2], "test": df.iloc[c2:]}
    train = splits["train"]
    vocab = {
        "user_id": train["user_id"].value_counts(), "item_id": train["item_id"].value_counts(),
        multi: train["categories"].explode().dropna().value_counts(), person: train["person"].value_counts(),
    }
    index = {f: pd.Index(sorted(vc.index, key=lambda v, vc=vc: (-vc[v], v))) for f, vc in vocab.items()}
    item_pos = pd.Index(items["item_id"])
    for name, part in splits.items():
        counts[name] = len(part)
        cats = part["categories"].apply(lambda x: x if isinstance(x, list) else [])
        lengths = cats.str.len().to_numpy()
        flat = index[multi].get_indexer(np.concatenate([np.asarray(c, dtype=object) for c in cats] or [[]])) + 1
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
        table = pa.table({
            "user_id": index["user_id"].get_indexer(part["user_id"]) + 1,
            "item_id": index["item_id"].get_indexer(part["item_id"]) + 1,
            multi: pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.astype(np.int64))),
            person: index[person].get_indexer(part["person"]) + 1,
            "title": vector_column(vectors[item_pos.get_indexer(part["item_id"])]),
            "label": part["label"].to_numpy(), "timestamp": part["timestamp"].to_numpy(),
            "user_id_raw": part["user_id"].to_numpy(), "item_id_raw": part["item_id"].to_numpy(),
        })
        (out / domain).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / domain / f"{name}.parquet")
    return counts


def load_average() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--raw", default=None, help="reuse a simulated raw folder (else simulate into a temp dir)")
    ap.add_argument("--scale", default="movie",
                    help="simulator scale when --raw is not given (movie: 2.1M movie rows; paper: 2.5M + 10.5M)")
    ap.add_argument("--domains", nargs="+", default=["movie"], choices=sorted(DOMAIN_FILES),
                    help="Amazon domains to preprocess (both: the issue's movie+book scale)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes of multi_processing")
    ap.add_argument("--modes", nargs="+", default=["in_memory"], choices=["in_memory", "multi_processing"],
                    help="DirectRunner modes to time, one Beam run each (in_memory: the job's default)")
    ap.add_argument("--k", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    raw = Path(args.raw) if args.raw else tmp / "raw"
    domains = tuple(args.domains)
    if not (raw / "amazon" / "ratings_Movies_and_TV.csv").exists():
        from cdanet.simulate import simulate

        t = time.perf_counter()
        # Without the book domain, keep its rows small so the simulation stays quick.
        small_book = {} if "book" in domains else {"book_rows": 20_000, "book_users": 4_000, "book_items": 4_000}
        simulate(str(raw), dataset="amazon", scale=args.scale, seed=0, duplicate_fraction=0.01, **small_book)
        print(f"simulated {raw} in {time.perf_counter() - t:.1f} s")
    glove = str(next((raw / "glove").iterdir()))
    opts = PreprocessOptions(domains=domains, k_core=dict.fromkeys(domains, args.k))
    print(f"load average before: {load_average()} on {os.cpu_count()} cores")
    beam_runs: dict[str, dict[str, Any]] = {}
    for mode in args.modes:
        workers = args.workers if mode == "multi_processing" else 1
        beam_args = ["--runner=DirectRunner", f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"]
        with PeakRss() as mem:
            t = time.perf_counter()
            results = run_preprocessing("amazon", str(raw / "amazon"), str(tmp / f"beam_{mode}"), glove_path=glove,
                                        options=opts, beam_args=beam_args)
            beam_s = time.perf_counter() - t
        beam_runs[mode] = {"runner": f"DirectRunner {mode} x{workers}", "seconds": beam_s, "peak": mem.peak,
                           "results": results}
        print(f"beam {mode}: {beam_s:.1f} s; load average after: {load_average()}")
    (tmp / "pandas").mkdir()
    refs = {}
    with PeakRss() as mem:
        t = time.perf_counter()
        for dom in domains:
            refs[dom] = pandas_reference(raw / "amazon", glove, tmp / "pandas", args.k, opts.split_fractions, dom)
        pandas_s = time.perf_counter() - t
    read = sum(r["rows"]["read"] for r in next(iter(beam_runs.values()))["results"].values())
    report: dict[str, Any] = {"domains": list(domains), "rating_rows": read, "beam": {}}
    for mode, run in beam_runs.items():
        counts = {}
        for dom in domains:
            stats, ref = run["results"][dom], refs[dom]
            rows = stats["rows"]
            beam_counts = {"parsed": rows["parsed"], "duplicates": rows["duplicates"], "after_kcore": rows["after_kcore"],
                           "users": stats["users"], "items": stats["items"],
                           **{s: rows[s] for s in ("train", "validation", "test")}}
            same = {key: beam_counts[key] == ref[key] for key in ref}
            counts[dom] = {"beam": beam_counts, "pandas": ref, "equal": all(same.values()), "per_stage": same,
                           "kcore_passes": stats["kcore"]["passes_run"]}
        report["beam"][mode] = {
            "runner": run["runner"], "seconds": round(run["seconds"], 1), "rows_per_s": round(read / run["seconds"]),
            "peak_rss_gb": round(run["peak"] / 2**30, 2), "over_pandas_time": round(run["seconds"] / pandas_s, 2),
            "counts": counts, "all_counts_equal": all(c["equal"] for c in counts.values()),
        }
    report.update({
        "pandas": {"seconds": round(pandas_s, 1), "rows_per_s": round(read / pandas_s),
                   "peak_rss_gb": round(mem.peak / 2**30, 2)},
        "all_counts_equal": all(b["all_counts_equal"] for b in report["beam"].values()),
        "load_average_end": load_average(),
        "command": "python benchmarks/bench_preprocess.py " + " ".join(sys.argv[1:]),
    })
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
