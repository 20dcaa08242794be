"""TFLite export: LiteRT's signature runner matches the SavedModel within 1e-5."""

import numpy as np
import pytest

OUTPUTS = {"regressor": {"probs", "entropy", "epistemic"}, "log_regressor": {"probs", "entropy", "epistemic"},
           "sqrt_regressor": {"probs", "entropy", "epistemic"},
           "dirichlet": {"probs", "entropy", "expected_entropy", "mutual_information", "epistemic"},
           "ratio": {"probs", "entropy", "expected_entropy", "mutual_information", "epistemic"}}


def save_keras_mlp(out, uncertainty="regressor"):
    """An untrained student built and exported by the project's own code (deterministic, scaling inside)."""
    import tf_keras as tfk

    from student.export import StudentModule
    from student.model import build_student
    from student.uncertainty import HEADS

    tfk.utils.set_random_seed(0)
    model = build_student(4, 3, (16, 16), epistemic_activation=HEADS[uncertainty].activation)
    from distill import tasks

    # the head's score scaling as training would set it: MI itself, log MI, sqrt MI, log-precision, the epistemic share
    scale, shift = {"regressor": (0.05, 0.0), "log_regressor": (1.0, -4.0), "sqrt_regressor": (0.2, 0.0),
                    "dirichlet": (2.0, 3.0), "ratio": (0.3, 0.0)}[uncertainty]
    return StudentModule(tasks.get("classification"), model, feature_shift=[4.3, 2.0, 1.0, 0.1],
                         feature_scale=[3.6, 2.4, 5.9, 2.4], epistemic_scale=scale, epistemic_shift=shift,
                         uncertainty=uncertainty,  # normalised inputs clamped (the rows below cross these bounds)
                         input_bounds=([-0.05, 0.0, 0.0, 0.0], [0.9, 1.0, 1.0, 1.0])).save(out)


@pytest.mark.parametrize("uncertainty", ["regressor", "log_regressor", "sqrt_regressor", "dirichlet", "ratio"])
def test_tflite_matches_saved_model(tmp_path, uncertainty):
    import tensorflow as tf

    from student.tflite import export_tflite

    export = save_keras_mlp(tmp_path / "export" / "1", uncertainty)
    out = tmp_path / "student.tflite"
    size = export_tflite(tmp_path / "export", out)  # base path: resolves the highest version
    assert size == out.stat().st_size > 0
    assert not list(tmp_path.glob(".student.tflite.tmp-*"))

    from ai_edge_litert.interpreter import Interpreter

    from student.tflite import litert_runner

    assert set(Interpreter(model_path=str(out)).get_signature_list()["serving_default"]["inputs"]) == {"features"}
    runner = litert_runner(out)  # the LiteRT interpreter, as a device would run it
    saved = tf.saved_model.load(str(export)).signatures["serving_default"]

    rng = np.random.default_rng(1)
    for batch in (1, 7, 32, 255, 256, 4097):  # the batch dimension stays dynamic; from 256 rows the SavedModel splits
        x = rng.uniform([4, 2, 1, 0], [8, 4.5, 7, 2.5], size=(batch, 4)).astype(np.float32)
        lite = runner(features=x)
        ref = {k: v.numpy() for k, v in saved(features=tf.constant(x)).items()}
        assert set(lite) == set(ref) == OUTPUTS[uncertainty]
        for k in OUTPUTS[uncertainty]:
            assert lite[k].shape == ref[k].shape
            np.testing.assert_allclose(lite[k], ref[k], atol=1e-5, rtol=0)


def test_tflite_missing_export_is_a_bdk_error(tmp_path):
    from distill.errors import BdkError
    from student.tflite import export_tflite

    with pytest.raises(BdkError, match="not found"):
        export_tflite(tmp_path / "nothing", tmp_path / "x.tflite")
    assert not (tmp_path / "x.tflite").exists()


def test_student_splits_large_batches_into_the_same_rows(tmp_path):
    """serving_default runs batches of PARALLEL_ROWS rows or more as two halves; each row's outputs are those of the
    one-chain function, for odd and even batches on both sides of the threshold."""
    import tensorflow as tf

    from student.export import PARALLEL_ROWS

    loaded = tf.saved_model.load(str(save_keras_mlp(tmp_path / "export" / "1", "dirichlet")))
    rng = np.random.default_rng(2)
    for batch in (1, PARALLEL_ROWS - 1, PARALLEL_ROWS, 2 * PARALLEL_ROWS + 1):
        x = tf.constant(rng.uniform([4, 2, 1, 0], [8, 4.5, 7, 2.5], size=(batch, 4)).astype(np.float32))
        split, whole = loaded.signatures["serving_default"](features=x), loaded.forward(x)
        for k in OUTPUTS["dirichlet"]:
            assert split[k].shape[0] == batch
            np.testing.assert_allclose(split[k].numpy(), whole[k].numpy(), atol=1e-6, rtol=0)
