"""`make bench`: every benchmark, one after the other, each printing its own table.

A benchmark shares the machine's cores with nothing else while it runs: they are run in
sequence, never in parallel. Any one can also be run alone (`python -m bench.<name> --help`).

    .venv/bin/python bench/run_all.py [names…]     # default: all
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHES = ["containers", "realtime", "api", "vms", "placement"]  # vms includes order_flow's row


def main(argv: list[str]) -> int:
    names = argv or [n for n in BENCHES if (REPO / "bench" / f"{n}.py").exists()]
    failed = []
    for name in names:
        print(f"\n=== bench/{name}.py  (load average before: {os.getloadavg()[0]:.2f}) ===", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"bench.{name}"], cwd=REPO)
        print(f"=== bench/{name}.py finished in {time.monotonic() - started:.0f} s, exit {code} ===",
              flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
