"""Scaling benchmark (prints figures; not a test): `bdk` stage by stage at growing data sizes.

    .venv/bin/python bench/bench_scaling.py --sizes 10000,100000,1000000 --out experiments/scaling

For each size: bench/make_synthetic.py's problem (make_classification, 50 features, 10 classes; generated
under --data-dir if absent), then `bdk teacher`, `bdk soft-labels`, `bdk student` and `bdk evaluate`, each in
its own process with the defaults, so that its wall time and peak RSS (ru_maxrss of the stage's process and
its children, from wait4) are its own. The student runs with --no-gate (this measures cost and quality; the
table gives the NLLs the gate compares). Writes results.json, scaling.md and scaling.png (log-log) to --out
and prints the table. Goals (issue 24), at every size: student test accuracy >= teacher's - 1 point and test NLL
<= teacher's + 0.02; teacher NLL <= the hard-label baseline's + 0.02 (the baseline has the student's widths, by
default the teacher's: a plain network of the teacher's architecture); student accuracy >= the baseline's. At 1M rows:
the whole pipeline under 10 minutes and 3 GB; every stage's peak RSS growing < 20% from 100k to 1M.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BDK = str(Path(sys.executable).with_name("bdk"))
STAGES = ("teacher", "soft-labels", "student", "evaluate")
GOAL_MINUTES, GOAL_RSS_GB, GOAL_RSS_GROWTH = 10, 3.0, 0.20
GOAL_ACCURACY_GAP, GOAL_NLL_GAP = 0.01, 0.02  # student vs teacher; teacher vs the plain network (NLL)
MODELS = ("teacher", "student", "baseline", "baseline_ts")


def timed(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MB, exit code) of one command and its children."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "MPLBACKEND": "Agg"})
        _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - t0, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def run_size(rows: int, data_dir: Path, out: Path) -> dict:
    data = data_dir / f"synthetic-{rows}.parquet"
    if not data.exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "make_synthetic.py"), "--rows", str(rows), "--out", str(data)],
                       check=True)
    run = data_dir / f"run-{rows}"
    commands = {"teacher": ["teacher", "--dataset", str(data), "--out", str(run), "--overwrite"],  # --seed 0
                "soft-labels": ["soft-labels", "--run", str(run)], "student": ["student", "--run", str(run), "--no-gate"],
                "evaluate": ["evaluate", "--run", str(run)]}
    result = {"rows": rows, "stages": {}}
    for i, stage in enumerate(STAGES):
        done = out / f"{rows}-{stage}.json"  # resumable: a stage measured once is kept (delete its json to redo it)
        if done.exists() and all((out / f"{rows}-{s}.json").exists() for s in STAGES[:i]):
            result["stages"][stage] = json.loads(done.read_text())
            continue
        for later in STAGES[i:]:  # a stage redone invalidates the stages after it
            (out / f"{rows}-{later}.json").unlink(missing_ok=True)
        wall, rss, code = timed([BDK, *commands[stage], "--no-progress"], out / f"{rows}-{stage}.log")
        result["stages"][stage] = {"seconds": wall, "peak_rss_mb": rss}
        print(f"{rows:>9} {stage:<12} {wall:8.1f} s {rss:8.0f} MB", flush=True)
        if code != 0:
            raise SystemExit(f"{stage} at {rows} rows failed (exit {code}); see {out / f'{rows}-{stage}.log'}")
        done.write_text(json.dumps(result["stages"][stage]))
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    result.update({m: metrics[m]["test/accuracy"] for m in MODELS if m in metrics})
    result.update({f"{m}_{split}_nll": metrics[m][f"{split}/nll"] for m in MODELS if m in metrics for split in ("val", "test")})
    student = json.loads((run / "student" / "metrics.json").read_text())
    result["student_hidden"], result["teacher_hidden"] = student.get("hidden"), json.loads(
        (run / "teacher" / "config.json").read_text())["teacher"].get("hidden")
    result["student_epochs"], result["student_improving_at_cap"] = student.get("epochs_run"), student.get("improving_at_cap")
    result["transfer_rows"] = json.loads((run / "soft_labels" / "manifest.json").read_text()).get("rows")
    return result


def totals(result: dict) -> tuple[float, float]:
    """(minutes over all stages, the largest stage's peak RSS in GB) of one size's result."""
    stages = result["stages"].values()
    return sum(v["seconds"] for v in stages) / 60, max(v["peak_rss_mb"] for v in stages) / 1024


def write(results: list[dict], out: Path, data_dir: Path) -> str:
    lines = ["| rows | " + " | ".join(f"{s} s / MB" for s in STAGES) + " | total min | peak GB | widths T / S | test acc T / S / B / B+TS "
             "| test NLL T / S / B / B+TS |", "|" + "---|" * (len(STAGES) + 6)]
    checks = []
    for r in results:
        st = r["stages"]
        total, peak = totals(r)
        lines.append(f"| {r['rows']:,} | " + " | ".join(f"{st[s]['seconds']:.0f} / {st[s]['peak_rss_mb']:.0f}" for s in STAGES)
                     + f" | {total:.1f} | {peak:.2f} | {r.get('teacher_hidden')} / {r.get('student_hidden')} | "
                     + " / ".join(f"{r[m]:.3f}" for m in MODELS if m in r) + " | "
                     + " / ".join(f"{r[m + '_test_nll']:.3f}" for m in MODELS if m + "_test_nll" in r) + " |")
        acc_gap, nll_gap = r["student"] - r["teacher"], r["student_test_nll"] - r["teacher_test_nll"]
        plain_gap = r["teacher_test_nll"] - r["baseline_test_nll"]
        verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
        checks.append(f"- {r['rows']:,} rows: student - teacher accuracy {acc_gap:+.3f} (goal >= -{GOAL_ACCURACY_GAP}: "
                      f"{verdict(acc_gap >= -GOAL_ACCURACY_GAP)}), NLL {nll_gap:+.3f} (goal <= +{GOAL_NLL_GAP}: "
                      f"{verdict(nll_gap <= GOAL_NLL_GAP)}); teacher - plain network NLL {plain_gap:+.3f} (goal <= "
                      f"+{GOAL_NLL_GAP}: {verdict(plain_gap <= GOAL_NLL_GAP)}); student - baseline accuracy "
                      f"{r['student'] - r['baseline']:+.3f} (goal >= 0: {verdict(r['student'] >= r['baseline'])})")
    big = max(results, key=lambda r: r["rows"])
    total, peak = totals(big)
    checks.append(f"- at {big['rows']:,} rows: {total:.1f} min (goal < {GOAL_MINUTES}), peak {peak:.2f} GB (goal < {GOAL_RSS_GB})")
    by_rows = {r["rows"]: r for r in results}
    if 100_000 in by_rows and 1_000_000 in by_rows:
        for stage in STAGES:
            a, b = (by_rows[n]["stages"][stage]["peak_rss_mb"] for n in (100_000, 1_000_000))
            checks.append(f"- {stage} peak RSS 100k -> 1M: {a:.0f} -> {b:.0f} MB ({b / a - 1:+.0%}; goal < +{GOAL_RSS_GROWTH:.0%})")
    text = "\n".join(["# Scaling: `bdk` stages on make_classification (50 features, 10 classes)", "",
                      "`.venv/bin/python bench/bench_scaling.py --sizes " + ",".join(str(r["rows"]) for r in results)
                      + f" --data-dir {data_dir} --out {out}` on a 2-core machine; each stage its own process (peak RSS its own).", "",
                      *lines, "", *checks, ""])
    (out / "scaling.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=2))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rows = [r["rows"] for r in results]
    for stage in STAGES:
        axes[0].plot(rows, [r["stages"][stage]["seconds"] for r in results], "o-", label=stage)
        axes[1].plot(rows, [r["stages"][stage]["peak_rss_mb"] for r in results], "o-", label=stage)
    for ax, label in zip(axes, ("wall time (s)", "peak RSS (MB)")):
        ax.set(xscale="log", yscale="log", xlabel="rows", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle("bdk stages vs data size (2 CPU cores)")
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=120)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/bdk-scaling"))
    parser.add_argument("--out", type=Path, default=Path("experiments/scaling"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for rows in map(int, args.sizes.split(",")):
        results.append(run_size(rows, args.data_dir, args.out))
        print(write(results, args.out, args.data_dir))


if __name__ == "__main__":
    main()
