"""Save and load model artifacts: safetensors weights and state plus a JSON manifest.

Layout of an artifact directory:
    weights.safetensors   model state_dict
    state.safetensors     user_history [n_users+1, H] int64
    manifest.json         format, kind, version, ids, hparams, metrics, checksums, ...
Nothing is ever unpickled. Artifacts written before item_popularity was dropped also hold an
item_popularity [n_items+1] float32 tensor in state.safetensors; loading accepts and ignores it.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from safetensors.torch import load_file, save_file

from models.base import MODEL_REGISTRY, Reranker, get_model_class
from models.features import feature_rows
from models.store import created_at, rename_into_place

FORMAT = 1
WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "state.safetensors"
MANIFEST_FILE = "manifest.json"

# safetensors' own limit on the JSON header; a longer one is a damaged or hostile file.
MAX_HEADER_BYTES = 100_000_000
# The dtype names of the safetensors format.
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class FutureArtifactError(ValueError):
    """An artifact created later than the caller accepts: its version would outrank every
    model published after it (versions are ordered by creation time)."""


@dataclass
class ModelBundle:
    """A loaded artifact, ready to score.

    Attributes:
        model: The model in eval mode with requires_grad False on every parameter.
        manifest: Parsed manifest.json.
        item_index: Item id -> row (1..n_items).
        item_ids: Row -> item id; item_ids[0] = "" (unknown).
        user_index: User id -> row (1..n_users).
        user_history: [n_users+1, H] int64 each known user's last H positive item rows at training
            time, 0-padded, most recent last (row 0 all zeros).
        name: Model kind.
        version: Unique artifact version.
        history_len: H.
        trained_through: Watermark given at training time, e.g. {"max_ts": ...} or Kafka offsets.
    """

    model: Reranker
    manifest: dict[str, Any]
    item_index: dict[str, int]
    item_ids: list[str]
    user_index: dict[str, int]
    user_history: np.ndarray
    name: str
    version: str
    history_len: int
    trained_through: dict[str, Any]
    # Per-bundle scratch space (e.g. numpy weight copies for the online update).
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def feature_vocab(self) -> list[str]:
        """Item feature names of the model (empty when it was trained without item metadata)."""
        return list(self.model.hparams.get("feature_vocab") or [])

    def register_items(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Apply item metadata (records of the `items` topic) to the model.

        With a model trained on item features: a known item's feature row is overwritten (same
        metadata, same row: re-applying a compacted topic changes nothing); an unknown item whose
        metadata has at least one in-vocabulary feature gets a new item row, scored from its
        features (and with an average item's id-specific parts), so `item_index`, scoring, user
        histories and online updates all handle it from then on. Unknown items without usable
        features stay unknown (row 0, the average item). Without item features this is a no-op.
        New rows are appended in one step, so pass a whole batch where there is one.

        Args:
            records: {"item_id", "genres"?, "tags"?, ...}; later records win for a repeated id.

        Returns:
            How many items were updated or added.
        """
        vocab = self.feature_vocab
        if not vocab:
            return 0
        latest: dict[str, Mapping[str, Any]] = {}
        for rec in records:
            if rec.get("item_id") is not None:
                latest[str(rec["item_id"])] = rec
        if not latest:
            return 0
        ids = list(latest)
        rows = feature_rows([latest[i] for i in ids], vocab)
        known = [(self.item_index[i], f) for i, f in zip(ids, rows) if i in self.item_index]
        new = [(i, f) for i, f in zip(ids, rows) if i not in self.item_index and f.any()]
        model = self.model
        if known:
            rows_t = torch.tensor([r for r, _ in known], dtype=torch.int64)
            model.set_item_features(rows_t, torch.from_numpy(np.stack([f for _, f in known])))
        if new:
            first = model.n_items + 1
            model.add_items(torch.from_numpy(np.stack([f for _, f in new])))
            for r, (i, _) in enumerate(new, start=first):
                self.item_ids.append(i)
                self.item_index[i] = r
        # Derived copies (e.g. the online update's numpy weights) are rebuilt on next use.
        self.cache.clear()
        return len(known) + len(new)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _row_ids(ids: list[Any], n: int, what: str) -> list[str]:
    """Accept ids with or without the leading "" of row 0; return them with it."""
    ids = [str(x) for x in ids]
    if len(ids) == n and (n == 0 or ids[0] != ""):
        ids = ["", *ids]
    if len(ids) != n + 1 or ids[0] != "":
        raise ValueError(f"{what}: expected {n} ids (optionally preceded by ''), got {len(ids)}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{what}: ids are not unique")
    return ids


