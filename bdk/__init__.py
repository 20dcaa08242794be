"""The application: the `bdk` command line, the whole pipeline, the evaluation and its report, and the studies.

It sits on top of the stages (teacher/, beam_pipelines/, student/, serving/), which sit on the foundation (distill/);
imports go one way, down (tests/test_layers.py).
"""
import distill  # noqa: F401  (Keras 2, quiet TensorFlow: before anything imports it)
