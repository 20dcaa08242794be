"""Stage 1: the Flipout teacher (Bayes by Backprop) and its Monte Carlo SavedModel export."""
import distill  # noqa: F401  (selects Keras 2 before TensorFlow loads)
