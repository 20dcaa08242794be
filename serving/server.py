"""TensorFlow Serving's REST API over FastAPI, for any SavedModel: the teacher, the student, a baseline.

Why not only TF Serving: `tensorflow_model_server` is neither on PyPI nor in Debian here, and a
Python server lets tests and benchmarks run against the very exports the pipeline writes. The
routes, request formats and response shapes follow TF Serving's REST API, so a client written
against this server works unchanged against `tensorflow_model_server --rest_api_port=8501`:

    GET  /v1/models/NAME[/versions/N]             model status
    GET  /v1/models/NAME[/versions/N]/metadata    model_spec + signature_def (proto JSON)
    POST /v1/models/NAME[/versions/N]:predict     {"signature_name", "instances"|"inputs"}

Nothing here knows the models: inputs and outputs are read from each loaded signature
(`structured_input_signature` / `structured_outputs`), and every request is validated against them
before TensorFlow sees it, so a bad request costs a 4xx and never the server.
"""
from __future__ import annotations

import distill  # noqa: F401  (Keras 2, quiet TensorFlow: before anything imports it)

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from fastapi import Request  # module level: FastAPI resolves the handlers' (string) annotations here

from distill.errors import BdkError, first_line, read_json
from distill.features import ROWS_SIGNATURE, from_meta
from distill.schema import SEEDED_ROWS_SIGNATURE, find_dataset_json, resolve_export

log = logging.getLogger(__name__)
RAW_SIGNATURES = (ROWS_SIGNATURE, SEEDED_ROWS_SIGNATURE)  # signatures whose inputs are the raw columns (distill.encoder)

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_MAX_BATCH = 1024  # rows per request
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
# Scalar integer inputs are work counts (the teacher's num_samples): one request must not buy hours
# of CPU or a [num_samples, B, C] tensor that exhausts memory. Seeds (scalar integer inputs named *seed*) are not
# counts: any int64, 0 and negatives included.
DEFAULT_MAX_SCALAR = 1000
# The work budget of one request: draws x rows x steps (time steps of a sequence, 1 for a table row). The default
# admits every table request (1024 rows x 1000 draws) and refuses e.g. 1000 draws over a 5000-step sequence
# (~19 s and 5 GB of a sequence teacher's activations).
DEFAULT_MAX_WORK = 1 << 20
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024  # the JSON answer: 1000 draws x 1024 rows x 3 classes is ~60 MB
JSON_BYTES_PER_VALUE = 20  # a float32 printed as JSON ("0.017300000414252281,") for the response estimate
DEFAULT_TIMEOUT = 30.0  # seconds a request may wait for, and run in, a model call
DEFAULT_MAX_CONCURRENCY = 2  # model calls at once (the pool's): one request per core
MODES = ("auto", "inline", "thread")  # where a :predict request runs: see create_app
INLINE_MAX_BODY_BYTES = 4096  # "auto" parses and runs bodies up to this size on the event loop (~30 rows)
# After the body limit is crossed, keep reading (and discarding) up to this much so the client sees
# the 413 instead of a connection reset while it is still sending.
_DRAIN_BYTES = 64 * 1024 * 1024

try:  # 3-10x faster JSON when present; the stdlib is the fallback (orjson is not a dependency)
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None


class RequestError(Exception):
    """A client mistake: HTTP status + TF Serving's one-line `{"error": ...}` message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------- finding and loading an export


@dataclass(frozen=True)
class Signature:
    """One loaded signature: the concrete function and its named input/output specs."""

    name: str
    fn: Callable[..., dict]
    inputs: dict[str, Any]  # name -> tf.TensorSpec, e.g. features [None, F] float32
    outputs: dict[str, Any]  # name -> tf.TensorSpec, e.g. probs [None, C] float32

    @classmethod
    def from_concrete(cls, name: str, fn) -> "Signature":
        _, kwargs = fn.structured_input_signature  # signatures take keyword arguments only
        outputs = fn.structured_outputs
        if not isinstance(outputs, dict):  # a signature always returns a dict; be safe with odd exports
            outputs = {"output_0": outputs}
        return cls(name, fn, dict(kwargs), dict(outputs))

    @property
    def scalar_inputs(self) -> list[str]:
        return [k for k, s in self.inputs.items() if s.shape.rank == 0]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validated numpy in, numpy out: one call of the concrete function (traced once at export, never here)."""
        return {k: v.numpy() for k, v in self._call(inputs).items()}

    def _call(self, inputs: dict[str, np.ndarray]) -> dict:
        # The public call binds keyword arguments through inspect-style machinery on every call;
        # for already validated tensors the flat call does the same work (~50 us less per request).
        # Falls back to the public call if a TensorFlow upgrade moves these attributes.
        flat = getattr(self.fn, "_call_flat", None)
        order = getattr(self.fn, "_arg_keywords", None)
        if flat is None or order is None or sorted(order) != sorted(inputs):
            return self.fn(**inputs)
        import tensorflow as tf

        return flat([tf.convert_to_tensor(inputs[k], self.inputs[k].dtype) for k in order], self.fn.captured_inputs)


