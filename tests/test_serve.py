"""The TF Serving REST API over real HTTP: uvicorn on a loopback port in a thread, httpx as the client."""
import json
import shutil
import threading

import httpx
import numpy as np
import pytest

from serving_fakes import reference

MAX_BATCH, MAX_BODY = 8, 4096
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.9, 4.5, 1.5], [6.7, 3.0, 5.2, 2.3]]
TEACHER_OUTPUTS = {"probs", "variance", "entropy", "expected_entropy", "mutual_information", "mean_log_probs"}


@pytest.fixture(scope="module")
def servers(teacher_run, student_base):
    """Teacher served from its base path, the fake student from its version folder: one process, two ports."""
    from serving.server import BackgroundServer, create_app

    teacher = create_app(teacher_run / "teacher" / "export", "teacher", max_batch=MAX_BATCH, max_body_bytes=MAX_BODY)
    student = create_app(student_base / "1", "student", max_batch=MAX_BATCH, max_body_bytes=MAX_BODY, mode="thread")
    with BackgroundServer(teacher) as t, BackgroundServer(student) as s:
        with httpx.Client(base_url=t.url, timeout=30) as tc, httpx.Client(base_url=s.url, timeout=30) as sc:
            yield {"teacher": tc, "student": sc}


@pytest.fixture
def teacher(servers):
    return servers["teacher"]


@pytest.fixture
def student(servers):
    return servers["student"]


def predict(client, body, name="teacher", version=None):
    path = f"/v1/models/{name}" + (f"/versions/{version}" if version else "") + ":predict"
    return client.post(path, content=body if isinstance(body, (bytes, str)) else json.dumps(body),
                       headers={"content-type": "application/json"})


# ---------------------------------------------------------------- status and metadata


@pytest.mark.parametrize("path", ["/v1/models/teacher", "/v1/models/teacher/versions/1"])
def test_status_is_tf_serving_json(teacher, path):
    r = teacher.get(path)
    assert r.status_code == 200
    assert r.json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


def test_metadata_lists_every_signature_in_tf_serving_shape(teacher, student):
    meta = teacher.get("/v1/models/teacher/metadata").json()
    assert meta["model_spec"] == {"name": "teacher", "signature_name": "", "version": "1"}
    defs = meta["metadata"]["signature_def"]["signature_def"]
    assert set(defs) == {"serving_default", "predictive", "predictive_seeded", "sample", "sample_seeded", "serving_rows"}
    assert {k: v["dtype"] for k, v in defs["serving_rows"]["inputs"].items()} == {  # one input per raw column
        "SepalLengthCm": "DT_FLOAT", "SepalWidthCm": "DT_FLOAT", "PetalLengthCm": "DT_FLOAT", "PetalWidthCm": "DT_FLOAT"}
    sd = defs["serving_default"]
    assert sd["method_name"] == "tensorflow/serving/predict"
    assert sd["inputs"]["features"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in sd["inputs"]["features"]["tensor_shape"]["dim"]] == ["-1", "4"]
    assert set(sd["outputs"]) == TEACHER_OUTPUTS
    assert defs["predictive"]["inputs"]["num_samples"]["tensor_shape"]["dim"] == []

    versioned = student.get("/v1/models/student/versions/1/metadata").json()
    assert set(versioned["metadata"]["signature_def"]["signature_def"]["serving_default"]["outputs"]) == {
        "probs", "entropy", "epistemic"}


# ---------------------------------------------------------------- predict: formats


def test_row_format_gives_one_dict_per_row(teacher):
    r = predict(teacher, {"instances": ROWS})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 3 and all(set(p) == TEACHER_OUTPUTS for p in preds)
    probs = np.array([p["probs"] for p in preds])  # [3, 3]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert probs.argmax(axis=1).tolist() == [0, 1, 2]  # a setosa, a versicolor, a virginica
    assert all(p["mutual_information"] >= 0 for p in preds)


def test_columnar_format_named_and_bare(teacher):
    named = predict(teacher, {"inputs": {"features": ROWS}}).json()["outputs"]
    bare = predict(teacher, {"inputs": ROWS}).json()["outputs"]
    for out in (named, bare):
        assert set(out) == TEACHER_OUTPUTS
        assert np.array(out["probs"]).shape == (3, 3) and np.array(out["entropy"]).shape == (3,)


def test_scalar_input_signatures_take_columnar_inputs(teacher):
    r = predict(teacher, {"signature_name": "predictive", "inputs": {"features": ROWS[:1], "num_samples": 50}})
    assert r.status_code == 200, r.text
    assert set(r.json()["outputs"]) == TEACHER_OUTPUTS
    r = predict(teacher, {"signature_name": "sample", "inputs": {"features": ROWS[:2], "num_samples": 5}})
    assert np.array(r.json()["outputs"]).shape == (5, 2, 3)  # one output -> a bare value: [S, B, C]


