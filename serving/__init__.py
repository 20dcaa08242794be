"""Serving: a TF Serving-compatible REST server and batch prediction over any export of the pipeline."""
import distill  # noqa: F401  (selects Keras 2 before TensorFlow loads)