class ServedModel:
    """One version of one SavedModel, loaded once with plain `tf.saved_model.load`."""

    def __init__(self, export_dir: Path, name: str):
        import tensorflow as tf

        self.path, self.version = resolve_export(export_dir)
        self.name = name
        try:
            self._loaded = tf.saved_model.load(str(self.path))  # keep a reference: signatures need its variables
        except Exception as e:  # a corrupt or foreign file: say which, without a traceback
            raise BdkError(f"{self.path}: could not load the SavedModel ({type(e).__name__}: "
                           f"{first_line(e)})") from None
        self.signatures = {k: Signature.from_concrete(k, fn) for k, fn in self._loaded.signatures.items()}
        if not self.signatures:
            raise BdkError(f"{self.path}: the SavedModel has no signatures; export it with signatures={{...}}")
        self._signature_defs = _signature_defs(self.path)
        self.spec = run_feature_spec(self.path)  # None: the export is not in a table run (or one made before it)

    def signature(self, name: str | None) -> Signature:
        name = name or DEFAULT_SIGNATURE
        if not isinstance(name, str):
            raise RequestError(400, "\"signature_name\" must be a string")
        if name not in self.signatures:
            raise RequestError(404, f"Serving signature name: \"{name}\" not found in signature def; "
                                    f"available: {', '.join(sorted(self.signatures))}")
        return self.signatures[name]

    def status(self) -> dict:
        return {"model_version_status": [{"version": str(self.version), "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}

    def metadata(self) -> dict:
        """TF Serving's GetModelMetadataResponse as JSON: the SignatureDefMap under metadata.signature_def."""
        return {"model_spec": {"name": self.name, "signature_name": "", "version": str(self.version)},
                "metadata": {"signature_def": {"signature_def": self._signature_defs}}}


def run_feature_spec(version_dir: Path):
    """The feature specification of the run an export sits in (RUN/<stage>/export/<v>, RUN/student/baseline/export/<v>):
    from RUN/data/dataset.json, so requests may name raw fields; None when there is none (encoded vectors only)."""
    path = find_dataset_json(version_dir)
    if path is None:
        return None
    try:
        return from_meta(read_json(path))
    except Exception as e:  # an unreadable dataset.json must not stop the export from serving encoded vectors
        log.warning("%s: feature specification not read (%s); serving encoded vectors only", path, first_line(e))
        return None


def _signature_defs(version_dir: Path) -> dict:
    """The SignatureDefs of saved_model.pb as proto JSON (what TF Serving prints: tensor names, dims, method)."""
    from google.protobuf.json_format import MessageToDict
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    defs = next((mg.signature_def for mg in sm.meta_graphs if "serve" in mg.meta_info_def.tags), sm.meta_graphs[0].signature_def)
    return {k: MessageToDict(v, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
            for k, v in defs.items() if not k.startswith("__")}  # __saved_model_init_op is not a signature


# ---------------------------------------------------------------- requests -> tensors -> responses


@dataclass(frozen=True)
class Limits:
    max_batch: int = DEFAULT_MAX_BATCH
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_scalar: int = DEFAULT_MAX_SCALAR
    max_work: int = DEFAULT_MAX_WORK
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    timeout: float = DEFAULT_TIMEOUT
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY


def is_seed(name: str) -> bool:
    """A scalar integer input that seeds the draws (any int64) rather than counting work (num_samples)."""
    return "seed" in name.lower()


def check_budget(sig: "Signature", inputs: dict[str, np.ndarray], limits: Limits) -> None:
    """Refuse, before any computation, a request whose work (draws x rows x steps) or JSON answer is over the limits."""
    counts = {n: int(a) for n, a in inputs.items() if a.ndim == 0 and a.dtype.kind in "iu" and not is_seed(n)}
    draws = int(np.prod(list(counts.values()))) if counts else 1
    rows, steps = 1, 1
    for a in inputs.values():
        if a.ndim >= 1 and a.shape[0] * int(np.prod(a.shape[1:-1])) > rows * steps:
            rows, steps = a.shape[0], int(np.prod(a.shape[1:-1])) if a.ndim >= 3 else 1
    work = draws * rows * steps
    if work > limits.max_work:
        raise RequestError(400, f"request work of {draws} draws x {rows} rows x {steps} steps = {work} is over the "
                                f"limit of {limits.max_work} (--max-work); send fewer draws, rows or steps")
    values = 0
    for spec in sig.outputs.values():
        dims = spec.shape.as_list() if spec.shape.rank is not None else [None, None]
        fill = iter([draws, rows, steps] if counts and dims.count(None) >= 2 else [rows, steps])
        values += int(np.prod([d if d is not None else next(fill, 1) for d in dims]))
    check_response_size(values, limits)


def check_response_size(values: int, limits: Limits) -> None:
    size = values * JSON_BYTES_PER_VALUE
    if size > limits.max_response_bytes:
        raise RequestError(400, f"the response would hold {values} values (~{size / 2 ** 20:.0f} MB of JSON), over the "
                                f"limit of {limits.max_response_bytes / 2 ** 20:g} MB (--max-response-mb); send fewer "
                                "draws or rows")


def loads(body: bytes) -> Any:
    if _orjson is not None:
        try:
            return _orjson.loads(body)
        except _orjson.JSONDecodeError:
            pass  # the rare bad body: the stdlib below reads NaN/Infinity literals and words the error
    try:
        return json.loads(body)  # accepts NaN/Infinity literals: the tensor check rejects them with a clear message
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"JSON Parse error: {e}") from None
    except RecursionError:
        raise RequestError(400, "JSON Parse error: nesting too deep") from None


def dumps(obj: Any) -> bytes:
    if _orjson is not None:
        return _orjson.dumps(obj)
    return json.dumps(obj, separators=(",", ":")).encode()


def _has_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, list) and any(_has_bool(v) for v in value)


def to_tensor(name: str, value: Any, spec, limits: Limits, may_hold_bool: bool) -> np.ndarray:
    """One JSON value -> a numpy array of the spec's dtype and a compatible shape, or a 400."""
    dtype = np.dtype(spec.dtype.as_numpy_dtype)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, RecursionError):
        raise RequestError(400, f"input {name!r}: nested lists of unequal lengths (or nested too deep)") from None
    if arr.dtype.kind not in ("iufb" if dtype.kind == "b" else "iuf") or (may_hold_bool and dtype.kind != "b" and _has_bool(value)):
        what = "nested lists of unequal lengths" if arr.dtype == object and _ragged(value) else "non-numeric values (strings, null, true/false or huge integers)"
        raise RequestError(400, f"input {name!r}: {what}; expected {dtype.name} numbers")
    if dtype.kind == "f":
        with np.errstate(over="ignore"):
            arr = arr.astype(dtype, copy=False)
        if not np.isfinite(arr).all():
            raise RequestError(400, f"input {name!r}: NaN or infinity (or a value beyond {dtype.name} range)")
    elif dtype.kind in "iu":
        if arr.dtype.kind == "f":
            if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
                raise RequestError(400, f"input {name!r}: expected integers")
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise RequestError(400, f"input {name!r}: value out of {dtype.name} range")
        arr = arr.astype(dtype)
    else:
        arr = arr.astype(dtype)
    _check_shape(name, arr, spec, limits)
    return arr


def _ragged(value: Any) -> bool:
    try:
        return isinstance(value, list) and (
            len({len(v) if isinstance(v, list) else -1 for v in value}) > 1 or any(_ragged(v) for v in value))
    except RecursionError:
        return True


def _check_shape(name: str, arr: np.ndarray, spec, limits: Limits) -> None:
    want = spec.shape.as_list() if spec.shape.rank is not None else None  # e.g. [None, 4]
    if want is None:
        return
    if arr.ndim != len(want) or any(w is not None and w != g for w, g in zip(want, arr.shape)):
        shown = "[" + ", ".join("-1" if w is None else str(w) for w in want) + "]"
        hint = ""
        if len(want) == 2 and arr.ndim == 2 and want[1] is not None and want[1] != arr.shape[1]:
            hint = f": each row needs {want[1]} values, got {arr.shape[1]}"
        raise RequestError(400, f"input {name!r}: shape {list(arr.shape)} does not match the signature's {shown}{hint}")
    if arr.ndim == 0:
        if arr.dtype.kind in "iu" and not is_seed(name) and not 1 <= int(arr) <= limits.max_scalar:
            raise RequestError(400, f"input {name!r}: {int(arr)} is outside [1, {limits.max_scalar}]")
        return
    if arr.shape[0] == 0:
        raise RequestError(400, f"input {name!r}: empty batch; send at least one row")
    if arr.shape[0] > limits.max_batch:
        raise RequestError(413, f"input {name!r}: batch of {arr.shape[0]} rows is over the limit of {limits.max_batch}; split the request")


def raw_input_name(sig: Signature, spec) -> str | None:
    """The signature's one [batch, F] input that a run's encoding fills from named raw fields, or None."""
    if spec is None:
        return None
    rows = [n for n, s in sig.inputs.items() if s.shape.rank == 2]
    if len(rows) != 1 or sig.inputs[rows[0]].shape[-1] not in (None, len(spec.encoded_names)):
        return None
    return rows[0]


def read_fields(build, payload, spec, convert):
    """Named raw fields (`build`: distill.features.named_rows or named_columns) -> `convert(raw frame)`, or a 400
    naming the field."""
    try:
        return convert(build(payload, spec))
    except (ValueError, BdkError) as e:
        raise RequestError(400, str(e)) from None


def encode_raw(build, payload, spec) -> np.ndarray:
    """Named raw fields -> the encoded [batch, F] matrix, or a 400 naming the field."""
    return read_fields(build, payload, spec, lambda frame: spec.encode(frame, ""))


def check_instances(rows: Any, limits: Limits) -> None:
    """The row format's "instances": a non-empty list of at most `limits.max_batch` rows, else a 400 / 413."""
    if not isinstance(rows, list):
        raise RequestError(400, "\"instances\" must be a list with one entry per row")
    if not rows:
        raise RequestError(400, "\"instances\" is empty; send at least one row")
    if len(rows) > limits.max_batch:
        raise RequestError(413, f"batch of {len(rows)} rows is over the limit of {limits.max_batch}; split the request")


def raw_row_inputs(payload, row_format: bool, limits: Limits, spec) -> dict[str, np.ndarray]:
    """`serving_rows`: named raw fields, as `instances` objects or columnar `inputs` -> one array per raw column (the
    signature's inputs, distill.encoder.raw_inputs), or a 400 naming the field."""
    from distill.encoder import raw_inputs
    from distill.features import named_columns, named_rows

    if row_format:
        check_instances(payload, limits)
    elif not isinstance(payload, dict):
        raise RequestError(400, f"\"inputs\" must be an object mapping the fields {spec.raw_columns} to lists")
    elif max((len(v) for v in payload.values() if isinstance(v, list)), default=0) > limits.max_batch:
        raise RequestError(413, f"batch over the limit of {limits.max_batch} rows; split the request")
    return read_fields(named_rows if row_format else named_columns, payload, spec, lambda frame: raw_inputs(frame, spec))


def check_no_scalars(sig: Signature) -> None:
    """The row format cannot carry a signature's scalar inputs: a 400 showing the columnar format."""
    if sig.scalar_inputs:
        names = list(sig.inputs)
        raise RequestError(400, f"signature {sig.name!r} has scalar input(s) {sig.scalar_inputs}, which the row format "
                                "cannot carry (every input shares dimension 0): use the columnar format, e.g. "
                                f"{{\"signature_name\": \"{sig.name}\", \"inputs\": {{{', '.join(repr(n).replace(chr(39), chr(34)) + ': ...' for n in names)}}}}}")


def raw_signature_inputs(payload, row_format: bool, sig: Signature, limits: Limits, spec,
                         may_hold_bool: bool) -> dict[str, np.ndarray]:
    """`serving_rows` / `predictive_seeded_rows`: the raw fields (raw_row_inputs) plus the signature's scalar inputs
    (`num_samples`, `seed`: columnar format only), or a 400."""
    if not sig.scalar_inputs:
        return raw_row_inputs(payload, row_format, limits, spec)
    if row_format:
        check_no_scalars(sig)
    lacking = [n for n in sig.scalar_inputs if not isinstance(payload, dict) or n not in payload]
    if lacking:
        raise RequestError(400, f"\"inputs\" lacks the signature input {lacking[0]!r} (signature {sig.name!r} takes "
                                f"{sig.scalar_inputs} besides the fields {spec.raw_columns})")
    fields = {k: v for k, v in payload.items() if k not in sig.scalar_inputs}
    scalars = {n: to_tensor(n, payload[n], sig.inputs[n], limits, may_hold_bool) for n in sig.scalar_inputs}
    return {**raw_row_inputs(fields, row_format, limits, spec), **scalars}


def _row_columns(rows: Any, sig: Signature, limits: Limits, spec) -> dict[str, Any]:
    """The row format's "instances" -> {input name: its values, one per row} (named raw fields encoded by `spec`)."""
    names = list(sig.inputs)
    check_no_scalars(sig)
    check_instances(rows, limits)
    raw = raw_input_name(sig, spec)
    if isinstance(rows[0], dict) and raw is not None and raw not in rows[0]:  # named raw fields per row
        from distill.features import named_rows

        return {raw: encode_raw(named_rows, rows, spec)}
    if isinstance(rows[0], dict):  # named inputs per row
        if not all(isinstance(r, dict) and set(r) == set(names) for r in rows):
            raise RequestError(400, f"each instance must be an object with exactly the inputs {names}")
        return {n: [r[n] for r in rows] for n in names}
    if len(names) == 1:
        return {names[0]: rows}
    raise RequestError(400, f"signature {sig.name!r} has several inputs {names}: each instance must be an object naming them")


def _named_columns(cols: Any, sig: Signature, limits: Limits, spec) -> dict[str, Any]:
    """The columnar format's "inputs" -> {input name: its values} (named raw fields encoded by `spec`)."""
    names = list(sig.inputs)
    raw = raw_input_name(sig, spec)
    if isinstance(cols, dict) and raw is not None and raw not in cols:  # named raw fields as columns
        from distill.features import named_columns

        others = [n for n in names if n != raw]
        lacking = [n for n in others if n not in cols]
        if lacking:
            raise RequestError(400, f"\"inputs\" lacks the signature input {lacking[0]!r} (signature {sig.name!r} "
                                    f"takes {others} besides the fields {spec.raw_columns})")
        fields = {k: v for k, v in cols.items() if k not in others}
        if any(isinstance(v, list) and len(v) > limits.max_batch for v in fields.values()):
            raise RequestError(413, f"batch over the limit of {limits.max_batch} rows; split the request")
        return {**{n: cols[n] for n in others}, raw: encode_raw(named_columns, fields, spec)}
    if isinstance(cols, dict):
        if set(cols) != set(names):
            missing, extra = sorted(set(names) - set(cols)), sorted(set(cols) - set(names))
            raise RequestError(400, f"\"inputs\" must name exactly the inputs {names}"
                                    + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else ""))
        return cols
    if len(names) == 1:
        return {names[0]: cols}
    raise RequestError(400, f"signature {sig.name!r} has several inputs {names}: \"inputs\" must be an object naming them")


