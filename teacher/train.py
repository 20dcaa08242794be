"""Stage 1 entry point: train the teacher, evaluate it by Monte Carlo, export it.

The default family is the Flipout BNN (Bayes by Backprop); a deep ensemble and MC dropout sit
behind the same export contract, so the soft-label job and the student run unchanged on each, for
either task (distill.tasks).
"""
from __future__ import annotations

import gc
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras as tfk

from distill import data as data_lib
from distill import metrics, schema, tasks
from distill.errors import atomic_dir, write_csv, write_json
from distill.training import FitResult, fit, graph_epoch, host_tensor, in_chunks, steps_per_epoch
from distill.transfer import FAR_SHELL_INNER, FAR_SHELL_OUTER, FAR_SHELL_ROWS, VALIDATION_SHELL_SEED, far_uniform
from teacher.config import TeacherConfig
from teacher.export import MonteCarloModule, dropout_sampler, ensemble_sampler, flipout_per_row, flipout_sampler
from teacher.model import (build_flipout, build_mlp, dense_layers, noise_contrastive_prior, posterior_stats_reader,
                           prior_where_unseen)
from teacher.recurrent import brnn_sampler, build_brnn
from teacher.swag import SwagCollector, swag_sampler
from teacher import recurrent

VALIDATION_SEED = 12345  # the per-epoch validation predictive uses the same draws every epoch


def training_device() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    return "/GPU:0" if gpus else "/CPU:0"


def _epoch_functions(cfg: TeacherConfig, task: tasks.Task, model, module: MonteCarloModule, ds: data_lib.Dataset,
                     val_samples: int, optimizer):
    """(train_epoch, validate) for `fit`: minibatch steps on -log-likelihood + sum(model.losses) (the scaled KL
    for Flipout, L2 otherwise), and the validation metrics of the module's Monte Carlo predictive (fixed draws).
    The steps take the raw train rows, shared with the dataset, and normalise each batch in the graph: a normalised
    copy of the train split (a million rows: 0.13 GB) never exists."""
    x_train, y_train = ds.raw("train"), ds.target("train")
    x_val, y_val = host_tensor(ds.scaled("val", cfg.val_rows)), ds.target("val")[:cfg.val_rows]

    ncp = cfg.kind == "flipout" and task.logit_head and bool(cfg.ncp_weight)

    def step(x, y):
        x = module.normalise(x)  # [batch, *input_shape]
        with tf.GradientTape() as tape:
            head = model(x, training=True)  # [batch, units], one weight draw / dropout mask
            nll = -tf.reduce_mean(task.log_likelihood(y, head))
            kl = tf.add_n(model.losses) if model.losses else tf.constant(0.0)  # kl_weight * KL / N_train, or L2
            loss = nll + kl
            if ncp:  # the noise-contrastive prior on the batch pushed off the data
                x_noisy = x + cfg.ncp_input_noise * tf.random.normal(tf.shape(x))
                loss += cfg.ncp_weight * noise_contrastive_prior(model, x_noisy, cfg.ncp_logit_scale)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return nll, kl

    run_epoch = graph_epoch(step, (x_train, y_train), cfg.batch_size, model.trainable_variables, optimizer)
    sizes = np.diff(np.r_[0:len(y_train):cfg.batch_size, len(y_train)])  # rows per batch
    read_posterior = posterior_stats_reader(model) if cfg.kind == "flipout" else dict

    def train_epoch(rng):
        nll_kl = run_epoch(rng)  # [batches, 2]
        train_nll, kl = float(np.average(nll_kl[:, 0], weights=sizes)), float(nll_kl[:, 1].mean())
        return {"step": int(optimizer.iterations.numpy()), "train_nll": train_nll, "kl": kl, "elbo": -(train_nll + kl),
                **read_posterior()}

    def validate():
        s = {k: v.numpy() for k, v in module.predictive_normalised(x_val, val_samples, VALIDATION_SEED).items()}
        logs = {f"val_{k.split('/')[1]}": v for k, v in task.metrics(y_val, s, "val").items()}
        logs[f"val_{task.epistemic_output}"] = float(s[task.epistemic_output].mean())
        return logs

    return train_epoch, validate


