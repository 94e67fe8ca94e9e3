"""Print the Markdown table of RESULTS.md from the JSON files of final_suite.sh.

Usage: python benchmarks/summarize.py benchmarks/data/final/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(paths: list[str]):
    for path in paths:
        runs = json.loads(Path(path).read_text())
        if isinstance(runs, dict):  # a single run or a CLI result file
            if "store" not in runs:
                continue
            runs = [runs]
        for run in runs:
            yield run


def main(paths: list[str]) -> None:
    print("| store | N train+test | d | C | scheduler | epoch s (median) | CPU s | passes "
          "| GB read | peak RSS MB (main + workers) | GEMM GFLOP/s achieved | numpy GEMM rate "
          "| floor s | x floor | float64 baseline s |")
    print("|" + "---|" * 15)
    for run in rows(paths):
        first = run["epochs"][0]
        baseline = (run.get("baseline") or {}).get("baseline_s")
        agree = run.get("engine_vs_baseline_max_rel_diff")
        print(
            f"| {Path(run['store']).name} | {run['rows']['train']:,}+{run['rows'].get('test', 0):,} "
            f"| {run['dim']} | {run['classes']} | {run['scheduler']} "
            f"| {run['epoch_s_median']:.3f} | {run['cpu_s_median']:.1f} | {run['passes_median']:.2f} "
            f"| {first['bytes_read'] / 1e9:.2f} "
            f"| {run['peak_rss_mb_max']:.0f} + {run['peak_rss_mb_workers_max']:.0f} "
            f"| {run['gflops_median']:.0f} | {run['gemm_rate_median']:.0f} "
            f"| {run['floor_s']:.3f} | {run['x_floor_median']:.2f} "
            f"| {f'{baseline:.2f} (max rel. diff {agree:.1e})' if baseline else '-'} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