def parse_predict(request: Any, sig: Signature, limits: Limits, may_hold_bool: bool = True,
                  spec=None) -> tuple[dict[str, np.ndarray], bool]:
    """A decoded :predict body -> (named input arrays, row_format). Row format = `instances`.

    With `spec` (the run's distill.features.FeatureSpec), instances may be objects naming the raw fields
    (`{"instances": [{"carat": 0.3, "cut": "Ideal"}]}`) and "inputs" may map raw fields to columns (plus the
    signature's scalar inputs): they are encoded into the signature's features input as the run encoded its table."""
    if not isinstance(request, dict):
        raise RequestError(400, "the request body must be a JSON object with \"instances\" or \"inputs\"")
    has_rows, has_cols = "instances" in request, "inputs" in request
    if has_rows == has_cols:
        raise RequestError(400, "send exactly one of \"instances\" (row format) or \"inputs\" (columnar format)"
                           if has_rows else "missing \"instances\" or \"inputs\" in the request")
    if spec is not None and sig.name in RAW_SIGNATURES:
        payload = request["instances"] if has_rows else request["inputs"]
        return raw_signature_inputs(payload, has_rows, sig, limits, spec, may_hold_bool), has_rows
    if has_rows:
        columns = _row_columns(request["instances"], sig, limits, spec)
    else:
        columns = _named_columns(request["inputs"], sig, limits, spec)
    return {n: to_tensor(n, columns[n], sig.inputs[n], limits, may_hold_bool) for n in list(sig.inputs)}, has_rows


