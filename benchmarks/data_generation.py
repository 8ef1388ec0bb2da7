"""Benchmark: generate the paper-size joint recall set (1.44M / 14.4K / 14.4K samples, ~7.6 GB).

Target (issue #2): at most 30 s wall and 4 GB peak RSS on a 2-core machine. Prints a table and
writes results/data_generation.json with provenance. The data goes to a temporary directory
beside --out and is deleted afterwards (never commit data).

    PYTHONPATH=. python benchmarks/data_generation.py [--workers 2] [--train-per-pair 10000]

It also times a plain 1 GiB write to the same disk before and after: the run is bound by the disk
when the two rates are close.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from hax_ssm.data import generate_joint_recall
from hax_ssm.data.storage import DirectFile
from hax_ssm.utils.io import atomic_write_json
from hax_ssm.utils.provenance import provenance


def disk_speed(scratch: Path, size: int = 1 << 30) -> float:
    """GB/s of a plain 1 GiB write through the same O_DIRECT file + fsync: the ceiling here."""
    chunk = os.urandom(DirectFile.CHUNK)
    start = time.perf_counter()
    f = DirectFile(scratch / "probe")
    for _ in range(size // len(chunk)):
        f.write(chunk)
    f.close()
    seconds = time.perf_counter() - start
    (scratch / "probe").unlink()
    return size / 1e9 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", default=None, help="directory for the temporary dataset (default: system temp)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--train-per-pair", type=int, default=10_000)
    parser.add_argument("--eval-per-pair", type=int, default=100)
    parser.add_argument(
        "--json", default="results/data_generation.json", help="where to write the result ('' = nowhere)"
    )
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="hax-bench-data-", dir=args.scratch))
    load_before = os.getloadavg()
    start = time.perf_counter()
    try:
        disk_before = disk_speed(scratch)
        start = time.perf_counter()
        meta = generate_joint_recall(
            scratch / "jr",
            train_per_pair=args.train_per_pair,
            eval_per_pair=args.eval_per_pair,
            workers=args.workers,
            progress=False,
        )
        wall = time.perf_counter() - start
        written = sum(f.stat().st_size for f in (scratch / "jr").rglob("*") if f.is_file())
        shutil.rmtree(scratch / "jr")
        disk_after = disk_speed(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load_after = os.getloadavg()
    # ru_maxrss is in KiB on Linux; RUSAGE_CHILDREN reports the largest worker
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    main_rss, worker_rss = own.ru_maxrss / 2**20, workers.ru_maxrss / 2**20
    cpu_s = own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime
    peak_total = main_rss + (args.workers if args.workers > 1 else 0) * worker_rss
    samples = sum(s["rows"] for s in meta["splits"].values())
    row = {
        "samples": samples,
        "samples_per_s": samples / wall,
        "gb_written": written / 1e9,
        "wall_s": wall,
        "write_gb_per_s": written / 1e9 / wall,
        "peak_rss_main_gb": main_rss,
        "peak_rss_worker_gb": worker_rss,
        "peak_rss_total_gb_upper_bound": peak_total,
        "cpu_s_all_processes": cpu_s,
        "disk_gb_per_s_before_after": [disk_before, disk_after],
    }
    n_workers = args.workers if args.workers > 1 else 0
    print(f"{'samples':>10} {'samples/s':>10} {'GB written':>10} {'wall s':>7} {'GB/s':>5} {'CPU s':>6}  peak RSS GB")
    print(
        f"{samples:>10,} {row['samples_per_s']:>10,.0f} {row['gb_written']:>10.2f} {wall:>7.1f} "
        f"{row['write_gb_per_s']:>5.2f} {cpu_s:>6.1f}  {main_rss:.2f} + {n_workers} x {worker_rss:.2f}"
        f" = {peak_total:.2f}"
    )
    print(f"disk alone (1 GiB O_DIRECT + fsync): {disk_before:.2f} GB/s before, {disk_after:.2f} GB/s after")
    print(
        f"target: wall <= 30 s, peak RSS <= 4 GB; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}"
    )
    if args.json:
        atomic_write_json(
            args.json,
            {
                "benchmark": "data_generation (paper-size joint recall set, O_DIRECT + fsync, content hashes included)",
                "target": {"wall_s": 30, "peak_rss_gb": 4},
                "settings": {
                    "workers": args.workers,
                    "train_per_pair": args.train_per_pair,
                    "eval_per_pair": args.eval_per_pair,
                },
                "result": row,
                "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after},
                "split_sha256": {k: v["sha256"] for k, v in meta["splits"].items()},
                "provenance": provenance([sys.executable, *sys.argv]),
            },
        )


if __name__ == "__main__":
    main()
