"""Tiny sequence data for the tests: two classes of noisy two-channel oscillators, as arrays and as a long table."""
import numpy as np
import pandas as pd

LENGTH, CHANNELS = 12, 2


def tiny_sequences(n: int = 150, length: int = LENGTH, seed: int = 0):
    """Two classes of noisy two-channel oscillators (periods 3 and 6): x [n, T, 2], y [n]."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    t = np.arange(length)[None]
    phase = rng.uniform(0, 2 * np.pi, (n, 1)) + 2 * np.pi * t / np.where(y == 0, 3.0, 6.0)[:, None]
    x = np.stack([np.sin(phase), np.cos(phase)], -1) + rng.normal(0, 0.2, (n, length, 2))
    return x.astype(np.float32), y


def long_frame(x, y=None, series=None):
    """Sequences x [n, T, C] as a long table: one row per (series, time), channels a and b, the label repeated."""
    n, length, c = x.shape
    df = pd.DataFrame({"series": np.repeat(series if series is not None else [f"s{i}" for i in range(n)], length),
                       "time": np.tile(np.arange(length), n)})
    for j, name in enumerate(["a", "b"][:c]):
        df[name] = x[:, :, j].reshape(-1)
    if y is not None:
        df["label"] = np.repeat(np.asarray(["fast", "slow"])[y], length)
    return df
