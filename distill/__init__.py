"""Bayesian dark knowledge: the glue between teacher, soft labels and student.

TFP's layers are Keras 2 layers, so Keras 2 (tf_keras) must be chosen before the first
`import tensorflow` anywhere in the process; every package of the project imports this one first.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
