"""results.jsonl -> the tables of transfer-sweep.md: every run, then per variant the mean over transfer seeds and the
mean difference to the default at the same transfer seed (validation figures only)."""
import json
import sys
from collections import defaultdict
from pathlib import Path

ORDER = ["default", "nb-2000", "random-0.5", "nb-0.1", "nb-0.5", "nb-2.0"]
here = Path(__file__).parent
rows = [json.loads(line) for line in (here / "results.jsonl").read_text().splitlines() if line.strip()]
for r in rows:
    base, _, seed = r["variant"].partition("-seed")
    r["base"], r["seed"] = base, int(seed or 0)
rows.sort(key=lambda r: (r["size"], ORDER.index(r["base"]), r["seed"]))
out = ["| variant | size | transfer seed | interpolated rows | transfer rows | val NLL | val accuracy | student epochs (best) "
       "| `bdk soft-labels` options |", "|---|---|---|---|---|---|---|---|---|"]
groups = defaultdict(dict)
for r in rows:
    groups[(r["size"], r["base"])][r["seed"]] = r
    out.append(f"| {r['base']} | {r['size']:,} | {r['seed']} | {r['rows_per_source']['interpolated']:,} | "
               f"{sum(r['rows_per_source'].values()):,} | {r['student/val/nll']:.4f} | {r['student/val/accuracy']:.4f} | "
               f"{r['epochs_run']} ({r['best_epoch']}) | `{r['options'] or '(defaults)'}` |")
out += ["", "| variant | size | seeds | mean val NLL | min - max | minus the default, same seeds | mean val accuracy | "
        "teacher val NLL |", "|---|---|---|---|---|---|---|---|"]
for (size, base), by_seed in groups.items():
    nll = [r["student/val/nll"] for r in by_seed.values()]
    acc = [r["student/val/accuracy"] for r in by_seed.values()]
    default = groups[(size, "default")]
    diffs = [r["student/val/nll"] - default[s]["student/val/nll"] for s, r in by_seed.items() if s in default]
    gap = "" if base == "default" else f"{sum(diffs) / len(diffs):+.4f} (" + ", ".join(f"{d:+.4f}" for d in diffs) + ")"
    out.append(f"| {base} | {size:,} | {len(nll)} | {sum(nll) / len(nll):.4f} | {min(nll):.4f} - {max(nll):.4f} | {gap} | "
               f"{sum(acc) / len(acc):.4f} | {next(iter(by_seed.values()))['teacher_val_nll']:.4f} |")
sys.stdout.write("\n".join(out) + "\n")