def test_scalar_input_in_row_format_is_a_clear_400(teacher):
    r = predict(teacher, {"signature_name": "predictive", "instances": ROWS})
    assert r.status_code == 400
    assert "num_samples" in r.json()["error"] and "inputs" in r.json()["error"]


def test_student_is_deterministic_and_exact(student):
    r = predict(student, {"instances": ROWS}, name="student")
    preds = r.json()["predictions"]
    ref = reference(np.array(ROWS))
    for k in ("probs", "entropy", "epistemic"):
        np.testing.assert_allclose([p[k] for p in preds], ref[k], rtol=1e-5, atol=1e-6)
    assert predict(student, {"instances": ROWS}, name="student").json() == r.json()


def test_flat_call_matches_the_public_call(student_base):
    from serving.server import ServedModel

    sig = ServedModel(student_base, "student").signature(None)
    x = np.array(ROWS, np.float32)
    fast = sig.run({"features": x})
    public = {k: v.numpy() for k, v in sig.fn(features=x).items()}
    assert fast.keys() == public.keys()
    for k in fast:
        np.testing.assert_array_equal(fast[k], public[k])


def test_single_output_row_format_gives_plain_values_and_named_instances_work(student):
    body = {"signature_name": "probs_only", "instances": [{"features": row} for row in ROWS]}
    preds = predict(student, body, name="student", version=1).json()["predictions"]
    np.testing.assert_allclose(preds, reference(np.array(ROWS))["probs"], rtol=1e-5, atol=1e-6)


def test_concurrent_requests_all_succeed(teacher):
    codes = []

    def worker():
        with httpx.Client(base_url=str(teacher.base_url), timeout=30) as c:
            codes.extend(predict(c, {"instances": ROWS[:1]}).status_code for _ in range(10))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert codes == [200] * 60


# ---------------------------------------------------------------- bad requests


BAD = {
    "invalid_json": (b'{"instances": [[1, 2, 3, 4]]', 400, "JSON"),
    "deeply_nested": (b"[" * 2000 + b"]" * 2000, 400, "JSON"),
    "not_an_object": ([[1, 2, 3, 4]], 400, "JSON object"),
    "both_formats": ({"instances": ROWS, "inputs": ROWS}, 400, "exactly one"),
    "neither_format": ({"signature_name": "serving_default"}, 400, "instances"),
    "wrong_feature_count": ({"instances": [[1.0, 2.0, 3.0]]}, 400, "4 values"),
    "string_value": ({"instances": [[1.0, 2.0, "x", 4.0]]}, 400, "non-numeric"),
    "null_value": ({"instances": [[1.0, 2.0, None, 4.0]]}, 400, "non-numeric"),
    "bool_value": ({"instances": [[1.0, 2.0, True, 4.0]]}, 400, "non-numeric"),
    "nan": (b'{"instances": [[1.0, 2.0, NaN, 4.0]]}', 400, "NaN"),
    "infinity": (b'{"instances": [[1.0, 2.0, -Infinity, 4.0]]}', 400, "NaN or infinity"),
    "overflow": (b'{"instances": [[1.0, 2.0, 1e300, 4.0]]}', 400, "range"),
    "ragged": ({"instances": [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]]}, 400, "unequal"),
    "empty_batch": ({"instances": []}, 400, "empty"),
    "empty_columnar_batch": ({"inputs": {"features": []}}, 400, ""),
    "over_batch_limit": ({"instances": [ROWS[0]] * (MAX_BATCH + 1)}, 413, "limit"),
    "over_body_limit": ({"instances": [ROWS[0]] * 3, "pad": "x" * MAX_BODY}, 413, "bytes"),
    "signature_name_not_a_string": ({"signature_name": ["x"], "instances": ROWS}, 400, "string"),
    "unknown_signature": ({"signature_name": "nope", "instances": ROWS}, 404, "nope"),
    "missing_named_input": ({"signature_name": "predictive", "inputs": {"features": ROWS}}, 400, "num_samples"),
    "num_samples_too_big": ({"signature_name": "sample", "inputs": {"features": ROWS, "num_samples": 10**6}}, 400, "outside"),
    "num_samples_negative": ({"signature_name": "sample", "inputs": {"features": ROWS, "num_samples": -3}}, 400, "outside"),
    "num_samples_not_int": ({"signature_name": "sample", "inputs": {"features": ROWS, "num_samples": 2.5}}, 400, "integers"),
}


@pytest.mark.parametrize("body,status,words", BAD.values(), ids=BAD.keys())
def test_bad_request_gets_tf_serving_error_and_server_survives(teacher, body, status, words):
    r = predict(teacher, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error, str) and words in error and "\n" not in error
    assert predict(teacher, {"instances": ROWS[:1]}).status_code == 200


