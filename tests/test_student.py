"""Stage 3 pieces: distillation losses against hand-computed values, the epistemic target, the gate."""
import numpy as np
import pytest
import tensorflow as tf

from student.config import StudentConfig
from student.losses import distillation_loss, epistemic_loss, hard_cross_entropy, soft_cross_entropy
from student.model import build_student
from student.train import check_gate


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


Q = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], np.float32)
Z = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]], np.float32)


def test_soft_cross_entropy_by_hand():
    expected = -(Q * np.log(_softmax(Z))).sum(-1).mean()
    assert float(soft_cross_entropy(Q, Z)) == pytest.approx(expected, rel=1e-5)
    # T = 2: both sides softened, teacher q^(1/T) renormalised, times T^2
    q2 = Q ** 0.5 / (Q ** 0.5).sum(-1, keepdims=True)
    expected2 = 4 * -(q2 * np.log(_softmax(Z / 2))).sum(-1).mean()
    assert float(soft_cross_entropy(Q, Z, temperature=2.0)) == pytest.approx(expected2, rel=1e-5)


def test_soft_cross_entropy_is_minimised_by_the_teacher():
    at_teacher = float(soft_cross_entropy(Q, np.log(Q)))
    entropy = -(Q * np.log(Q)).sum(-1).mean()
    assert at_teacher == pytest.approx(entropy, rel=1e-5)  # CE = H(q) + KL(q||p) with KL = 0
    assert float(soft_cross_entropy(Q, Z)) > at_teacher


def test_hard_label_term_masks_unlabelled_rows_and_alpha_mixes():
    y = np.array([0, -1], np.int64)
    ce0 = -np.log(_softmax(Z)[0, 0])
    assert float(hard_cross_entropy(y, Z)) == pytest.approx(ce0, rel=1e-5)
    assert float(hard_cross_entropy(np.array([-1, -1]), Z)) == 0.0
    soft = float(soft_cross_entropy(Q, Z))
    assert float(distillation_loss(Q, y, Z, alpha=0.25)) == pytest.approx(0.75 * soft + 0.25 * ce0, rel=1e-5)


def test_epistemic_loss_and_head():
    assert float(epistemic_loss(np.array([1.0, 3.0], np.float32), np.array([0.0, 1.0], np.float32))) == pytest.approx(2.5)
    model = build_student(4, 3, (8,))
    out = model(tf.random.uniform((5, 4)))
    assert out["logits"].shape == (5, 3) and out["epistemic"].shape == (5,)
    assert (out["epistemic"].numpy() >= 0).all()  # softplus head


def test_gate_compares_with_margins():
    teacher = {"val/nll": 0.20, "val/ece": 0.05}
    good = {"val/nll": 0.22, "val/ece": 0.06}
    bad = {"val/nll": 0.40, "val/ece": 0.20}
    cfg = StudentConfig(gate_nll_margin=0.05, gate_ece_margin=0.05)
    assert check_gate(cfg, good, teacher) == []
    failures = check_gate(cfg, bad, teacher)
    assert len(failures) == 2 and "NLL" in failures[0] and "ECE" in failures[1]
    assert check_gate(StudentConfig(gate_nll_margin=1, gate_ece_margin=1), bad, teacher) == []
