"""Run by test_analyze_store.py in a subprocess: analyse a store, report peak memory.

Usage: python out_of_core_worker.py STORE ROWS_PER_BLOCK
Prints one JSON line: the peak resident set size (VmHWM) and NC1.
"""

import json
import sys

import ncanalysis


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    result = ncanalysis.analyze(sys.argv[1], rows_per_block=int(sys.argv[2]))
    print(json.dumps({"peak_rss": peak_rss_bytes(), "nc1": float(result.nc1[0, 0])}))
