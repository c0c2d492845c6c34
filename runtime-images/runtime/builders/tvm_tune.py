"""Child process of the TVM builder: MetaSchedule tuning of one Relax module.

Run as ``python -m infleet.runtime.builders.tvm_tune MODULE.json TARGET_JSON DB_DIR TRIALS``.
It lives in its own process because a tuning crash (seen: SIGSEGV) must not take the build
down; the parent applies whatever the JSON database in DB_DIR holds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    mod_file, target_json, db_dir, trials = argv
    import tvm
    from tvm import relax
    from tvm.relax import transform
    from tvm.s_tir import meta_schedule as ms

    mod = tvm.ir.load_json(Path(mod_file).read_text())
    target = tvm.target.Target(json.loads(target_json))
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
