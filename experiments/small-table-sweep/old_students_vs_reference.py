"""The previous suite's students (commit b1ebe7c: 2,000 interpolations, 10 copies, 100 draws) scored as the evaluation now
scores them: the far shell's KL and Spearman against the teacher's 2,000-draw reference, the test KL. Usage:
    .venv/bin/python experiments/small-table-sweep/old_students_vs_reference.py   # reads /tmp/suite-shell/runs
"""
import numpy as np, glob
import distill
from pathlib import Path
from bdk.evaluate import EvalConfig, Exports, ood_inputs, evaluated_dataset, REFERENCE_SEED
from distill import tasks, metrics
from collections import defaultdict
out = defaultdict(list)
for d in ("iris", "wine", "breast_cancer", "digits"):
    for seed in (0, 1, 2):
        for kind in ("flipout", "ensemble"):
            run = Path(f"/tmp/suite-shell/runs/{d}/seed{seed}/{kind}")
            if not run.exists(): continue
            cfg = EvalConfig(seed=seed)
            ds = evaluated_dataset(cfg, run)
            task = tasks.get(ds.task)
            ex = Exports(run, 100, task, seed)
            x = ood_inputs(cfg, ds)
            r = ex.predict("teacher", x, 2000, seed + REFERENCE_SEED); s = ex.predict("student", x)
            te = ex.predict("student", ds["test"].x); tt = ex.predict("teacher", ds["test"].x)
            out[(d, kind)].append((float(task.divergence(r, s).mean()), metrics.spearman(r["epistemic"], s["epistemic"]), float(task.divergence(tt, te).mean())))
for k, v in out.items():
    v = np.array(v); print(k, len(v), "old student far-shell KL vs ref %.4f, spearman vs ref %.3f, test KL %.4f" % tuple(v.mean(0)))
