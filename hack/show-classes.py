"""Print an InferenceDeployment's per-class status as a table: `kubectl get idep NAME -o json |
python hack/show-classes.py` (hack/try.sh uses it)."""

import json
import sys

body = json.load(sys.stdin)
status = body.get("status", {})
# RUNS: how the class's pods run: real (processes of this machine, or of a real node),
# emulated (real processes under qemu-user: real answers, nominal capacity), simulated (kwok:
# nothing runs, no traffic), "-" for an excluded class not known to be either.
columns = ["CLASS", "BACKEND", "PRECISION", "ENGINE", "RUNS", "REPLICAS", "READY", "WEIGHT",
           "WHY"]
rows = [columns]
for c in status.get("classes", []):
    engine = c.get("engine", {})
    state = "excluded" if c.get("excluded") else engine.get("state", "-")
    runs = ("emulated" if c.get("emulated") else "simulated" if c.get("simulated") else
            "-" if c.get("excluded") else "real")
    rows.append([c["name"], c.get("backend") or "-", c.get("precision") or "-", state,
                 runs, str(c.get("replicas", 0)),
                 str(c.get("readyReplicas", 0)), str(c.get("weight", 0)),
                 (c.get("reason") or "")[:70]])
widths = [max(len(r[i]) for r in rows) for i in range(len(columns) - 1)]
for r in rows:
    print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1])
for cond in status.get("conditions", []):
    print(f"{cond['type']}={cond['status']} ({cond.get('reason', '')}): {cond.get('message', '')}")
