"""`bdk benchmark` on a tiny configuration: runs, report, goals, resumability."""
import pytest

from distill.errors import BdkError


def tiny():
    from bdk.evaluate import EvalConfig
    from bdk.studies.benchmark import BenchmarkConfig
    from distill.transfer import SoftLabelConfig, TransferConfig
    from student.config import StudentConfig
    from teacher.config import TeacherConfig

    return BenchmarkConfig(datasets=("iris",), seeds=1, kinds=("flipout",), teacher=TeacherConfig(epochs=4, members=2, eval_samples=10),
                           student=StudentConfig(gate=False, tflite=False, epochs=4, baseline_epochs=4),
                           soft_labels=SoftLabelConfig(TransferConfig(uniform=50, perturbations=1, interpolations=30, shell=30), samples=10),
                           evaluation=EvalConfig(samples=10, bootstrap=50, latency_calls=3), ablation=False,
                           doubling=False, student_ablation=False)


def test_benchmark_writes_a_report_and_resumes(tmp_path):
    from bdk.studies.benchmark import benchmark

    out = tmp_path / "bench"
    table = benchmark(tiny(), out, progress=False)
    assert set(table["model"]) == {"flipout teacher", "flipout student", "baseline", "baseline_ts"}
    assert (table["rows"] == 30).all()
    teacher = table.set_index("model").loc["flipout teacher"]
    assert 0.0 <= teacher["held_out_class_auroc"] <= 1.0 and 0.0 <= teacher["far_shell_auroc"] <= 1.0
    student = table.set_index("model").loc["flipout student"]  # the held-out-class pipeline distilled a student too
    assert 0.0 <= student["held_out_class_auroc_best"] <= 1.0 and student["kl_test"] >= 0 and student["parameter_ratio"] < 1
    lo, hi = teacher["test/nll_ci95"]
    assert lo <= teacher["test/nll"] <= hi
    report = (out / "report.md").read_text()
    assert "| iris | flipout teacher | 1 |" in report and "far-shell AUROC (MI) >= 0.90" in report
    assert "## The students against their teachers" in report and "iris (flipout): KL <= 0.005 on test:" in report
    from bdk.studies.benchmark import MISSED_WHY  # a tiny budget misses goals; the report points to why

    student_goals = report.split("## The students against their teachers")[1].split("\n## ")[0]
    assert ("MISSED" in student_goals) == (MISSED_WHY in student_goals)
    assert (out / "reliability_iris.png").stat().st_size > 1000
    run = out / "runs" / "iris" / "seed0" / "flipout" / "report" / "metrics.json"
    stamp = run.stat().st_mtime_ns
    again = benchmark(tiny(), out, progress=False)  # resumable: nothing is retrained
    assert run.stat().st_mtime_ns == stamp
    assert again["test/nll"].tolist() == table["test/nll"].tolist()
    only = benchmark(tiny(), out, progress=False, report_only=True)
    assert only["test/nll"].tolist() == table["test/nll"].tolist()


def test_benchmark_refuses_unknown_datasets_and_kinds():
    from bdk.studies.benchmark import BenchmarkConfig

    with pytest.raises(BdkError, match="boston"):
        BenchmarkConfig(datasets=("boston",))  # a regression dataset is not in the classification suite
    with pytest.raises(BdkError, match="kinds"):
        BenchmarkConfig(kinds=("gp",))


def test_benchmark_refuses_to_resume_runs_of_other_code_or_settings(tmp_path):
    """A resumed benchmark reads finished runs back; runs made before a change of code or of a run's settings (e.g. a
    new default head) would be mixed into the report with the new ones, so it refuses with one line instead."""
    from dataclasses import replace

    from bdk.studies.benchmark import check_resume, source_digest

    cfg, out = tiny(), tmp_path / "bench"
    (out / "runs").mkdir(parents=True)
    check_resume(cfg, out)  # records the stamp
    check_resume(cfg, out)  # same code, same settings: resumes
    check_resume(replace(cfg, datasets=("iris", "wine"), seeds=2, ablation=True), out)  # more runs of the same kind: fine
    with pytest.raises(BdkError, match=r"the code changed.*new --out"):
        check_resume(cfg, out, digest="0" * 64)
    with pytest.raises(BdkError, match="the student changed"):
        check_resume(replace(cfg, student=replace(cfg.student, uncertainty="dirichlet")), out)
    assert len(source_digest()) == 64 and source_digest() == source_digest()
