"""Student SavedModel throughput by batch size, against the teacher's serving setting (prints figures; not a test).

    .venv/bin/python bench/bench_student_batches.py --run RUN [--other OTHER_STUDENT_EXPORT]

Calls the run's student `serving_default`, the teacher's `serving_default` (its serving draws) and, with --other, a
second student export (e.g. one saved by an earlier commit), timed in rounds as the report's cost table times them
(bdk.evaluate.batch_throughput: each model's turn once per round, the second of two calls timed); prints the median time per call and the teacher / student
ratio at each batch size, and the largest output difference between the two students.

With --parts it also times, in the same rounds, the student's dense network alone (its matmuls, biases and ReLUs,
rebuilt from the export's variables: what one teacher draw costs too) and its outputs alone (the student's epistemic
head's `serve`, student.uncertainty, on [batch, C] logits and [batch] scores: the Dirichlet's closed forms, or the
ratio head's entropy and share): where the student's time goes beside its FLOPs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import distill  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--other", type=Path, help="another student export (version folder) to compare with")
    p.add_argument("--batches", default="1,64,512,1024,4096")
    p.add_argument("--parts", action="store_true", help="also time the dense network alone and the outputs alone")
    a = p.parse_args()
    import tensorflow as tf

    from bdk.evaluate import batch_throughput
    from distill.schema import resolve_export

    load = lambda path: tf.saved_model.load(str(resolve_export(path)[0])).signatures["serving_default"]  # noqa: E731
    models = {"student": load(a.run / "student" / "export"), "teacher": load(a.run / "teacher" / "export")}
    if a.other:
        models["other"] = load(a.other)
    width = int(models["student"].structured_input_signature[1]["features"].shape[1])
    calls = {k: (lambda x, f=f: f(features=tf.constant(x))) for k, f in models.items()}
    if a.parts:
        network, classes = dense_chain(tf.saved_model.load(str(resolve_export(a.run / "student" / "export")[0])))
        calls["network"] = lambda x: network(tf.constant(x))
        head = json.loads((a.run / "student" / "metrics.json").read_text()).get("uncertainty", "dirichlet")
        outputs = outputs_call(classes, head)
        calls[f"{head} outputs"] = lambda x: outputs(x.shape[0])
    for batch in map(int, a.batches.split(",")):
        x = tf.constant(np.random.default_rng(0).standard_normal((batch, width)).astype(np.float32))
        outs = {k: {n: v.numpy() for n, v in f(features=x).items()} for k, f in models.items()}
        ms = {k: 1e3 * batch / rows_per_s for k, rows_per_s in batch_throughput(calls, (width,), batch).items()}
        line = f"batch {batch:5d}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items())
        line += f"; teacher / student {ms['teacher'] / ms['student']:.2f}x"
        if a.parts:
            line += f", teacher / network alone {ms['teacher'] / ms['network']:.2f}x"
        if a.other:
            diff = max(float(np.abs(outs["student"][n] - outs["other"][n]).max()) for n in outs["student"])
            line += f", teacher / other {ms['teacher'] / ms['other']:.2f}x, max output difference {diff:.1e}"
        print(line, flush=True)


def dense_chain(module):
    """The student export's dense network alone, from its variables: features [B, F] -> logits [B, C]; and C."""
    import tensorflow as tf

    v = {x.name.split(":")[0]: x for x in module.model_variables}
    hidden = sorted((k.split("/")[0] for k in v if k.startswith("hidden_") and k.endswith("/kernel")),
                    key=lambda n: int(n.split("_")[1]))

    @tf.function(input_signature=[tf.TensorSpec([None, v[hidden[0] + "/kernel"].shape[0]], tf.float32)])
    def network(x):
        for name in hidden:
            x = tf.nn.relu(x @ v[name + "/kernel"] + v[name + "/bias"])
        return x @ v["head/kernel"] + v["head/bias"]

    return network, int(v["head/kernel"].shape[1])


def outputs_call(classes: int, head: str):
    """rows -> the student's outputs from fixed logits [rows, C] and head scores [rows] (one tf.function), as the
    epistemic head `head` (student.uncertainty.HEADS) serves them."""
    import tensorflow as tf

    from distill import tasks
    from student.uncertainty import HEADS

    task = tasks.get("classification")
    f = tf.function(lambda logits, score: HEADS[head].serve(task, logits, score, 0.0, 1.0),
                    input_signature=[tf.TensorSpec([None, classes]), tf.TensorSpec([None])])
    inputs = {}

    def call(rows: int):
        if rows not in inputs:
            rng = np.random.default_rng(1)
            # a centred score is a logarithm (the Dirichlet's log-precision, log_regressor); the others are >= 0
            score = rng.normal(5, 2, rows) if HEADS[head].center_scores else rng.uniform(0, 1, rows)
            inputs[rows] = (tf.constant(rng.normal(0, 3, (rows, classes)).astype(np.float32)),
                            tf.constant(score.astype(np.float32)))
        return f(*inputs[rows])

    return call


if __name__ == "__main__":
    main()
