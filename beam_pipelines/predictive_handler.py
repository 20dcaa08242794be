"""What the soft-label job runs on Beam workers: a ModelHandler for the teacher's `predictive` signature.

Workers need only apache-beam, numpy, tensorflow and the SavedModel: this module imports nothing
else (not even `distill`), and the job registers it with Beam's pickler by value, so its classes and
functions travel inside the pipeline instead of being imported on the workers. Beam's own
TFModelHandlerNumpy goes through tf.keras.models.load_model, which cannot load a plain
tf.saved_model.save export (see ../shared/notes/stack.md); this handler uses tf.saved_model.load.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

PREDICTIVE_SIGNATURE = "predictive"


class PredictiveModelHandler(ModelHandler[dict, PredictionResult, Any]):
    """Rows (dicts with raw feature values) in; per row the teacher's S-draw posterior predictive out.

    One `predictive(features [B, F], num_samples)` call per batch: the export draws S independent
    weight samples in a tf.while_loop, one batched forward pass each. The model is loaded once per
    worker process (RunInference shares it across the process's threads).

    `output_names` picks the signature's outputs to keep (classifier: probs [B, C], variance [B, C],
    entropy, expected_entropy, mutual_information [B]; regression: mean, variance,
    epistemic_variance [B]); None keeps every output the signature returns.
    """

    def __init__(self, export_path: str, feature_names: Sequence[str], num_samples: int, batch_size: int = 16_384,
                 output_names: Optional[Sequence[str]] = None):
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self.export_path = str(export_path)
        self.feature_names = tuple(feature_names)
        self.num_samples = int(num_samples)
        self.output_names = tuple(output_names) if output_names is not None else None

    def set_environment_vars(self) -> None:
        """Runs on the worker before the model loads."""
        import logging

        super().set_environment_vars()
        # Beam 2.77 thinks `resource` is missing when torch is (one shared try/import): drop that warning.
        logging.getLogger().addFilter(_quiet_resource_warning)

    def load_model(self) -> Any:
        import tensorflow as tf

        return tf.saved_model.load(self.export_path)

    def run_inference(self, batch: Sequence[dict], model: Any,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        import tensorflow as tf

        x = np.array([[row[f] for f in self.feature_names] for row in batch], dtype=np.float32)  # [B, F]
        out = model.signatures[PREDICTIVE_SIGNATURE](features=tf.constant(x),
                                                    num_samples=tf.constant(self.num_samples, tf.int32))
        # Python lists per batch, not numpy per row: the per-row cost is what Beam adds to the model's.
        columns = {k: out[k].numpy().tolist() for k in (self.output_names or sorted(out))}
        for i, row in enumerate(batch):
            yield PredictionResult(row, {k: v[i] for k, v in columns.items()}, self.export_path)

    def get_num_bytes(self, batch: Sequence[dict]) -> int:
        # The default pickles the whole batch just to count bytes for metrics; an estimate is enough.
        return len(batch) * 8 * (len(self.feature_names) + 4)

    def get_metrics_namespace(self) -> str:
        return "SoftLabels"


def _quiet_resource_warning(record) -> bool:
    return "Resource module is not available" not in str(record.msg)


def to_soft_label_row(result: PredictionResult, num_samples: int) -> dict:
    """A transfer row plus the teacher's predictive: one row of the soft-label dataset."""
    return {**result.example, **result.inference, "num_samples": num_samples}
