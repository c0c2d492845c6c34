"""Child process of the TVM builder: MetaSchedule tuning of one Relax module.

Run as ``python -m infleet.runtime.builders.tvm_tune SPEC.json`` (prepared graphs per batch
size, target, database directory, trials; written by the TVM builder).
It lives in its own process because a tuning crash (seen: SIGSEGV) must not take the build
down; the parent applies whatever the JSON database in DB_DIR holds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    import tvm
    from tvm import relax
    from tvm.relax import transform
    from tvm.s_tir import meta_schedule as ms

    from infleet.runtime.builders.tvm import import_module

    mod = import_module({int(b): (p, s) for b, (p, s) in spec["prepared"].items()})
    target = tvm.target.Target(spec["target"])
    db_dir, trials = spec["db"], spec["trials"]
    with target:
        mod = tvm.transform.Sequential(
            [
                transform.DecomposeOpsForInference(),
                transform.CanonicalizeBindings(),
                relax.get_pipeline("zero"),
            ]
        )(mod)
    n = int(trials)
    # The random cost model needs no xgboost (a 200 MB dependency); with small budgets the
    # evolutionary search gains little from a learned model anyway.
    ms.relax_integration.tune_relax(
        mod,
        params={},
        target=target,
        work_dir=db_dir,
        max_trials_global=n,
        num_trials_per_iter=min(16, n),
        cost_model="random",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