@pytest.mark.parametrize("path,words", [
    ("/v1/models/nobody:predict", "Latest(nobody)"),
    ("/v1/models/teacher/versions/2:predict", "Specific(teacher, 2)"),
    ("/v1/models/teacher/versions/latest:predict", "Specific"),
])
def test_unknown_model_or_version_is_404(teacher, path, words):
    r = teacher.post(path, json={"instances": ROWS})
    assert r.status_code == 404 and words in r.json()["error"]
    assert teacher.get("/v1/models/nobody").status_code == 404
    assert teacher.get("/v1/models/teacher/versions/7/metadata").status_code == 404


def test_unknown_route_and_method_keep_the_error_body(teacher):
    assert teacher.get("/v2/anything").json()["error"]
    r = teacher.delete("/v1/models/teacher")
    assert r.status_code == 405 and "error" in r.json()


def test_chunked_bodies_are_counted_too(teacher):
    def chunks(body: bytes):
        for i in range(0, len(body), 100):
            yield body[i:i + 100]

    good = json.dumps({"instances": ROWS}).encode()
    assert teacher.post("/v1/models/teacher:predict", content=chunks(good)).status_code == 200
    r = teacher.post("/v1/models/teacher:predict", content=chunks(good + b" " * MAX_BODY))
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_large_body_is_refused_without_harm(teacher):
    r = teacher.post("/v1/models/teacher:predict", content=b"[" + b"1.0," * 300_000 + b"1.0]")
    assert r.status_code == 413
    assert predict(teacher, {"instances": ROWS}).status_code == 200


# ---------------------------------------------------------------- export resolution and the CLI


def test_base_path_picks_the_highest_integer_version(student_base, tmp_path):
    from distill.errors import BdkError
    from distill.schema import resolve_export
    from serving.server import default_name

    base = tmp_path / "student" / "export"
    for v in ("2", "10", "latest"):
        shutil.copytree(student_base / "1", base / v)
    (base / "11").mkdir()  # no saved_model.pb: not a version
    assert resolve_export(base) == (base / "10", 10)
    assert resolve_export(base / "2") == (base / "2", 2)
    assert default_name(base) == "student" and default_name(base / "2") == "student"
    with pytest.raises(BdkError, match="saved_model.pb"):
        resolve_export(tmp_path / "student")
    with pytest.raises(BdkError, match="not found"):
        resolve_export(tmp_path / "missing")


def test_cli_serve_missing_export_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from bdk.cli import app

    r = CliRunner().invoke(app, ["serve", str(tmp_path / "nothing")])
    assert r.exit_code == 1
    assert r.output.startswith("error:") and "not found" in r.output and "Traceback" not in r.output


def test_cli_serve_busy_port_is_one_line(student_base):
    import socket

    from typer.testing import CliRunner

    from bdk.cli import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = CliRunner().invoke(app, ["serve", str(student_base), "--port", str(port)])
    assert r.exit_code == 1 and r.output.startswith("error: cannot listen") and "Traceback" not in r.output


# ---------------------------------------------------------------- issue 26: seeds, work budget, a real `bdk serve`


@pytest.mark.parametrize("seed", [0, -1, 1, 2 ** 63 - 1, -2 ** 63])
def test_any_int64_seed_is_served_and_bit_identical(teacher, seed):
    body = {"signature_name": "predictive_seeded", "inputs": {"features": ROWS, "num_samples": 20, "seed": seed}}
    first, again = predict(teacher, body), predict(teacher, body)
    assert first.status_code == 200, first.text
    assert first.content == again.content  # the same seed: the same bytes
    other = predict(teacher, {**body, "inputs": {**body["inputs"], "seed": seed ^ 1}})
    assert other.status_code == 200 and other.content != first.content


def test_only_num_samples_is_capped_and_seeds_beyond_int64_are_a_400(teacher):
    r = predict(teacher, {"signature_name": "predictive_seeded", "inputs": {"features": ROWS, "num_samples": 0, "seed": 0}})
    assert r.status_code == 400 and "num_samples" in r.json()["error"] and "outside [1, 1000]" in r.json()["error"]
    r = predict(teacher, {"signature_name": "predictive_seeded", "inputs": {"features": ROWS, "num_samples": 5, "seed": 2 ** 63}})
    assert r.status_code == 400 and "seed" in r.json()["error"]


