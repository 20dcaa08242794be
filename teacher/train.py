"""Stage 1 entry point: train the Flipout teacher by Bayes by Backprop, evaluate it, export it."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras as tfk

from distill import data as data_lib
from distill import metrics, schema
from distill.errors import atomic_dir, write_json
from distill.training import fit, minibatches
from teacher.export import flipout_module
from teacher.config import TeacherConfig
from teacher.model import build_flipout


def training_device() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    return "/GPU:0" if gpus else "/CPU:0"


def _prediction_frame(split: data_lib.Split, summary: dict[str, np.ndarray], class_names: list[str]) -> pd.DataFrame:
    df = pd.DataFrame({"id": split.ids, "true_class": [class_names[i] for i in split.y],
                       "predicted_class": [class_names[i] for i in summary["probs"].argmax(-1)]})
    for c, name in enumerate(class_names):
        df[f"prob_{name}"] = summary["probs"][:, c]
    for c, name in enumerate(class_names):
        df[f"variance_{name}"] = summary["variance"][:, c]
    for key in ("entropy", "expected_entropy", "mutual_information"):
        df[key] = summary[key]
    return df


def train_teacher(cfg: TeacherConfig, ds: data_lib.Dataset, run: Path, progress: bool = True) -> dict:
    """Train, evaluate and export; write RUN/teacher atomically. Returns the metrics summary."""
    tfk.utils.set_random_seed(cfg.seed)
    device = training_device()
    x_train, y_train = ds.scaled("train"), ds["train"].y
    x_val, y_val = ds.scaled("val"), ds["val"].y
    n = len(y_train)
    with tf.device(device):
        model = build_flipout(ds.num_features, ds.num_classes, n, cfg.hidden, cfg.kl_weight, cfg.posterior, cfg.prior)
        module = flipout_module(model, ds.scaler.minimum, ds.scaler.scale, ds.num_classes, cfg.serving_samples)
        optimizer = tfk.optimizers.Adam(cfg.learning_rate)

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                logits = model(x, training=True)  # [batch, C], one weight draw
                nll = tf.reduce_mean(tfk.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
                kl = tf.add_n(model.losses)  # kl_weight * KL / N_train, summed over layers
                loss = nll + kl
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
            return nll, kl

        def train_epoch(rng):
            nlls, kls, sizes = [], [], []
            for idx in minibatches(n, cfg.batch_size, rng):
                nll, kl = step(tf.constant(x_train[idx]), tf.constant(y_train[idx]))
                nlls.append(float(nll)), kls.append(float(kl)), sizes.append(len(idx))
            train_nll, kl = np.average(nlls, weights=sizes), float(np.mean(kls))
            return {"train_nll": train_nll, "kl": kl, "elbo": -(train_nll + kl)}

        def validate():
            s = {k: v.numpy() for k, v in module.predictive_scaled(tf.constant(x_val), cfg.val_samples).items()}
            return {"val_nll": metrics.nll(s["probs"], y_val), "val_accuracy": metrics.accuracy(s["probs"], y_val),
                    "val_entropy": float(s["entropy"].mean()), "val_mutual_information": float(s["mutual_information"].mean())}

        t0 = time.perf_counter()
        result = fit(model, train_epoch, validate, "val_nll", cfg.epochs, cfg.patience, cfg.seed, "teacher", progress)
        train_seconds = time.perf_counter() - t0

        summaries = {}
        for split in data_lib.SPLITS:
            out = module.predictive_scaled(tf.constant(ds.scaled(split)), cfg.eval_samples)
            summaries[split] = {k: v.numpy() for k, v in out.items()}

    summary: dict = {"device": device, "epochs_run": len(result.history), "best_epoch": result.best_epoch,
                     "train_seconds": train_seconds, "eval_samples": cfg.eval_samples}
    for split in ("val", "test"):
        summary.update(metrics.classification_metrics(summaries[split]["probs"], ds[split].y, split))
        summary[f"{split}/mean_entropy"] = float(summaries[split]["entropy"].mean())
        summary[f"{split}/mean_mutual_information"] = float(summaries[split]["mutual_information"].mean())
    all_probs = np.concatenate([summaries[s]["probs"] for s in data_lib.SPLITS])
    all_mi = np.concatenate([summaries[s]["mutual_information"] for s in data_lib.SPLITS])
    a, b, share = metrics.most_uncertain_pair(all_probs, all_mi, ds.class_names)
    summary["most_uncertain_pair"] = [a, b]
    summary["most_uncertain_pair_share"] = share

    teacher_dir = schema.teacher_dir(run)
    with atomic_dir(teacher_dir, overwrite=True) as tmp:
        write_json(tmp / "config.json", {"teacher": asdict(cfg), "n_train": n, "num_features": ds.num_features,
                                         "num_classes": ds.num_classes, "device": device})
        result.history.to_csv(tmp / "history.csv", index=False)
        for split in ("val", "test"):
            _prediction_frame(ds[split], summaries[split], ds.class_names).to_csv(tmp / f"{split}_predictions.csv", index=False)
        model.save_weights(str(tmp / "weights" / "ckpt"))
        module.save(tmp / "export" / schema.EXPORT_VERSION)
        write_json(tmp / "metrics.json", summary)
    return summary