def _fit_member(cfg: TeacherConfig, task: tasks.Task, model, module: MonteCarloModule, ds: data_lib.Dataset,
                val_samples: int, progress: bool, desc: str, seed: int):
    """Adam, early-stopped on the validation NLL of the module's Monte Carlo predictive (fixed draws)."""
    train_epoch, validate = _epoch_functions(cfg, task, model, module, ds, val_samples,
                                             tfk.optimizers.Adam(_learning_rate(cfg, len(ds["train"]))))
    return fit(model, train_epoch, validate, "val_nll", cfg.max_epochs(len(ds["train"])), cfg.patience, seed, desc, progress)


def _learning_rate(cfg: TeacherConfig, n_train: int):
    """Adam's rate: constant, or decayed along a cosine to 0 over the step budget (`learning_rate_decay`)."""
    if cfg.learning_rate_decay != "cosine":
        return cfg.learning_rate
    budget = cfg.max_epochs(n_train) * steps_per_epoch(n_train, cfg.batch_size)  # optimiser steps
    return tfk.optimizers.schedules.CosineDecay(cfg.learning_rate, budget)


def _swag(cfg: TeacherConfig, task: tasks.Task, model, module, ds: data_lib.Dataset, progress: bool):
    """The SWA phase after training: `swag_epochs` of SGD at a constant rate, one snapshot of the weights per epoch
    (teacher.swag). Returns (the moments, the phase's history)."""
    collector = SwagCollector(dense_layers(model), cfg.swag_rank)
    sgd = tfk.optimizers.SGD(cfg.swag_learning_rate, momentum=0.9)
    train_epoch, validate = _epoch_functions(cfg, task, model, module, ds, 2, sgd)

    def collecting_epoch(rng):
        logs = train_epoch(rng)
        collector.collect()
        return logs

    result = fit(model, collecting_epoch, validate, "val_nll", cfg.swag_epochs, cfg.swag_epochs, cfg.seed + 1,
                 "swag: SWA phase", progress)
    return collector.moments(), result.history.assign(phase="swa")


def build_teacher(cfg: TeacherConfig, ds: data_lib.Dataset, progress: bool = True):
    """Train the configured family; returns (Monte Carlo module, history, best epoch)."""
    task = tasks.get(ds.task)
    units = task.head_units(ds.num_classes)

    def module(sampler, models, per_row=None, forward=None):
        return MonteCarloModule(task, sampler, models, ds.scaler.shift, ds.scaler.scale, ds.target_shift, ds.target_scale,
                                cfg.serving_samples, per_row, ds.inputs.signature_shape, forward, ds.feature_spec)

    if cfg.kind == "ensemble":
        members, histories, best = [], [], []
        for m in range(cfg.members):
            tfk.utils.set_random_seed(cfg.seed + m)  # independent initialisation and batch order
            model = build_mlp(ds.num_features, units, cfg.hidden, 0.0, cfg.weight_decay, name=f"member_{m}")
            result = _fit_member(cfg, task, model, module(ensemble_sampler([dense_layers(model)]), [model]), ds, 2,
                                 progress, f"member {m + 1}/{cfg.members}", cfg.seed + m)
            members.append(model), best.append(result.best_epoch)
            histories.append(result.history.assign(member=m))
        return (module(ensemble_sampler([dense_layers(m) for m in members]), members),
                pd.concat(histories, ignore_index=True), best)
    if cfg.kind == "swag":
        model = build_mlp(ds.num_features, units, cfg.hidden, 0.0, cfg.weight_decay, name="swag_teacher")
        point = module(ensemble_sampler([dense_layers(model)]), [model])  # the network itself while it trains
        result = _fit_member(cfg, task, model, point, ds, 2, progress, "swag: training", cfg.seed)
        moments, swa = _swag(cfg, task, model, point, ds, progress)
        history = pd.concat([result.history.assign(phase="train"), swa], ignore_index=True)
        return module(swag_sampler(moments), [moments]), history, result.best_epoch
    if cfg.kind == "brnn":
        model = build_brnn(ds.input_shape[-1], units, len(ds["train"]), cfg.hidden, cfg.kl_weight, cfg.prior_scale,
                           cfg.posterior_scale_init, cfg.prior, cfg.seed)
        mc = module(brnn_sampler(model), [model], forward=(recurrent.forward_batched, recurrent.forward_one))
    elif cfg.kind == "mc-dropout":
        model = build_mlp(ds.num_features, units, cfg.hidden, cfg.dropout, cfg.weight_decay, name="mc_dropout_teacher")
        mc = module(dropout_sampler(dense_layers(model), cfg.dropout), [model])
    else:
        model = build_flipout(ds.num_features, units, len(ds["train"]), cfg.hidden, cfg.kl_weight, cfg.prior_scale,
                              cfg.posterior_scale_init, cfg.prior, cfg.seed)
        mc = module(flipout_sampler(dense_layers(model)), [model], flipout_per_row(dense_layers(model)))
    result = _fit_member(cfg, task, model, mc, ds, cfg.val_samples, progress, f"teacher ({cfg.kind})", cfg.seed)
    lo, hi = ds.box()  # [F] each: the train split's range per (normalised) column
    prior_where_unseen(model, np.flatnonzero(lo == hi), cfg.prior)
    return mc, result.history, result.best_epoch


