"""Write data/italy_power_demand.csv (long format) from the UCR ItalyPowerDemand files sktime's wheel bundles.

    pip download --no-deps sktime==1.2.0 -d /tmp/w && python bench/make_italy_power_demand.py /tmp/w/sktime-1.2.0-py3-none-any.whl

One row per (day, hour): `series` (TRAIN-0001... / TEST-0001..., the UCR split it came from), `time` (hour 0-23),
`demand` (the UCR values, z-normalised per day by the archive), `season` (class 1: October to March -> winter,
class 2: April to September -> summer).
"""
from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pandas as pd

SEASONS = {"1": "winter", "2": "summer"}


def parse_ts(text: str) -> list[tuple[list[float], str]]:
    rows, data = [], False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower() == "@data":
            data = True
        elif data:
            values, label = line.rsplit(":", 1)
            rows.append(([float(v) for v in values.split(",")], label))
    return rows


def main(wheel: str, out: str = "data/italy_power_demand.csv") -> None:
    frames = []
    with zipfile.ZipFile(wheel) as z:
        for part in ("TRAIN", "TEST"):
            text = z.read(f"sktime/datasets/data/ItalyPowerDemand/ItalyPowerDemand_{part}.ts").decode()
            for i, (values, label) in enumerate(parse_ts(text), start=1):
                frames.append(pd.DataFrame({"series": f"{part}-{i:04d}", "time": range(len(values)), "demand": values,
                                            "season": SEASONS[label]}))
    pd.concat(frames, ignore_index=True).to_csv(out, index=False)
    print(f"{out}: {len(frames)} series")


if __name__ == "__main__":
    main(*sys.argv[1:])
