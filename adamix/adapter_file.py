"""The adapter file (format version 4; see docs/adapter-format.md): write, read and validate.

Safetensors only: the header is bounded and parsed by hand before any tensor is read; every key,
shape, dtype and value is checked; nothing is ever unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from adamix.atomic import atomic_write
from adamix.backbone import BackboneInfo
from adamix.config import AdaMixConfig
from adamix.layers import FUSED_SLICES, dense_fused_b, pack_fused_b
from adamix.model import lora_slices, site_names
from adamix.task import TASK_KEYS, TaskSpec
from adamix.values import FLOAT32_MAX, out_of_range

FORMAT_NAME = "adamix-adapter"
FORMAT_VERSION = 4  # written; read: 1, 2 (adds pair_regression), 3 (adds embedding and task.embedding_dim), 4
READ_VERSIONS = (1, 2, 3, 4)
# The task types each version added: a file of an older version holding one is refused.
_TASK_TYPE_SINCE = {"pair_regression": 2, "embedding": 3}
FUSED_LORA_PACKED_SINCE = 4  # fused q|k|v LoRA (GPT-2 c_attn) per slice; before: one dense B, converted on read
MAX_HEADER_BYTES = 1 << 20
MAX_METADATA_BYTES = 64 << 10
MAX_FILE_BYTES = 256 << 20


class AdapterFileError(ValueError):
    """An adapter file that is malformed, inconsistent, or made for another backbone."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BackboneMismatchError(AdapterFileError):
    """The adapter was trained on a different backbone than the one it is being loaded into."""