def test_the_work_budget_prices_draws_rows_and_steps():
    import tensorflow as tf

    from serving.server import Limits, RequestError, Signature, check_budget

    seq = Signature("sample", None, {"features": tf.TensorSpec([None, None, 2], tf.float32),
                                     "num_samples": tf.TensorSpec([], tf.int32)},
                    {"probs_samples": tf.TensorSpec([None, None, 2], tf.float32)})
    x = np.zeros((1, 5000, 2), np.float32)
    with pytest.raises(RequestError, match=r"1000 draws x 1 rows x 5000 steps = 5000000 .*--max-work"):
        check_budget(seq, {"features": x, "num_samples": np.int32(1000)}, Limits())
    check_budget(seq, {"features": x, "num_samples": np.int32(100)}, Limits())  # 500,000 units, 4 MB
    with pytest.raises(RequestError, match="--max-response-mb"):
        check_budget(seq, {"features": np.zeros((1024, 1, 2), np.float32), "num_samples": np.int32(1000)}, Limits())


@pytest.fixture(scope="module")
def sequence_export(tmp_path_factory):
    """An (untrained) Bayesian GRU teacher's Monte Carlo export over 2 channels, any length: the shape of the
    issue's sequence teacher, without training one."""
    from distill import tasks
    from teacher import recurrent
    from teacher.export import MonteCarloModule

    task = tasks.get("classification")
    model = recurrent.build_brnn(2, task.head_units(2), 60, (16,))
    module = MonteCarloModule(task, recurrent.brnn_sampler(model), [model], np.zeros(2), np.ones(2),
                              input_shape=(None, 2), forward=(recurrent.forward_batched, recurrent.forward_one))
    base = tmp_path_factory.mktemp("sequence") / "export"
    module.save(base / "1")
    return base


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def served_sequence(sequence_export, tmp_path_factory):
    """`bdk serve` as its own process on a free loopback port: (base url, process, stderr file)."""
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    bdk = Path(sys.executable).parent / "bdk"
    with open(log, "w") as err:
        proc = subprocess.Popen([str(bdk), "serve", str(sequence_export), "--name", "seq", "--port", str(port)],
                                stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if "http://" in line or time.monotonic() > deadline:
                break
        url = f"http://127.0.0.1:{port}"
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v1/models/seq", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url, proc, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_real_server_refuses_an_oversized_sequence_request_at_once(served_sequence):
    """The issue's request (1000 draws over a 5000-step sequence, ~19 s and +5 GB before): a 400 naming the limit
    within 1 s, the server's RSS barely moves, and a small request sent at the same time answers quickly."""
    import time

    url, proc, _ = served_sequence
    small = json.dumps({"signature_name": "predictive", "inputs": {"features": [[[0.1, 0.2]] * 12], "num_samples": 10}})
    huge = json.dumps({"signature_name": "predictive", "inputs": {"features": [[[0.1, 0.2]] * 5000], "num_samples": 1000}})
    big_answer = json.dumps({"signature_name": "sample", "inputs": {"features": [[[0.1, 0.2]]] * 1024, "num_samples": 1000}})
    with httpx.Client(base_url=url, timeout=30) as c:
        path = "/v1/models/seq:predict"
        for _ in range(3):  # warm: the first call of a signature builds its graph
            assert c.post(path, content=small).status_code == 200
        rss = _rss_mb(proc.pid)
        results = {}

        def send_huge():
            t0 = time.perf_counter()
            results["huge"] = (c.post(path, content=huge), time.perf_counter() - t0)

        thread = threading.Thread(target=send_huge)
        thread.start()
        t0 = time.perf_counter()
        r_small = c.post(path, content=small)
        small_seconds = time.perf_counter() - t0
        thread.join()
        r_huge, huge_seconds = results["huge"]
        assert r_huge.status_code == 400 and "--max-work" in r_huge.json()["error"] and huge_seconds < 1.0
        assert r_small.status_code == 200 and small_seconds < 0.1, small_seconds
        t0 = time.perf_counter()
        r = c.post(path, content=big_answer)
        assert r.status_code == 400 and "--max-response-mb" in r.json()["error"] and time.perf_counter() - t0 < 1.0
        assert _rss_mb(proc.pid) - rss < 200


def test_a_client_that_disconnects_mid_body_is_one_log_line(served_sequence):
    import socket
    import time
    from urllib.parse import urlparse

    url, proc, log = served_sequence
    before = log.read_text()
    u = urlparse(url)
    for _ in range(3):
        with socket.create_connection((u.hostname, u.port)) as s:
            s.sendall(b"POST /v1/models/seq:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000\r\n\r\n" + b'{"inputs": [' + b"0.1," * 1000)
            time.sleep(0.2)
    time.sleep(0.5)
    assert httpx.get(f"{url}/v1/models/seq", timeout=5).status_code == 200
    new = log.read_text()[len(before):]
    assert "Traceback" not in new and new.count("disconnected") == 3 and len(new.splitlines()) == 3, new
