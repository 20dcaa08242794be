"""UCI regression data: the bundled Boston and Concrete tables, the benchmark's splits, z-scoring.

The protocol of Hernandez-Lobato & Adams (2015), used by PBP, MC dropout and deep ensembles: 20
random 90/10 train/test splits; inputs and targets normalised to zero mean and unit variance with
the training part's statistics; test log-likelihood and RMSE in the target's original units. We
also hold out a validation slice of each training part (for early stopping), so nothing is tuned
on the test rows.

The regression run folder mirrors the classification one (distill.schema): RUN/data/dataset.json
(with `task: regression`, the feature and target normalisers), RUN/teacher, RUN/soft_labels,
RUN/student. The Beam job reads `task` from dataset.json to choose the soft-label columns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from distill import schema
from distill.data import DATA_ROOT, read_table
from distill.errors import BdkError, read_json, write_json

# name -> (file, target column, id column); provenance and licenses in data/README.md
UCI_DATASETS = {
    "boston": (DATA_ROOT / "boston.csv", "medv", "id"),
    "concrete": (DATA_ROOT / "concrete.csv", "compressive_strength", "id"),
}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class UciConfig:
    """One benchmark split: which rows are train / val / test."""

    dataset: str = "boston"
    test_fraction: float = 0.1  # the benchmark's 90/10
    val_fraction: float = 0.1  # of the training part: early stopping, never the test rows
    seed: int = 0  # split i uses seed + i

    def __post_init__(self):
        if self.dataset not in UCI_DATASETS:
            raise BdkError(f"unknown UCI dataset {self.dataset!r}; choose one of {', '.join(UCI_DATASETS)}")
        for name in ("test_fraction", "val_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise BdkError(f"{name} must be in (0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class Normaliser:
    """z-scoring with the training part's mean and std (constant columns get std 1)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, x: np.ndarray) -> "Normaliser":
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        std = x.std(axis=0)
        return cls(tuple(map(float, x.mean(axis=0))), tuple(float(s) if s > 0 else 1.0 for s in std))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float32) - np.float32(self.mean)) / np.float32(self.std)).astype(np.float32)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float32) * np.float32(self.std) + np.float32(self.mean)).astype(np.float32)


@dataclass
class RegressionSplit:
    ids: np.ndarray  # [n] str
    x: np.ndarray  # [n, F] float32, raw features
    y: np.ndarray  # [n] float32, raw target

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class RegressionDataset:
    """One split of a UCI table; normalisers fitted on the training part (train + val)."""

    name: str
    feature_names: list[str]
    target_name: str
    x_norm: Normaliser
    y_norm: Normaliser  # one column: mean[0], std[0]
    splits: dict[str, RegressionSplit] = field(default_factory=dict)

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def y_mean(self) -> float:
        return self.y_norm.mean[0]

    @property
    def y_std(self) -> float:
        return self.y_norm.std[0]

    def __getitem__(self, name: str) -> RegressionSplit:
        return self.splits[name]

    def x(self, name: str) -> np.ndarray:
        """Normalised inputs [n, F]."""
        return self.x_norm.transform(self.splits[name].x)

    def y(self, name: str) -> np.ndarray:
        """Normalised targets [n]."""
        return self.y_norm.transform(self.splits[name].y[:, None])[:, 0]


def load_table(name: str) -> tuple[pd.DataFrame, list[str], str, str]:
    """A bundled UCI table -> (rows, feature names, target column, id column)."""
    if name not in UCI_DATASETS:
        raise BdkError(f"unknown UCI dataset {name!r}; choose one of {', '.join(UCI_DATASETS)}")
    path, target, id_col = UCI_DATASETS[name]
    df = read_table(str(path))
    features = [c for c in df.columns if c not in (target, id_col)]
    return df, features, target, id_col


def make_split(cfg: UciConfig, index: int, table: tuple[pd.DataFrame, list[str], str, str] | None = None) -> RegressionDataset:
    """Split `index` of the benchmark: a random permutation (seed + index), the last 10% as test,
    then a validation slice of the training part. Normalisers see the training part only."""
    df, features, target, id_col = table if table is not None else load_table(cfg.dataset)
    n = len(df)
    order = np.random.default_rng(cfg.seed + index).permutation(n)
    n_test = int(round(n * cfg.test_fraction))
    n_val = int(round((n - n_test) * cfg.val_fraction))
    test, rest = order[:n_test], order[n_test:]
    val, train = rest[:n_val], rest[n_val:]
    x = df[features].to_numpy(np.float32)
    y = df[target].to_numpy(np.float32)
    ids = df[id_col].astype(str).to_numpy()
    splits = {name: RegressionSplit(ids[i], x[i], y[i]) for name, i in zip(SPLITS, (train, val, test))}
    return RegressionDataset(cfg.dataset, features, target, Normaliser.fit(x[rest]), Normaliser.fit(y[rest]), splits)


def save(ds: RegressionDataset, run: Path) -> Path:
    """RUN/data: dataset.json (task, features, normalisers) and split.json (ids per split)."""
    out = schema.data_dir(run)
    write_json(out / "dataset.json", {
        "task": "regression", "source": ds.name, "feature_names": ds.feature_names, "class_names": [],
        "target": ds.target_name, "scaler": {"mean": ds.x_norm.mean, "std": ds.x_norm.std},
        "target_scaler": {"mean": ds.y_mean, "std": ds.y_std},
    })
    write_json(out / "split.json", {name: list(map(str, s.ids)) for name, s in ds.splits.items()})
    return out


def load_dataset_json(run: Path) -> dict:
    path = schema.data_dir(run) / "dataset.json"
    if not path.exists():
        raise BdkError(f"{run} has no dataset; the UCI experiment writes it")
    return read_json(path)


# ---------------------------------------------------------------- the transfer set


def build_transfer_set(ds: RegressionDataset, perturbations: int, noise: float, seed: int) -> pd.DataFrame:
    """The teacher's training inputs plus `perturbations` copies of each with Gaussian noise of std
    `noise` in the normalised space (Korattikara et al. 2015 used 0.05 on Boston), in raw units.

    Same table layout as the classification transfer set (distill.transfer), so the same Beam job
    labels it; `label` is NO_LABEL on every row: a regression target is not a class.
    """
    if perturbations < 0 or not np.isfinite(noise) or noise < 0:
        raise BdkError(f"perturbations must be >= 0 and noise a finite number >= 0, got {perturbations} and {noise}")
    train = ds["train"]
    n, f = train.x.shape
    rng = np.random.default_rng(seed)
    noisy = ds.x_norm.transform(train.x)[:, None, :] + noise * rng.standard_normal((n, perturbations, f))  # [n, K, F]
    parts = [
        (np.char.add("train:", train.ids.astype(str)), "train", train.x),
        (np.array([f"perturbed:{i}:{j}" for i in train.ids for j in range(perturbations)], dtype=str), "perturbed",
         ds.x_norm.inverse(noisy.reshape(n * perturbations, f))),
    ]
    frames = []
    for ids, source, x in parts:
        frame = pd.DataFrame(np.asarray(x, np.float32).reshape(len(ids), f), columns=ds.feature_names)
        frame.insert(0, "id", pd.array(ids, dtype=object))
        frame.insert(1, "source", source)
        frame.insert(2, "label", np.full(len(ids), schema.NO_LABEL, np.int64))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
