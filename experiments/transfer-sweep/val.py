"""One line of results.jsonl from RUN/student/metrics.json: the validation figures only (test keys are never read out)."""
import json
import sys

run, size, name, soft_s, student_s, opts = sys.argv[1:7]
m = json.load(open(f"{run}/student/metrics.json"))
val = {k: m[k] for k in m if "/val/" in k}
print(json.dumps({"size": int(size), "variant": name, "options": opts, "soft_s": int(soft_s), "student_s": int(student_s),
                  "rows_per_source": m["rows_per_source"], "epochs_run": m["epochs_run"], "best_epoch": m["best_epoch"],
                  "teacher_val_nll": m["gate"]["teacher"]["val/nll"], **val}))
