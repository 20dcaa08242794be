"""What the soft-label job runs on Beam workers: a ModelHandler for the teacher's seeded predictive.

Workers need only apache-beam, numpy, pyarrow, tensorflow and the SavedModel: this module imports
nothing else (not even `distill`), and the job registers it with Beam's pickler by value, so its
classes and functions travel inside the pipeline instead of being imported on the workers. Beam's
own TFModelHandlerNumpy goes through tf.keras.models.load_model, which cannot load a plain
tf.saved_model.save export (see ../shared/notes/stack.md); this handler uses tf.saved_model.load.

Rows stay columnar end to end: an element is an Arrow table (a row group of the transfer set), one
`predictive_seeded` call labels it, and the result is the same table with the outputs appended.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

PREDICTIVE_SIGNATURE = "predictive_seeded"


class PredictiveModelHandler(ModelHandler[Any, PredictionResult, Any]):
    """Arrow tables of transfer rows in; per table the teacher's S-draw posterior predictive out.

    One `predictive_seeded(features [B, F], num_samples, seed)` call per table. The seed is the job's:
    the export samples the same S weight draws for every row, so each row's soft label is a pure
    function of (row, S, seed), bit-identical whatever the runner or the batching. The model is
    loaded once per worker process (RunInference shares it across the process's threads).

    `output_names` picks the signature's outputs to keep (the task's outputs, distill.tasks).
    """

    def __init__(self, export_path: str, feature_names: Sequence[str], num_samples: int, seed: int,
                 output_names: Sequence[str]):
        super().__init__(min_batch_size=1, max_batch_size=1)  # an element is already a batch (a row group)
        self.export_path = str(export_path)
        self.feature_names = tuple(feature_names)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.output_names = tuple(output_names)

    def set_environment_vars(self) -> None:
        """Runs on the worker before the model loads."""
        import logging

        super().set_environment_vars()
        # Beam 2.77 thinks `resource` is missing when torch is (one shared try/import): drop that warning.
        logging.getLogger().addFilter(_quiet_resource_warning)

    def load_model(self) -> Any:
        import tensorflow as tf

        return tf.saved_model.load(self.export_path)

    def run_inference(self, batch: Sequence[Any], model: Any,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        import tensorflow as tf

        fn = model.signatures[PREDICTIVE_SIGNATURE]
        for table in batch:
            x = np.stack([table.column(f).to_numpy().astype(np.float32, copy=False) for f in self.feature_names], axis=1)
            out = fn(features=tf.constant(x), num_samples=tf.constant(self.num_samples, tf.int32),
                     seed=tf.constant(self.seed, tf.int64))  # [B, F] -> {name: [B] or [B, C]}
            yield PredictionResult(table, {k: out[k].numpy() for k in self.output_names}, self.export_path)

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum(t.nbytes for t in batch)

    def get_metrics_namespace(self) -> str:
        return "SoftLabels"


def _quiet_resource_warning(record) -> bool:
    return "Resource module is not available" not in str(record.msg)


def to_soft_label_table(result: PredictionResult, num_samples: int, arrow_schema):
    """A transfer table plus the teacher's predictive columns: one record batch of the soft-label dataset."""
    import pyarrow as pa

    table = result.example
    columns = {name: table.column(name) for name in table.column_names}
    for name, value in result.inference.items():
        value = np.ascontiguousarray(value, np.float32)
        if value.ndim == 2:  # [B, C] -> list<float>
            offsets = pa.array(np.arange(0, value.size + 1, value.shape[1], dtype=np.int32))
            columns[name] = pa.ListArray.from_arrays(offsets, pa.array(value.reshape(-1)))
        else:
            columns[name] = pa.array(value)
    columns["num_samples"] = pa.array(np.full(table.num_rows, num_samples, np.int32))
    return pa.Table.from_arrays([columns[f.name] for f in arrow_schema], schema=arrow_schema)