def format_predict(outputs: dict[str, np.ndarray], row_format: bool) -> dict:
    """TF Serving's response shapes: rows -> {"predictions": [...]}, columns -> {"outputs": ...}."""
    lists = {k: v.tolist() for k, v in outputs.items()}  # one numpy -> Python conversion per output
    if not row_format:
        return {"outputs": next(iter(lists.values())) if len(lists) == 1 else lists}
    if len(lists) == 1:
        return {"predictions": next(iter(lists.values()))}
    batch = {len(v) if isinstance(v, list) else -1 for v in lists.values()}
    if len(batch) != 1:
        raise RequestError(400, "the outputs do not share a batch dimension, so they cannot be split into rows; "
                                "send the columnar format (\"inputs\") instead")
    keys = list(lists)
    return {"predictions": [dict(zip(keys, row)) for row in zip(*lists.values())]}


@dataclass(frozen=True)
class Prepared:
    """A validated :predict request, ready for TensorFlow."""

    signature: Signature
    inputs: dict[str, np.ndarray]  # name -> array of the spec's dtype, e.g. features [B, F] float32
    row_format: bool


def prepare(model: ServedModel, body: bytes, limits: Limits) -> Prepared:
    """Body bytes -> validated tensors, or a RequestError: everything before TensorFlow runs."""
    request = loads(body)
    sig = model.signature(request.get("signature_name") if isinstance(request, dict) else None)
    inputs, row_format = parse_predict(request, sig, limits, may_hold_bool=b"true" in body or b"false" in body,
                                       spec=getattr(model, "spec", None))
    check_budget(sig, inputs, limits)
    return Prepared(sig, inputs, row_format)