@dataclass
class AdapterFile:
    """One merged task adapter: config, backbone identity, task, tensors (canonical keys) and provenance."""

    config: AdaMixConfig
    backbone: BackboneInfo
    task: TaskSpec
    tensors: dict[str, torch.Tensor]
    provenance: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def lora_scaling(self) -> float | None:
        return self.config.lora_scaling if self.kind == "lora" else None

    def metadata(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "config": self.config.to_dict(),
            "lora_scaling": self.lora_scaling,
            "backbone": self.backbone.to_dict(),
            "task": self.task.to_dict(),
            "provenance": self.provenance,
        }

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def sites(self) -> dict[str, AdapterWeights | LoRAWeights]:
        """Adapted layer (module path in the backbone) -> its merged weights."""
        out: dict[str, AdapterWeights | LoRAWeights] = {}
        for key in self.tensors:
            if key in HEAD_KEYS:
                continue
            kind, site, part = _split_key(key)
            if kind == "adapter" and part == "down.weight":
                out[site] = AdapterWeights(*(self.tensors[tensor_key(kind, site, p)] for p in _ADAPTER_PARTS))
            elif kind == "lora" and part == "A":
                out[site] = LoRAWeights(*(self.tensors[tensor_key(kind, site, p)] for p in _LORA_PARTS),
                                        lora_slices(self.config, self.backbone.model_type))
        return out

    @property
    def rank(self) -> int:
        """The largest bottleneck / LoRA rank over the adapted layers (0 with none); a fused q|k|v LoRA site
        counts n * r, the rank of the one plain LoRA it equals (what it takes in a server's pool)."""
        return max((w[0].shape[0] for w in self.sites().values()), default=0)

    @property
    def head(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(weight (C, d), bias (C,)) of the task head (an embedding task's projection); None without one."""
        if HEAD_WEIGHT not in self.tensors:
            return None
        return self.tensors[HEAD_WEIGHT], self.tensors[HEAD_BIAS]


# ---------------------------------------------------------------- tensor keys (built and parsed only here)

class AdapterWeights(NamedTuple):
    """A merged bottleneck adapter at one site: `h + up(gelu(down(h)))`."""

    down_weight: torch.Tensor  # (r, d)
    down_bias: torch.Tensor  # (r,)
    up_weight: torch.Tensor  # (d, r)
    up_bias: torch.Tensor  # (d,)


class LoRAWeights(NamedTuple):
    """A merged LoRA at one site: `base(x) + scaling * B(A(x))`, or per slice for a fused q|k|v projection."""

    A: torch.Tensor  # (r, in); fused: (n * r, in), target t's A_t in rows t * r .. (t + 1) * r
    B: torch.Tensor  # (out, r); fused: (n * out / 3, r), target t's B_t (out / 3, r) in block t
    slices: tuple[int, ...] | None = None  # fused: the q/k/v output slice of each target, in block order

    def dense_b(self) -> torch.Tensor:
        """B of the one plain LoRA (out, k) this site equals, k = A's rows: fused, zero off each target's block."""
        return self.B if self.slices is None else dense_fused_b(self.B, self.slices)


HEAD_WEIGHT, HEAD_BIAS = "head.weight", "head.bias"  # (C, d), (C,): the task head, absent without one
HEAD_KEYS = (HEAD_WEIGHT, HEAD_BIAS)
_ADAPTER_PARTS = ("down.weight", "down.bias", "up.weight", "up.bias")
_LORA_PARTS = ("A", "B")
_PARTS = {"adapter": _ADAPTER_PARTS, "lora": _LORA_PARTS}


def tensor_key(kind: str, site: str, part: str) -> str:
    """The file key of one tensor: `adapter.{site}.down.weight`, `lora.{site}.A`, ..."""
    if part not in _PARTS[kind]:
        raise ValueError(f"{kind} tensors have parts {_PARTS[kind]}, not {part!r}")
    return f"{kind}.{site}.{part}"


def _split_key(key: str) -> tuple[str, str, str]:
    """`adapter.{site}.down.weight` -> ("adapter", site, "down.weight")."""
    kind, _, rest = key.partition(".")
    for part in _PARTS.get(kind, ()):
        if rest.endswith("." + part):
            return kind, rest.removesuffix("." + part), part
    raise ValueError(f"not an adapter tensor key: {key!r}")


def expected_shapes(config: AdaMixConfig, backbone: BackboneInfo, task: TaskSpec,
                    version: int = FORMAT_VERSION) -> dict[str, tuple[int, ...]]:
    """Every key a valid file of `version` for (config, backbone, task) holds, with its shape."""
    d, r = backbone.hidden_size, config.lora_r
    slices = lora_slices(config, backbone.model_type)
    shapes: dict[str, tuple[int, ...]] = {}
    for site in site_names(config, backbone.model_type, backbone.num_layers):
        if config.kind == "adapter":
            b = config.bottleneck
            parts = dict(zip(_ADAPTER_PARTS, ((b, d), (b,), (d, b), (d,))))
        elif slices is None:
            parts = {"A": (r, d), "B": (d, r)}
        elif version >= FUSED_LORA_PACKED_SINCE:  # fused q|k|v: a rank-r pair per target, packed
            parts = {"A": (len(slices) * r, d), "B": (len(slices) * d, r)}
        else:  # before version 4: one dense (3d, n * r) B
            parts = {"A": (len(slices) * r, d), "B": (FUSED_SLICES * d, len(slices) * r)}
        shapes.update({tensor_key(config.kind, site, part): shape for part, shape in parts.items()})
    if task.num_outputs:
        shapes.update({HEAD_WEIGHT: (task.num_outputs, d), HEAD_BIAS: (task.num_outputs,)})
    return shapes


# ---------------------------------------------------------------- writing

def adapter_to_bytes(adapter: AdapterFile) -> bytes:
    check_tensors(adapter)
    try:
        metadata = json.dumps(adapter.metadata(), sort_keys=True, allow_nan=False)
    except ValueError as exc:
        raise AdapterFileError(f"metadata must be finite JSON: {exc}", "provenance") from None
    if len(metadata) > MAX_METADATA_BYTES:
        raise AdapterFileError(f"metadata is {len(metadata)} bytes, at most {MAX_METADATA_BYTES} allowed",
                               "provenance")
    return st_save(adapter.tensors, metadata={"adamix": metadata})


def write_adapter_file(path: str | os.PathLike, adapter: AdapterFile) -> str:
    """Write atomically (temp file, fsync, rename, directory fsync); return the file's sha256."""
    data = adapter_to_bytes(adapter)
    atomic_write(path, data)
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- reading

def read_adapter_file(path: str | os.PathLike, backbone: BackboneInfo | None = None,
                      max_bytes: int = MAX_FILE_BYTES) -> AdapterFile:
    """Read and validate an adapter file; with `backbone`, also refuse one made for another backbone."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise AdapterFileError(f"adapter file is {size} bytes, at most {max_bytes} allowed", "file")
    return read_adapter_bytes(path.read_bytes(), backbone)


def read_adapter_bytes(data: bytes, backbone: BackboneInfo | None = None) -> AdapterFile:
    """Validate then parse adapter bytes (see `read_adapter_file`)."""
    header = _parse_header(data)
    meta_json = header.pop("__metadata__", None)
    if not isinstance(meta_json, dict) or set(meta_json) != {"adamix"} or not isinstance(meta_json["adamix"], str):
        got = sorted(meta_json) if isinstance(meta_json, dict) else type(meta_json).__name__
        raise AdapterFileError(f"__metadata__ must be an object holding exactly the key 'adamix' (a JSON string), "
                               f"got {got}", "__metadata__")
    version, config, info, task, provenance = _parse_metadata(meta_json["adamix"])
    if backbone is not None:
        check_backbone(info, backbone)
    _check_header_entries(header, (expected := expected_shapes(config, info, task, version)))
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error types for corrupt offsets
        raise AdapterFileError(f"tensor data is corrupt: {exc}", "file") from None
    if version < FUSED_LORA_PACKED_SINCE:
        tensors = _pack_fused_lora(tensors, config, info, version)
    adapter = AdapterFile(config, info, task, tensors, provenance)
    check_tensors(adapter, expected if version >= FUSED_LORA_PACKED_SINCE else None)
    return adapter


def check_backbone(recorded: BackboneInfo, loaded: BackboneInfo) -> None:
    diffs = [f"{f}: adapter has {getattr(recorded, f)!r}, loaded backbone has {getattr(loaded, f)!r}"
             for f in ("model_type", "num_layers", "hidden_size", "fingerprint")
             if getattr(recorded, f) != getattr(loaded, f)]
    if diffs:
        raise BackboneMismatchError(
            f"adapter was made for backbone {recorded.name!r}, not the loaded {loaded.name!r}: " + "; ".join(diffs),
            "backbone")


_FOREIGN_MAGIC = ((b"PK\x03\x04", "a zip archive (e.g. torch.save)"), (b"\x80\x02", "a pickle"),
                  (b"\x80\x03", "a pickle"), (b"\x80\x04", "a pickle"), (b"\x80\x05", "a pickle"))


def _parse_header(data: bytes) -> dict:
    for magic, what in _FOREIGN_MAGIC:
        if data.startswith(magic):
            raise AdapterFileError(f"file is {what}, not safetensors; pickle-based files are never loaded", "file")
    if len(data) < 8:
        raise AdapterFileError(f"file is {len(data)} bytes: too short to be safetensors", "file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES:
        raise AdapterFileError(f"safetensors header declares {n} bytes, at most {MAX_HEADER_BYTES} allowed", "header")
    if 8 + n > len(data):
        raise AdapterFileError(f"file is truncated: header needs {8 + n} bytes, file has {len(data)}", "file")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, numbers too long, nesting too deep
        raise AdapterFileError(f"safetensors header is not valid JSON: {_brief(exc)}", "header") from None
    if not isinstance(header, dict):
        raise AdapterFileError("safetensors header must be a JSON object", "header")
    end = max((e.get("data_offsets", [0, 0])[1] for k, e in header.items()
               if k != "__metadata__" and isinstance(e, dict) and isinstance(e.get("data_offsets"), list)
               and len(e["data_offsets"]) == 2 and isinstance(e["data_offsets"][1], int)
               and 0 <= e["data_offsets"][1] <= len(data)), default=0)
    if 8 + n + end != len(data):
        raise AdapterFileError(f"file is {len(data)} bytes but its header describes {8 + n + end} (truncated or "
                               "padded)", "file")
    return header


def _parse_metadata(raw: str) -> tuple[int, AdaMixConfig, BackboneInfo, TaskSpec, dict]:
    """(format_version, config, backbone, task, provenance) of the metadata JSON, every field checked."""
    if len(raw) > MAX_METADATA_BYTES:
        raise AdapterFileError(f"metadata is {len(raw)} bytes, at most {MAX_METADATA_BYTES} allowed", "__metadata__")
    try:
        meta = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise AdapterFileError(f"metadata 'adamix' is not valid JSON: {_brief(exc)}", "__metadata__") from None
    _require(meta, dict, "metadata")
    if meta.get("format") != FORMAT_NAME:
        raise AdapterFileError(f"metadata.format must be {FORMAT_NAME!r}, got {meta.get('format')!r}", "format")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version not in READ_VERSIONS:
        raise AdapterFileError(f"metadata.format_version {ascii(version)[:40]} is not supported (this reader reads "
                               f"versions {list(READ_VERSIONS)})", "format_version")
    allowed = {"format", "format_version", "kind", "config", "lora_scaling", "backbone", "task", "provenance"}
    if set(meta) != allowed:
        raise AdapterFileError(f"metadata keys must be {sorted(allowed)}, got {sorted(meta)}", "metadata")
    try:
        config = AdaMixConfig.from_dict(_require(meta["config"], dict, "config"))
    except (TypeError, ValueError) as exc:
        raise AdapterFileError(f"metadata.config: {exc}", "config") from None
    if meta["kind"] != config.kind:
        raise AdapterFileError(f"metadata.kind {meta['kind']!r} differs from config.kind {config.kind!r}", "kind")
    if meta["lora_scaling"] != (config.lora_scaling if config.kind == "lora" else None):
        raise AdapterFileError(f"metadata.lora_scaling {meta['lora_scaling']!r} does not match the config",
                               "lora_scaling")
    b = _require(meta["backbone"], dict, "backbone")
    fields = {"name": str, "model_type": str, "num_layers": int, "hidden_size": int, "fingerprint": str}
    if set(b) != set(fields):
        raise AdapterFileError(f"metadata.backbone keys must be {sorted(fields)}, got {sorted(b)}", "backbone")
    for name, typ in fields.items():
        _require(b[name], typ, f"backbone.{name}")
    if not (0 < b["num_layers"] <= 256 and 0 < b["hidden_size"] <= 65536):
        raise AdapterFileError(f"metadata.backbone sizes out of range: {b}", "backbone")
    info = BackboneInfo(**b)
    t = _require(meta["task"], dict, "task")
    task_fields = set(TASK_KEYS) | ({"embedding_dim"} if version >= 3 else set())  # exact: since 3 embedding_dim
    if set(t) != task_fields:
        raise AdapterFileError(f"metadata.task keys must be {sorted(task_fields)} in format_version {version}, got "
                               f"{sorted(t)[:8]}", "task")
    _require(t["labels"], list, "task.labels")  # before from_dict, for this field name
    since = _TASK_TYPE_SINCE.get(t["type"]) if isinstance(t["type"], str) else None
    if since is not None and version < since:
        raise AdapterFileError(f"metadata.task.type {t['type']!r} needs format_version {since}", "task.type")
    try:
        task = TaskSpec.from_dict(t)
    except (ValueError, TypeError) as exc:
        raise AdapterFileError(f"metadata.task: {exc}", "task") from None
    provenance = _require(meta["provenance"], dict, "provenance")
    return version, config, info, task, provenance


def _brief(exc: Exception) -> str:
    """An exception's message, short (a parse error may quote megabytes)."""
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + " ..."


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not allowed in metadata (JSON numbers must be finite)")


def _require(value, typ: type, name: str):
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise AdapterFileError(f"metadata.{name} must be a {typ.__name__}, got {type(value).__name__}", name)
    return value


def _check_header_entries(header: dict, expected: dict[str, tuple[int, ...]]) -> None:
    extra = sorted(set(header) - set(expected))
    missing = sorted(set(expected) - set(header))
    if extra:
        raise AdapterFileError(f"unexpected tensor key(s) {extra[:5]} for this config and backbone", extra[0])
    if missing:
        raise AdapterFileError(f"missing tensor key(s) {missing[:5]}", missing[0])
    for key, shape in expected.items():
        entry = header[key]
        if not isinstance(entry, dict) or entry.get("dtype") != "F32":
            got = entry.get("dtype") if isinstance(entry, dict) else entry
            raise AdapterFileError(f"tensor {key!r} must have dtype F32, got {got!r}", key)
        if entry.get("shape") != list(shape):
            raise AdapterFileError(f"tensor {key!r} must have shape {list(shape)}, got {entry.get('shape')!r}", key)


def check_tensors(adapter: AdapterFile, expected: dict[str, tuple[int, ...]] | None = None) -> None:
    """Refuse tensors that are not exactly `expected` (default: this format's for the adapter) as finite float32."""
    if expected is None:
        expected = expected_shapes(adapter.config, adapter.backbone, adapter.task)
    if set(adapter.tensors) != set(expected):
        extra = sorted(set(adapter.tensors) - set(expected))
        missing = sorted(set(expected) - set(adapter.tensors))
        raise AdapterFileError(f"adapter tensors do not match the config: extra {extra[:5]}, missing {missing[:5]}",
                               (extra or missing)[0])
    for key, shape in expected.items():
        tensor = adapter.tensors[key]
        if tensor.dtype != torch.float32 or tuple(tensor.shape) != shape:
            raise AdapterFileError(f"tensor {key!r} must be float32 {list(shape)}, got {tensor.dtype} "
                                   f"{list(tensor.shape)}", key)
    _check_finite({key: adapter.tensors[key] for key in expected})


def _check_finite(tensors: dict[str, torch.Tensor]) -> None:
    if (bad := out_of_range(tensors, FLOAT32_MAX)) is not None:  # float32: NaN, or inf (beyond the largest finite)
        raise AdapterFileError(f"tensor {bad[0]!r} has non-finite values (NaN or inf)", bad[0])


def _pack_fused_lora(tensors: dict[str, torch.Tensor], config: AdaMixConfig, info: BackboneInfo,
                     version: int) -> dict[str, torch.Tensor]:
    """A pre-version-4 file's fused q|k|v LoRA B (3d, n * r) -> the per-slice (n * d, r): the masked zeros are
    dropped, every other value kept exactly; a non-zero value off its target's block is refused."""
    slices = lora_slices(config, info.model_type)
    if slices is None:
        return tensors
    out = dict(tensors)
    for site in site_names(config, info.model_type, info.num_layers):
        key = tensor_key("lora", site, "B")
        _check_finite({key: tensors[key]})  # checked first: a NaN would also fail the exact comparison
        out[key], exact = pack_fused_b(tensors[key], slices)
        if not exact:
            raise AdapterFileError(f"tensor {key!r} (format_version {version}, one dense (3d, n * r) B) is non-zero "
                                   f"outside the q/k/v slices of its targets {list(config.lora_targets)}: it cannot "
                                   "be converted to the per-slice layout of format_version 4", key)
    return out