def search_kl_weight(cfg: TeacherConfig, ds: data_lib.Dataset, progress: bool = True):
    """One Flipout teacher per candidate KL weight (the posterior temperature), each from the same seed; keep the
    one with the best validation NLL (the fixed-draw Monte Carlo predictive): chosen on validation, never on test.
    Returns (module, history, best epoch, the resolved config, {weight: validation NLL})."""
    scores, best = {}, None
    for w in cfg.kl_weight_search:
        tfk.utils.set_random_seed(cfg.seed)
        candidate = replace(cfg, kl_weight=w, kl_weight_search=())
        module, history, best_epoch = build_teacher(candidate, ds, progress)
        scores[w] = float(history["val_nll"].iloc[best_epoch - 1])
        if best is None or scores[w] < scores[best[3].kl_weight]:
            best = (module, history, best_epoch, candidate)
    return (*best, scores)


def _cap_warning(cfg: TeacherConfig, n_train: int, history: pd.DataFrame, best_epoch: int) -> str | None:
    """The Flipout teacher's note when its epoch cap, not early stopping, ended training (printed), else None."""
    if cfg.kind != "flipout" or "val_nll" not in history:
        return None
    budget = cfg.max_epochs(n_train)
    warning = FitResult(history, best_epoch, float(history["val_nll"].min()), len(history) < budget,
                        "val_nll").cap_note("the teacher", f"{budget} epochs at batch {cfg.batch_size}")
    if warning:
        print(warning, file=sys.stderr)
    return warning


def _predict_splits(cfg: TeacherConfig, task: tasks.Task, module: MonteCarloModule, ds: data_lib.Dataset,
                    shell: np.ndarray | None):
    """({split: the Monte Carlo predictive's outputs}, {split: the draws' parameters}) of the val and test rows, the
    draws only when the task's metrics need them; with a validation shell off the data (raw rows), "val_shell"."""
    predictive = lambda x: module.predictive_seeded(tf.constant(x), cfg.eval_samples, cfg.seed)  # noqa: E731
    summaries, samples = {}, {}
    for split in ("val", "test"):  # in row chunks: S draws x a million rows of activations do not fit
        summaries[split] = in_chunks(predictive, ds.raw(split))
        if task.metrics_need_draws:  # e.g. the mixture NLL needs every draw's parameters
            samples[split] = in_chunks(lambda x: module.sample_seeded(tf.constant(x), cfg.eval_samples, cfg.seed),
                                       ds.raw(split), axis=1)
    if shell is not None:  # does it say "I don't know" off the data? Validation rows vs a validation shell
        summaries["val_shell"] = in_chunks(predictive, shell)
    return summaries, samples


def _run_summary(cfg: TeacherConfig, ds: data_lib.Dataset, n_train: int, device: str, history: pd.DataFrame,
                 best_epoch: int, train_seconds: float, warning: str | None, search: dict) -> dict:
    """The summary's description of the training run (Flipout adds its posterior scales at the best epoch)."""
    return {"task": ds.task, "kind": cfg.kind, "device": device, "epochs_run": len(history),
            "best_epoch": best_epoch, "train_seconds": train_seconds, "n_train": n_train,
            "eval_samples": cfg.eval_samples, "kl_weight": cfg.kl_weight, "hidden": list(cfg.hidden or ()),
            "warnings": [warning] if warning else [],
            **({"kl_weight_search": {str(k): v for k, v in search.items()}} if search else {}),
            **({k: v for k, v in history.iloc[best_epoch - 1].items() if k.startswith(("sigma_", "prior_scale_"))}
               if cfg.kind == "flipout" else {})}