def finish(p: Prepared, limits: Limits | None = None, slots: threading.Semaphore | None = None) -> bytes:
    """Run the signature and shape the response as TF Serving does. `slots`: the model-call semaphore, waited for
    up to `limits.timeout` (then a 503)."""
    if slots is not None and not slots.acquire(timeout=(limits or Limits()).timeout):
        raise RequestError(503, f"the server is busy ({(limits or Limits()).max_concurrency} model calls running for "
                                f"over {(limits or Limits()).timeout:g} s); retry later")
    try:
        outputs = p.signature.run(p.inputs)
    except Exception as e:  # e.g. tf.errors.InvalidArgumentError from an op on odd (but well-typed) input
        first = first_line(e)
        raise RequestError(400, f"{type(e).__name__}: {first}") from None
    finally:
        if slots is not None:
            slots.release()
    if limits is not None:  # the estimate before the call is a bound on shapes; this is the real count
        check_response_size(sum(int(v.size) for v in outputs.values()), limits)
    return dumps(format_predict(outputs, p.row_format))


def predict(model: ServedModel, body: bytes, limits: Limits, slots: threading.Semaphore | None = None) -> bytes:
    """The whole :predict handler minus HTTP: body bytes -> response bytes (or a RequestError)."""
    return finish(prepare(model, body, limits), limits, slots)