def save_artifact(
    out_dir: str | Path,
    model: Reranker,
    *,
    item_ids: list[str],
    user_ids: list[str],
    user_history: np.ndarray,
    trained_through: dict[str, Any],
    hparams: dict[str, Any],
    metrics: dict[str, Any],
    event_weights: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write an artifact and publish it atomically at `out_dir`.

    Everything is written into a temporary sibling directory, flushed, then renamed into place.
    An existing `out_dir` is moved aside just before the rename and deleted after it.

    Args:
        out_dir: Destination directory.
        model: Trained model.
        item_ids: Row -> item id, with or without the leading "" of row 0.
        user_ids: Row -> user id, likewise.
        user_history: [n_users+1, H] int64 last positive item rows per user, most recent last.
        trained_through: Training watermark, stored verbatim.
        hparams: All hyper-parameters used (model and training), stored verbatim.
        metrics: Validation metrics, stored verbatim.
        event_weights: Event weights used, stored verbatim.
        extra: More top-level manifest keys (e.g. "training"); may not override reserved keys.

    Returns:
        The published directory.

    Raises:
        ValueError: Inconsistent shapes or ids.
    """
    out_dir = Path(out_dir)
    n_users, n_items, H = model.n_users, model.n_items, int(model.hparams["history_len"])
    item_ids = _row_ids(item_ids, n_items, "item_ids")
    user_ids = _row_ids(user_ids, n_users, "user_ids")
    hist = np.ascontiguousarray(user_history, dtype=np.int64)
    if hist.shape != (n_users + 1, H):
        raise ValueError(f"user_history shape {hist.shape} != {(n_users + 1, H)}")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state_dict, str(tmp / WEIGHTS_FILE))
        state = {"user_history": torch.from_numpy(hist)}
        save_file(state, str(tmp / STATE_FILE))
        now = datetime.now(UTC)
        digests = {name: _sha256(tmp / name) for name in (WEIGHTS_FILE, STATE_FILE)}
        salt = f"{digests[WEIGHTS_FILE]}{now.isoformat()}{uuid.uuid4().hex}"
        version = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{hashlib.sha256(salt.encode()).hexdigest()[:10]}"
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "kind": model.name,
            "version": version,
            "created": now.isoformat(),
            "hparams": hparams,
            "model_hparams": model.hparams,
            "n_users": n_users,
            "n_items": n_items,
            "history_len": H,
            "item_ids": item_ids,
            "user_ids": user_ids,
            "trained_through": trained_through,
            "event_weights": event_weights,
            "metrics": metrics,
            "training": {},
            "files": {name: {"sha256": d, "bytes": (tmp / name).stat().st_size} for name, d in digests.items()},
        }
        for k, v in (extra or {}).items():
            if k in manifest and k != "training":
                raise ValueError(f"extra may not override manifest key {k!r}")
            manifest[k] = v
        # NaN metrics (no validation users) are written as null: JSON has no NaN.
        manifest["metrics"] = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}
        (tmp / MANIFEST_FILE).write_bytes(
            orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        )
        rename_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def safetensors_header(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor in a safetensors file, from its header alone.

    The header is an 8-byte little-endian length and that much JSON; no tensor is read.

    Raises:
        ValueError: not a well-formed safetensors header.
    """
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("shorter than a safetensors header")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES:
            raise ValueError(f"header of {n} bytes exceeds {MAX_HEADER_BYTES}")
        body = f.read(n)
    try:
        header = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        dtype = SAFETENSORS_DTYPES.get(str(entry.get("dtype"))) if isinstance(entry, dict) else None
        if dtype is None or not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"tensor {name!r} has no valid dtype and shape")
        out[name] = (tuple(shape), dtype)
    return out


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def load_artifact(
    path: str | Path, *, max_bytes: int | None = None, created_not_after: float | None = None
) -> ModelBundle:
    """Load and validate an artifact directory.

    Checks the manifest (format, kind, required keys, id lists, creation time), the file sizes,
    every tensor's name, shape and dtype (from the safetensors headers) against the model the
    manifest describes and the size limit before anything is allocated, then the checksums,
    finite weights, history rows in range, and runs a smoke forward pass.

    Args:
        path: The artifact directory.
        max_bytes: Most bytes of tensors (weights, state and the model the manifest describes)
            accepted; None = no limit.
        created_not_after: Latest accepted creation time (seconds since the epoch); None = any.

    Raises:
        FutureArtifactError: Created after ``created_not_after``, or with no readable time.
        ValueError: Anything missing, corrupted, inconsistent or too large; the message says what.
    """
    path = Path(path)

    def check(cond: bool, what: str) -> None:
        if not cond:
            raise ValueError(f"artifact {path}: {what}")

    check(path.is_dir(), "not a directory")
    try:
        manifest = orjson.loads((path / MANIFEST_FILE).read_bytes())
    except FileNotFoundError:
        raise ValueError(f"artifact {path}: {MANIFEST_FILE} missing") from None
    except orjson.JSONDecodeError as e:
        raise ValueError(f"artifact {path}: {MANIFEST_FILE} is not valid JSON: {e}") from None
    check(isinstance(manifest, dict), "manifest is not a JSON object")
    if created_not_after is not None:
        try:
            created = created_at(manifest)
        except ValueError as e:
            raise FutureArtifactError(f"artifact {path}: {e}") from None
        if created is None or created > created_not_after:
            raise FutureArtifactError(
                f"artifact {path}: created {manifest.get('created')!r}, in the future beyond the allowed clock skew"
            )
    check(manifest.get("format") == FORMAT, f"unsupported format {manifest.get('format')!r} (expected {FORMAT})")
    kind = manifest.get("kind")
    check(kind in MODEL_REGISTRY, f"unknown model kind {kind!r}; known kinds: {sorted(MODEL_REGISTRY)}")
    required = ("version", "model_hparams", "n_users", "n_items", "history_len", "item_ids", "user_ids", "files")
    missing = [k for k in required if k not in manifest]
    check(not missing, f"manifest lacks {missing}")
    n_users, n_items, H = manifest["n_users"], manifest["n_items"], manifest["history_len"]
    for name, v in (("n_users", n_users), ("n_items", n_items), ("history_len", H)):
        check(isinstance(v, int) and v >= 0, f"manifest {name} must be a non-negative int, got {v!r}")
    for name, ids, n in (("item_ids", manifest["item_ids"], n_items), ("user_ids", manifest["user_ids"], n_users)):
        ok = isinstance(ids, list) and len(ids) == n + 1 and ids[:1] == [""]
        check(ok, f"{name} must list {n + 1} ids, '' first")
        check(len(set(ids)) == len(ids), f"{name} are not unique")

    files = manifest["files"] if isinstance(manifest["files"], dict) else {}
    for name in (WEIGHTS_FILE, STATE_FILE):
        f, want = path / name, files.get(name) or {}
        check(f.is_file(), f"{name} missing")
        size = f.stat().st_size
        check(size == want.get("bytes"), f"{name} has {size} bytes, manifest says {want.get('bytes')}")
    try:
        weights_header = safetensors_header(path / WEIGHTS_FILE)
        state_header = safetensors_header(path / STATE_FILE)
    except ValueError as e:
        raise ValueError(f"artifact {path}: cannot read safetensors: {e}") from None

    # The model is sized from the manifest alone, without building it, so a small manifest asking
    # for a huge model is refused before it can take the process's memory.
    hparams = manifest["model_hparams"]
    check(isinstance(hparams, dict), "model_hparams is not a JSON object")
    try:
        expected = get_model_class(kind).state_shapes(n_users, n_items, **hparams)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"artifact {path}: cannot build a {kind!r} model from the manifest: {e}") from None
    model_bytes = sum(_nbytes(*v) for v in expected.values())
    file_bytes = sum(_nbytes(*v) for v in (*weights_header.values(), *state_header.values()))
    if max_bytes is not None:
        check(
            max(model_bytes, file_bytes) <= max_bytes,
            f"the model takes {model_bytes} bytes and its files hold {file_bytes} bytes of tensors, "
            f"over the limit of {max_bytes} (max_model_bytes)",
        )
    extra, lacking = sorted(set(weights_header) - set(expected)), sorted(set(expected) - set(weights_header))
    check(not extra and not lacking, f"weight names differ: missing {lacking}, unexpected {extra}")
    for k, (shape, dtype) in expected.items():
        got_shape, got_dtype = weights_header[k]
        check(got_shape == shape, f"weight {k} has shape {got_shape}, expected {shape}")
        check(got_dtype == dtype, f"weight {k} has dtype {got_dtype}, expected {dtype}")
    # Older artifacts also hold item_popularity, which nothing reads.
    check(
        set(state_header) in ({"user_history"}, {"user_history", "item_popularity"}),
        f"state tensors are {sorted(state_header)}",
    )
    hist_shape, hist_dtype = state_header["user_history"]
    check(
        hist_dtype == torch.int64 and hist_shape == (n_users + 1, H),
        f"user_history is {hist_dtype} {hist_shape}, expected int64 {(n_users + 1, H)}",
    )

    for name in (WEIGHTS_FILE, STATE_FILE):
        check(_sha256(path / name) == files[name].get("sha256"), f"{name} checksum mismatch (corrupted)")
    try:
        weights = load_file(str(path / WEIGHTS_FILE))
        state = load_file(str(path / STATE_FILE))
    except Exception as e:  # noqa: BLE001  safetensors raises its own error types on bad files
        raise ValueError(f"artifact {path}: cannot read safetensors: {e}") from None
    for k, t in weights.items():
        check(bool(torch.isfinite(t).all()), f"weight {k} has non-finite values")
    model = get_model_class(kind)(n_users, n_items, **hparams)
    check(int(model.hparams.get("history_len", -1)) == H, f"model history_len != manifest history_len {H}")
    model.load_state_dict(weights, strict=True)
    model.eval()
    model.requires_grad_(False)
    hist = state["user_history"]
    check(bool(((hist >= 0) & (hist <= n_items)).all()), f"user_history has item rows outside 0..{n_items}")

    with torch.no_grad():
        rows = torch.tensor([0, min(1, n_users)])
        items = torch.tensor([[0, min(1, n_items)], [min(1, n_items), 0]])
        s = model(model.user_vectors()[rows], hist[rows], items)
    check(tuple(s.shape) == (2, 2) and bool(torch.isfinite(s).all()), "smoke forward pass failed")

    item_ids, user_ids = manifest["item_ids"], manifest["user_ids"]
    return ModelBundle(
        model=model,
        manifest=manifest,
        item_index={i: r for r, i in enumerate(item_ids) if r},
        item_ids=list(item_ids),
        user_index={u: r for r, u in enumerate(user_ids) if r},
        user_history=hist.numpy(),
        name=kind,
        version=str(manifest["version"]),
        history_len=H,
        trained_through=dict(manifest.get("trained_through") or {}),
    )
