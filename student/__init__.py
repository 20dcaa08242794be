"""Stage 3: the compact deterministic student distilled from the teacher's soft labels."""
import distill  # noqa: F401  (selects Keras 2 before TensorFlow loads)
