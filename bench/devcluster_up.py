"""How long the local control plane takes to come up, and how much memory it holds.

    .venv/bin/python bench/devcluster_up.py [--profiles dev,large]

Baseline in the same run: the `dev` profile (13 nodes), then each further profile; prints the
time to all-nodes-Ready and the resident memory of every component. Numbers only, no pass/fail.
Needs the binaries (`infleet dev tools`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from infleet.devcluster import fleet, tools
from infleet.devcluster.cluster import LocalCluster
from infleet.toolbox import rss_kib


def measure(profile_name: str, settle: float) -> None:
    profile = fleet.load_profile(profile_name)
    with tempfile.TemporaryDirectory(prefix=f"infleet-bench-{profile_name}-") as tmp:
        cluster = LocalCluster(Path(tmp), tools.locate(), profile, name=f"bench-{profile_name}",
                               die_with_parent=True)
        started = time.monotonic()
        cluster.start(timeout=1200)
        up = time.monotonic() - started
        time.sleep(settle)  # memory after the first heartbeats, not at the peak of creation
        rss = {c: rss_kib(pid) / 1024 for c, pid in cluster.state.pids.items()}
        cluster.stop()
    parts = ", ".join(f"{c} {v:.0f}" for c, v in rss.items())
    print(f"{profile_name:>6}: {profile.node_count():>5} nodes / {len(profile.classes):>2} classes "
          f"Ready in {up:6.1f}s; RSS {sum(rss.values()):6.0f} MiB ({parts})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="dev,large")
    parser.add_argument("--settle", type=float, default=15.0)
    args = parser.parse_args()
    names = args.profiles.split(",")
    if names[0] != "dev":
        names.insert(0, "dev")  # the baseline
    for name in names:
        measure(name, args.settle)


if __name__ == "__main__":
    main()