# ---------------------------------------------------------------- the app


def create_app(model_base_or_version_dir: Path, name: str, max_batch: int = DEFAULT_MAX_BATCH,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_scalar: int = DEFAULT_MAX_SCALAR,
               mode: str = "auto", max_work: int = DEFAULT_MAX_WORK,
               max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES, timeout: float = DEFAULT_TIMEOUT,
               max_concurrency: int = DEFAULT_MAX_CONCURRENCY):
    """A FastAPI app serving one SavedModel version under `name`.

    `mode` says where a :predict request runs. "inline": on the event loop, no thread hop (the
    lowest latency for small requests, and under load a plain FIFO with tight tails). "thread":
    in Starlette's thread pool (TF releases the GIL, so two cores can run two calls, and the loop
    stays free during a long call). "auto" (default): small bodies for signatures without scalar
    inputs inline; big bodies, and signatures whose scalar input sets the work (num_samples), in
    the pool, so no request can stall the loop for long. bench/bench_serving.py measures all three.

    Every request is priced before TensorFlow runs (`check_budget`: draws x rows x steps against `max_work`, the
    answer's size against `max_response_bytes`: a 400 naming the limit). Calls in the pool share `max_concurrency`
    slots (a semaphore); a request that waits for one, or runs, longer than `timeout` seconds gets a 503 / 504 (the
    call itself cannot be interrupted; it finishes and frees its slot). A client that disconnects mid-body is one log
    line.
    """
    from fastapi import FastAPI

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    model = ServedModel(model_base_or_version_dir, name)
    limits = Limits(max_batch=max_batch, max_body_bytes=max_body_bytes, max_scalar=max_scalar, max_work=max_work,
                    max_response_bytes=max_response_bytes, timeout=timeout, max_concurrency=max_concurrency)
    app = FastAPI(title=f"bdk serve: {name}", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.model = model
    app.state.limits = limits
    _error_handlers(app)
    _routes(app, model, limits, mode, threading.BoundedSemaphore(max_concurrency))
    return app


# ---------------------------------------------------------------- the HTTP protocol around `predict`


def _error_handlers(app) -> None:
    """Every error is TF Serving's one-line body, {"error": message}, with its status."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, e: RequestError):
        return error(e.status, e.message)

    @app.exception_handler(StarletteHTTPException)  # unknown paths and methods: TF Serving's body, not FastAPI's
    async def _http_error(request: Request, e: StarletteHTTPException):
        return error(e.status_code, f"{request.method} {request.url.path}: {e.detail}")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        return error(400, f"invalid request: {e.errors()[0].get('msg', '') if e.errors() else ''}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):  # pragma: no cover - a bug, but still one JSON line
        log.exception("unexpected error on %s", request.url.path)
        return error(500, f"internal error: {type(e).__name__}")


def check_servable(model: ServedModel, model_name: str, version: str | None = None) -> None:
    """A 404 in TF Serving's words unless the request names the served model (and its version)."""
    if model_name != model.name:
        raise RequestError(404, f"Servable not found for request: Latest({model_name})")
    if version is not None and version != str(model.version):
        raise RequestError(404, f"Servable not found for request: Specific({model_name}, {version})")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or a 413 when it (or its declared length) is over `limit` bytes (an oversized body is drained
    up to _DRAIN_BYTES so the client reads the answer)."""
    declared = request.headers.get("content-length", "")
    too_big = declared.isdigit() and int(declared) > limit
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            too_big = True
        if too_big:
            if size > _DRAIN_BYTES:
                break
            continue
        chunks.append(chunk)
    if too_big:
        raise RequestError(413, f"request body of {declared or size} bytes is over the limit of {limit} bytes")
    return b"".join(chunks)


async def in_pool(fn, *args, timeout: float) -> bytes:
    """fn(*args) in Starlette's thread pool, or a 504 after `timeout` seconds."""
    import asyncio

    from starlette.concurrency import run_in_threadpool

    try:
        return await asyncio.wait_for(run_in_threadpool(fn, *args), timeout=timeout)
    except asyncio.TimeoutError:
        raise RequestError(504, f"the request took longer than {timeout:g} s (--timeout); send fewer draws, "
                                "rows or steps") from None


def _routes(app, model: ServedModel, limits: Limits, mode: str, slots: threading.Semaphore) -> None:
    """TF Serving's REST routes: status, metadata and :predict (by name, or by name and version)."""
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect

    async def run_predict(request: Request, model_name: str, version: str | None) -> Response:
        check_servable(model, model_name, version)
        try:
            body = await read_body(request, limits.max_body_bytes)
        except ClientDisconnect:
            log.warning("client %s disconnected before sending the whole request body", _peer(request))
            return Response(status_code=499)
        if mode == "thread" or (mode == "auto" and len(body) > INLINE_MAX_BODY_BYTES):
            prepared = prepare(model, body, limits) if len(body) <= INLINE_MAX_BODY_BYTES else \
                await run_in_threadpool(prepare, model, body, limits)  # parsing a big body off the loop
            out = await in_pool(finish, prepared, limits, slots, timeout=limits.timeout)
        else:
            prepared = prepare(model, body, limits)  # small body: microseconds
            if mode == "auto" and prepared.signature.scalar_inputs:
                out = await in_pool(finish, prepared, limits, slots, timeout=limits.timeout)
            else:
                out = finish(prepared, limits)
        return Response(out, media_type="application/json")

    @app.get("/v1/models/{model_name}")
    @app.get("/v1/models/{model_name}/versions/{version}")
    async def status(model_name: str, version: str | None = None):
        check_servable(model, model_name, version)
        return model.status()

    @app.get("/v1/models/{model_name}/metadata")
    @app.get("/v1/models/{model_name}/versions/{version}/metadata")
    async def metadata(model_name: str, version: str | None = None):
        check_servable(model, model_name, version)
        return model.metadata()

    # Plain Starlette routes inside the FastAPI app (same middleware and error handlers): the endpoint
    # reads the raw body itself, so FastAPI's per-request dependency solving would only cost time
    # (~0.1 ms of a ~1.2 ms request, bench/bench_serving.py). Starlette matches "{model_name}:predict"
    # by regex: [^/]+ backtracks to leave ":predict" to the literal suffix.
    async def predict_route(request: Request) -> Response:
        params = request.path_params
        return await run_predict(request, params["model_name"], params.get("version"))

    app.add_route("/v1/models/{model_name}:predict", predict_route, methods=["POST"], include_in_schema=False)
    app.add_route("/v1/models/{model_name}/versions/{version}:predict", predict_route, methods=["POST"],
                  include_in_schema=False)


def _peer(request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "?"


def default_name(export_dir: Path) -> str:
    """TF Serving needs a model name: RUN/student/export -> "student", RUN/teacher/export/1 -> "teacher"."""
    path = Path(export_dir).resolve()
    if path.name.isdigit():
        path = path.parent
    if path.name == "export":
        path = path.parent
    return path.name or "default"


def configure_threads(inter_op: int = 2, intra_op: int = 1) -> None:
    """Thread pools for many tiny requests: no intra-op splitting of [1, F] matmuls, two ops at a time.

    Measured on 2 cores (bench/bench_serving.py): the teacher's 10-draw call goes from ~2.5 to ~2.0 ms
    at p50. Only possible before TensorFlow's runtime starts, so `serve` calls it first; the
    TF_NUM_INTEROP_THREADS / TF_NUM_INTRAOP_THREADS environment variables take precedence.
    """
    import os

    import tensorflow as tf

    try:
        if "TF_NUM_INTEROP_THREADS" not in os.environ:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
        if "TF_NUM_INTRAOP_THREADS" not in os.environ:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    except RuntimeError:  # the runtime is already up (e.g. inside tests): keep its pools
        log.debug("TensorFlow already initialized; thread pools unchanged")


def _check_port(host: str, port: int) -> None:
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            s.bind((host, port))
    except OSError as e:
        raise BdkError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port or --host") from None


def serve(export_dir: Path, name: str | None = None, host: str = "127.0.0.1", port: int = 8501,
          max_batch: int = DEFAULT_MAX_BATCH, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
          mode: str = "auto", max_work: int = DEFAULT_MAX_WORK, max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
          timeout: float = DEFAULT_TIMEOUT, max_concurrency: int = DEFAULT_MAX_CONCURRENCY) -> None:
    """Load the export and serve it with uvicorn until interrupted (the `bdk serve` command)."""
    import uvicorn

    resolve_export(export_dir)  # a missing export or a busy port is a one-line error before TensorFlow loads
    _check_port(host, port)
    name = name or default_name(export_dir)
    configure_threads()
    app = create_app(export_dir, name, max_batch=max_batch, max_body_bytes=max_body_bytes, mode=mode, max_work=max_work,
                     max_response_bytes=max_response_bytes, timeout=timeout, max_concurrency=max_concurrency)
    model: ServedModel = app.state.model
    print(f"serving {name!r} version {model.version} from {model.path} (signatures: {', '.join(sorted(model.signatures))})")
    print(f"  http://{host}:{port}/v1/models/{name}:predict", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


class BackgroundServer:
    """uvicorn in a daemon thread on a free loopback port, for tests and benchmarks: `with BackgroundServer(app) as s: s.url`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, name="bdk-serve", daemon=True)
        self.url = ""

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
