"""Stage 2: Apache Beam jobs (the soft-label job) that need only a SavedModel on their workers."""
import distill  # noqa: F401  (selects Keras 2 before TensorFlow loads)