def _split_metrics(task: tasks.Task, ds: data_lib.Dataset, summaries: dict, samples: dict) -> dict:
    """The summary's metrics: each split's, the far-shell AUROCs (tables) and the task's over val and test together."""
    summary = {}
    for split in ("val", "test"):
        summary.update(task.metrics(ds[split].y, summaries[split], split))
        summary[f"{split}/mean_{task.epistemic_output}"] = float(summaries[split][task.epistemic_output].mean())
        summary.update(task.draw_metrics(ds[split].y, summaries[split], samples.get(split), split))
    if "val_shell" in summaries:
        for name, output in (("epistemic", task.epistemic_output), ("total", task.total_output)):
            summary[f"val/far_shell_auroc_{name}"] = metrics.auroc(summaries["val"][output], summaries["val_shell"][output])
    summary.update(task.pair_summary([summaries[s] for s in ("val", "test")], ds.class_names))
    return summary


def _write_teacher(run: Path, cfg: TeacherConfig, ds: data_lib.Dataset, device: str, module: MonteCarloModule,
                   history: pd.DataFrame, summaries: dict, summary: dict) -> None:
    """Write RUN/teacher atomically: config, history, predictions, weights, the export and the metrics."""
    with atomic_dir(schema.teacher_dir(run), overwrite=True) as tmp:
        write_json(tmp / "config.json", {"teacher": asdict(cfg), "task": ds.task, "n_train": summary["n_train"],
                                         "num_features": ds.num_features, "num_classes": ds.num_classes, "device": device})
        history.to_csv(tmp / "history.csv", index=False)
        for split in ("val", "test"):
            write_csv(schema.prediction_frame(ds, split, summaries[split]), tmp / f"{split}_predictions.csv")
        tf.train.Checkpoint(models=module.models).write(str(tmp / "weights" / "ckpt"))
        module.save(tmp / "export" / schema.EXPORT_VERSION)
        write_json(tmp / "metrics.json", summary)


def train_teacher(cfg: TeacherConfig, run: Path, progress: bool = True) -> dict:
    """Train, evaluate and export from the run's saved splits (RUN/data, `data.save`); write RUN/teacher atomically.
    Returns the metrics summary. The train rows are held only while the networks train (a million rows: 0.13 GB);
    the test rows are read after them."""
    ds = data_lib.load_from_run(run, ("train", "val"))
    n_train = len(ds["train"])
    cfg.check_data(ds.inputs)
    cfg = cfg.resolved(ds.task, n_train)
    task = tasks.get(ds.task)
    tfk.utils.set_random_seed(cfg.seed)
    device = training_device()
    with tf.device(device):
        t0 = time.perf_counter()
        search = {}
        if cfg.kl_weight_search and cfg.kind == "flipout":
            module, history, best_epoch, cfg, search = search_kl_weight(cfg, ds, progress)
        else:
            module, history, best_epoch = build_teacher(cfg, ds, progress)
        train_seconds = time.perf_counter() - t0
        warning = _cap_warning(cfg, n_train, history, best_epoch)
        # the validation shell is drawn from the train rows' box (and their encodings); then the rows are let go
        shell = (far_uniform(ds, FAR_SHELL_ROWS, FAR_SHELL_INNER, FAR_SHELL_OUTER, VALIDATION_SHELL_SEED)
                 if ds.inputs.has_shell else None)
        ds = replace(ds, splits={"val": ds["val"]}, train_box=ds.box())
        gc.collect()  # the training rows' tensor, held by reference cycles of the training graph functions
        ds.splits["test"] = data_lib.load_from_run(run, ("test",))["test"]
        summaries, samples = _predict_splits(cfg, task, module, ds, shell)
    summary = {**_run_summary(cfg, ds, n_train, device, history, best_epoch, train_seconds, warning, search),
               **_split_metrics(task, ds, summaries, samples)}
    _write_teacher(run, cfg, ds, device, module, history, summaries, summary)
    return summary
