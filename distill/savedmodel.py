"""What the stages' SavedModel exports share: keeping Keras out of the saved object graph, and a fingerprint that
depends only on what was saved (byte-identical models, byte-identical exports)."""
from __future__ import annotations

import hashlib
from pathlib import Path


class Untracked:
    """Holds an object out of sight of TensorFlow's object tracking (and so of SavedModel)."""

    def __init__(self, value):
        self.value = value


def stabilise_fingerprint(version_dir: Path) -> str:
    """Replace the random `uuid` TensorFlow writes into fingerprint.pb with a digest of the export's other files (the
    graph, saved_model.pb, and the variables), so byte-identical teachers have byte-identical exports and share one
    fingerprint (`distill.transfer.export_fingerprint`). Returns the uuid written ("" when there is no fingerprint.pb)."""
    from tensorflow.core.protobuf import fingerprint_pb2

    version_dir = Path(version_dir)
    fp = version_dir / "fingerprint.pb"
    if not fp.exists():
        return ""
    digest = hashlib.sha256()
    for p in sorted(q for q in version_dir.rglob("*") if q.is_file() and q != fp):
        digest.update(f"{p.relative_to(version_dir).as_posix()}\0{p.stat().st_size}\0".encode())
        digest.update(p.read_bytes())
    proto = fingerprint_pb2.FingerprintDef()
    proto.ParseFromString(fp.read_bytes())
    proto.uuid = str(int.from_bytes(digest.digest()[:16], "big"))  # TF's own uuid is a decimal 128-bit number
    fp.write_bytes(proto.SerializeToString(deterministic=True))
    return proto.uuid
