"""Serving benchmark (prints figures; not a test).

    .venv/bin/python bench/bench_serving.py [--run runs/iris] [--teacher DIR] [--student DIR]

1. Latency of single-example `:predict` requests at concurrency 1: over HTTP on loopback (server in
   its own process, as `bdk serve` runs it) and in-process (the handler minus HTTP, and the bare
   signature call), p50/p95/p99, for the teacher (10 draws) and the student.
2. Batch throughput in rows/s: the teacher's `predictive` signature with 100 draws vs the student.
3. A load run: N concurrent clients for a bounded time on loopback, counting errors and 5xx.

Each server mode is measured (`create_app(mode=...)`): `inline` (the TF call on the event loop),
`thread` (in Starlette's thread pool) and `auto`, the default (small requests inline, big ones and
scalar-input signatures in the pool). The client is the stdlib's http.client (keep-alive): it
costs less CPU than httpx, which matters when client and server share 2 cores.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import distill  # noqa: E402,F401  (Keras 2, quiet TensorFlow: before anything imports it)

import numpy as np  # noqa: E402

ROW = [5.9, 3.0, 4.2, 1.5]  # one Iris versicolor: near the uncertain boundary


def pct(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"p50 {np.percentile(a, 50):6.3f}  p95 {np.percentile(a, 95):6.3f}  p99 {np.percentile(a, 99):6.3f} ms"


# ---------------------------------------------------------------- servers in their own processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(export: Path, name: str, mode: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, __file__, "--serve", str(export), "--name", name, "--port", str(port),
           "--mode", mode]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {export} exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", f"/v1/models/{name}")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server for {export} did not start")


def _serve_main(args) -> None:
    """The subprocess: one export behind uvicorn, in the mode under test."""
    import uvicorn

    from serving.server import configure_threads, create_app

    configure_threads()  # as `bdk serve` does
    app = create_app(args.serve, args.name, mode=args.mode)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


# ---------------------------------------------------------------- clients


def http_latency(port: int, name: str, body: bytes, n: int, warmup: int = 100) -> list[float]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    times = []
    for i in range(warmup + n):
        t = time.perf_counter()
        c.request("POST", f"/v1/models/{name}:predict", body, headers)
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}")
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1e3)
    c.close()
    return times


def load_run(port: int, name: str, body: bytes, clients: int, seconds: float) -> dict:
    """`clients` threads, each a keep-alive connection sending back to back until the deadline."""
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    stats = {"requests": 0, "ok": 0, "4xx": 0, "5xx": 0, "errors": 0}
    times: list[float] = []

    def client():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        local, mine = {k: 0 for k in stats}, []
        while time.monotonic() < deadline:
            t = time.perf_counter()
            try:
                c.request("POST", f"/v1/models/{name}:predict", body, {"Content-Type": "application/json"})
                r = c.getresponse()
                r.read()
                code = r.status
            except (OSError, http.client.HTTPException):
                local["errors"] += 1
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            mine.append((time.perf_counter() - t) * 1e3)
            local["requests"] += 1
            local["ok" if code == 200 else "5xx" if code >= 500 else "4xx"] += 1
        c.close()
        with lock:
            for k, v in local.items():
                stats[k] += v
            times.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.monotonic()
    [t.start() for t in threads]
    [t.join() for t in threads]
    elapsed = time.monotonic() - t0
    return {**stats, "rps": stats["requests"] / elapsed, "times": times}


# ---------------------------------------------------------------- in-process


def inproc_latency(export: Path, name: str, body: bytes, n: int) -> tuple[list[float], list[float], object]:
    from serving.server import Limits, ServedModel, predict

    model = ServedModel(export, name)
    limits = Limits()
    sig = model.signature("serving_default")
    x = {"features": np.asarray([ROW], np.float32)}
    for _ in range(100):
        predict(model, body, limits)
    handler, call = [], []
    for _ in range(n):
        t = time.perf_counter()
        predict(model, body, limits)
        handler.append((time.perf_counter() - t) * 1e3)
    for _ in range(n):
        t = time.perf_counter()
        sig.run(x)
        call.append((time.perf_counter() - t) * 1e3)
    return handler, call, model


def throughput(model, signature: str, extra: dict, batch: int, seconds: float = 5.0) -> float:
    """Rows/s of back-to-back calls of one signature on [batch, F] random Iris-box inputs."""
    sig = model.signature(signature)
    rng = np.random.default_rng(0)
    x = rng.uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], size=(batch, 4)).astype(np.float32)  # [B, F]
    inputs = {"features": x, **{k: np.asarray(v, np.int32) for k, v in extra.items()}}
    sig.run(inputs)
    rows, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sig.run(inputs)
        rows += batch
    return rows / (time.perf_counter() - t0)


def fake_student(tmp: Path) -> Path:
    """An untrained student of the real one's shape, built and exported by the project's own code."""
    import tf_keras as tfk

    from student.export import StudentModule
    from student.model import build_student

    tfk.utils.set_random_seed(0)
    from distill import tasks

    StudentModule(tasks.get("classification"), build_student(4, 3, (32,)), feature_shift=[4.3] * 4,
                  feature_scale=[3.6] * 4).save(tmp / "export" / "1")
    return tmp / "export"


# ---------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("runs/iris"))
    p.add_argument("--teacher", type=Path, help="Teacher export (default RUN/teacher/export).")
    p.add_argument("--student", type=Path, help="Student export (default RUN/student/export, else a stand-in).")
    p.add_argument("--requests", type=int, default=2000, help="Timed single-example requests per case.")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--load-seconds", type=float, default=20.0)
    p.add_argument("--batch", type=int, default=1024, help="Rows per call in the throughput runs.")
    p.add_argument("--modes", default="auto,inline,thread", help="Server modes to measure over HTTP.")
    p.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # internal: run one server
    p.add_argument("--name", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="auto", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        return _serve_main(args)

    teacher = args.teacher or args.run / "teacher" / "export"
    student = args.student or args.run / "student" / "export"
    if not teacher.exists():
        sys.exit(f"no teacher export at {teacher}: run `.venv/bin/bdk teacher --out {args.run}` first or pass --teacher")
    tmp = None
    if not student.exists():
        tmp = tempfile.TemporaryDirectory(prefix="bench-student-")
        print(f"note: no student export at {student}; using a stand-in student (MLP 4-32-3 + epistemic head)")
        student = fake_student(Path(tmp.name))
    models = {"teacher": teacher, "student": student}
    body = json.dumps({"instances": [ROW]}).encode()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; request: {body.decode()}")

    print("\n== in-process, concurrency 1 (TF default thread pools; servers use configure_threads) ==")
    loaded = {}
    for name, export in models.items():
        handler, call, loaded[name] = inproc_latency(export, name, body, args.requests)
        print(f"{name:8s} handler (JSON in -> JSON out) {pct(handler)}")
        print(f"{name:8s} signature call only           {pct(call)}")

    print(f"\n== batch throughput, {args.batch} rows per call ==")
    t100 = throughput(loaded["teacher"], "predictive", {"num_samples": 100}, args.batch)
    t10 = throughput(loaded["teacher"], "serving_default", {}, args.batch)
    s = throughput(loaded["student"], "serving_default", {}, args.batch)
    print(f"teacher predictive, 100 draws  {t100:12,.0f} rows/s")
    print(f"teacher serving_default, 10 draws {t10:9,.0f} rows/s")
    print(f"student                        {s:12,.0f} rows/s  ({s / t100:,.0f}x the 100-draw teacher)")
    del loaded

    goals = {"student": 2.0, "teacher": 5.0}  # p95 ms at concurrency 1 over HTTP
    summary = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        print(f"\n== HTTP on loopback, server mode: {mode} ==")
        for name, export in models.items():
            proc, port = start_server(export, name, mode)
            try:
                lat = http_latency(port, name, body, args.requests)
                print(f"{name:8s} concurrency 1: {pct(lat)}")
                res = load_run(port, name, body, args.clients, args.load_seconds)
                print(f"{name:8s} {args.clients} clients x {args.load_seconds:.0f} s: {res['requests']} requests, "
                      f"{res['rps']:,.0f} req/s, {pct(res['times'])}; errors {res['errors']}, "
                      f"4xx {res['4xx']}, 5xx {res['5xx']}")
                p95 = float(np.percentile(lat, 95))
                summary.append(f"{mode:8s} {name:8s} p95 {p95:5.2f} ms (goal <= {goals[name]:.0f}: "
                               f"{'met' if p95 <= goals[name] else 'missed'}); under load 5xx {res['5xx']}, errors {res['errors']}")
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    print(f"\n== goals (load average now {os.getloadavg()[0]:.2f}) ==")
    print("\n".join(summary))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
