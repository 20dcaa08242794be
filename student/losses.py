"""Distillation losses (TensorFlow, per batch)."""
from __future__ import annotations

import tensorflow as tf


def soft_cross_entropy(teacher_probs: tf.Tensor, student_logits: tf.Tensor, temperature: float = 1.0) -> tf.Tensor:
    """T^2 * mean_n [ -sum_c q_c log softmax(z / T)_c ],  q = teacher_probs^(1/T) renormalised.

    At T = 1 this is the cross-entropy to the teacher's posterior predictive (Bayesian dark
    knowledge); T > 1 softens both sides and the T^2 keeps gradient scales comparable (Hinton et al.).
    """
    t = tf.constant(temperature, tf.float32)
    log_q = tf.math.log(tf.clip_by_value(teacher_probs, 1e-12, 1.0)) / t  # [B, C]
    q = tf.nn.softmax(log_q, axis=-1)
    log_p = tf.nn.log_softmax(student_logits / t, axis=-1)  # [B, C]
    return t * t * tf.reduce_mean(-tf.reduce_sum(q * log_p, axis=-1))


def hard_cross_entropy(labels: tf.Tensor, student_logits: tf.Tensor) -> tf.Tensor:
    """Mean cross-entropy over the rows that have a label (label >= 0); 0 if none do."""
    mask = tf.cast(labels >= 0, tf.float32)  # [B]
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.maximum(labels, 0), student_logits)
    return tf.reduce_sum(ce * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def distillation_loss(teacher_probs, labels, student_logits, temperature: float = 1.0, alpha: float = 0.0) -> tf.Tensor:
    """(1 - alpha) * soft + alpha * hard."""
    soft = soft_cross_entropy(teacher_probs, student_logits, temperature)
    if alpha == 0.0:
        return soft
    return (1.0 - alpha) * soft + alpha * hard_cross_entropy(labels, student_logits)


def epistemic_loss(target: tf.Tensor, predicted: tf.Tensor) -> tf.Tensor:
    """Mean squared error between the (normalised) teacher mutual information and the head."""
    return tf.reduce_mean(tf.square(target - predicted))
