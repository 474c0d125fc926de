"""The adapter file: round trips, and every crafted bad file refused with a specific error (no unpickling)."""
import hashlib
import io
import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from transformers import GPT2Config, GPT2LMHeadModel

from adamix import (AdaMixConfig, AdaMixTaskModel, AdapterFile, AdapterFileError, BackboneMismatchError, TaskSpec,
                    adapter_from_model, add_adamix, backbone_fingerprint, backbone_info, merge_adamix,
                    read_adapter_bytes, read_adapter_file, task_model_from_adapter, write_adapter_file)
from adamix.adapter_file import adapter_to_bytes
from tests.adamix.util import ARCHS, make_inputs, perturb_adapters
from tests.conftest import tiny_backbone

LABELS = ("negative", "positive")


def build_adapter(model_type: str, kind: str, task: TaskSpec | None = None, **config_kwargs):
    """(adapter file, the merged eval-mode task model it came from) for a tiny backbone."""
    backbone = tiny_backbone(model_type)
    info = backbone_info(backbone, f"tiny-{model_type}")
    task = task or TaskSpec("classification", LABELS, pooling="last" if model_type == "gpt2" else "mean")
    model = add_adamix(AdaMixTaskModel(backbone, task), AdaMixConfig(kind=kind, bottleneck=8, **config_kwargs))
    perturb_adapters(model)
    with torch.no_grad():
        model.head.bias.normal_(generator=torch.Generator().manual_seed(2))
    merge_adamix(model.eval())
    return adapter_from_model(model, info, task, {"dataset": "synthetic", "score": 0.5}), model


@pytest.fixture(scope="module")
def good() -> AdapterFile:
    return build_adapter("bert", "adapter")[0]


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("model_type", ARCHS)
@pytest.mark.parametrize("kind", ["adapter", "lora"])
def test_round_trip_gives_identical_outputs(tmp_path, model_type, kind):
    adapter, model = build_adapter(model_type, kind, placement="both")
    path = tmp_path / "task.safetensors"
    digest = write_adapter_file(path, adapter)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == ["task.safetensors"]  # no temp file left behind
    fresh = tiny_backbone(model_type)
    loaded = read_adapter_file(path, backbone=backbone_info(fresh, f"tiny-{model_type}"))
    assert loaded.metadata() == adapter.metadata()
    assert all(torch.equal(loaded.tensors[k], t) for k, t in adapter.tensors.items())
    served = task_model_from_adapter(fresh, loaded)
    inputs = make_inputs()
    with torch.no_grad():
        assert torch.equal(served(**inputs), model(**inputs))


def test_generation_adapter_round_trip_has_no_head(tmp_path):
    model = GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    info = backbone_info(model.transformer, "tiny-gpt2-lm")
    task = TaskSpec("generation", pooling="last")
    add_adamix(model, AdaMixConfig(kind="lora", num_experts=8, consistency_weight=100.0))
    perturb_adapters(model)
    adapter = adapter_from_model(merge_adamix(model), info, task)
    assert not any(k.startswith("head.") for k in adapter.tensors)
    write_adapter_file(tmp_path / "gen.safetensors", adapter)
    loaded = read_adapter_file(tmp_path / "gen.safetensors", backbone=info)
    assert loaded.task == task and loaded.config.num_experts == 8
    assert all(torch.equal(loaded.tensors[k], t) for k, t in adapter.tensors.items())


def test_fingerprint_is_the_same_before_and_after_injection():
    backbone = tiny_backbone("gpt2")
    before = backbone_fingerprint(backbone)
    add_adamix(backbone, AdaMixConfig(kind="lora"))
    assert backbone_fingerprint(backbone) == before
    assert backbone_fingerprint(tiny_backbone("gpt2", seed=1)) != before


def test_adapter_from_an_unmerged_model_is_refused():
    model = add_adamix(AdaMixTaskModel(tiny_backbone("bert"), TaskSpec("regression")), AdaMixConfig())
    with pytest.raises(ValueError, match="merge_adamix"):
        adapter_from_model(model, backbone_info(model.backbone, "tiny"), TaskSpec("regression"))


def test_writing_refuses_non_finite_tensors_and_metadata(tmp_path, good):
    bad = AdapterFile(good.config, good.backbone, good.task, dict(good.tensors), good.provenance)
    bad.tensors["head.bias"] = torch.tensor([0.0, float("nan")])
    with pytest.raises(AdapterFileError, match="non-finite") as info:
        write_adapter_file(tmp_path / "x.safetensors", bad)
    assert info.value.field == "head.bias"
    huge = AdapterFile(good.config, good.backbone, good.task, good.tensors, {"notes": "x" * (70 << 10)})
    with pytest.raises(AdapterFileError, match="metadata is"):
        adapter_to_bytes(huge)
    assert not list(tmp_path.iterdir())


def test_file_over_the_size_limit_is_refused_before_reading(tmp_path, good):
    path = tmp_path / "a.safetensors"
    write_adapter_file(path, good)
    with pytest.raises(AdapterFileError, match="at most 100 allowed"):
        read_adapter_file(path, max_bytes=100)


# ---------------------------------------------------------------- crafted bad files

def _file(tensors: dict, meta: dict | str | None) -> bytes:
    metadata = None if meta is None else {"adamix": meta if isinstance(meta, str) else json.dumps(meta)}
    return st_save(tensors, metadata=metadata)


def _with_tensors(adapter: AdapterFile, **changes) -> bytes:
    """The adapter's file with tensors replaced (value) or removed (None); keys use '__' for '.'."""
    tensors = dict(adapter.tensors)
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            tensors.pop(key)
        else:
            tensors[key] = value
    return _file(tensors, adapter.metadata())


def _with_meta(adapter: AdapterFile, path: str, value) -> bytes:
    """The adapter's file with metadata[path] (dotted) set to value; value DELETE removes the key."""
    meta = json.loads(json.dumps(adapter.metadata()))
    *parents, last = path.split(".")
    node = meta
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return _file(adapter.tensors, meta)


DELETE = object()
DOWN = "adapter.encoder.layer.0.output.dense.down.weight"  # (8, 32)


def _header_only(header: bytes, declared: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if declared is None else declared) + header


BAD_TENSORS = [
    ("extra-key", lambda a: _with_tensors(a, adapter__encoder__layer__0__output__dense__gate=torch.zeros(2)),
     "adapter.encoder.layer.0.output.dense.gate", "unexpected tensor key"),
    ("extra-head-key", lambda a: _with_tensors(a, head__scale=torch.ones(1)), "head.scale", "unexpected"),
    ("missing-key", lambda a: _with_tensors(a, head__bias=None), "head.bias", "missing tensor key"),
    ("missing-site", lambda a: _with_tensors(a, **{DOWN.replace(".", "__"): None}), DOWN, "missing"),
    ("wrong-shape", lambda a: _with_tensors(a, **{DOWN.replace(".", "__"): torch.zeros(32, 8)}), DOWN,
     r"must have shape \[8, 32\], got \[32, 8\]"),
    ("wrong-rank", lambda a: _with_tensors(a, head__bias=torch.zeros(2, 1)), "head.bias", "shape"),
    ("nan", lambda a: _with_tensors(a, head__weight=a.tensors["head.weight"].clone().index_fill_(1, torch.tensor([3]),
                                                                                              float("nan"))),
     "head.weight", "non-finite"),
    ("inf", lambda a: _with_tensors(a, **{DOWN.replace(".", "__"): a.tensors[DOWN].clone().fill_(-float("inf"))}),
     DOWN, "non-finite"),
    ("f16", lambda a: _with_tensors(a, head__bias=torch.zeros(2, dtype=torch.float16)), "head.bias",
     "dtype F32, got 'F16'"),
    ("f64", lambda a: _with_tensors(a, head__bias=torch.zeros(2, dtype=torch.float64)), "head.bias",
     "dtype F32, got 'F64'"),
    ("bf16", lambda a: _with_tensors(a, head__bias=torch.zeros(2, dtype=torch.bfloat16)), "head.bias", "'BF16'"),
    ("int", lambda a: _with_tensors(a, head__bias=torch.zeros(2, dtype=torch.int32)), "head.bias", "'I32'"),
]

BAD_CONTAINER = [
    ("truncated", lambda a: adapter_to_bytes(a)[:-7], "file", "truncated"),
    ("truncated-in-header", lambda a: adapter_to_bytes(a)[:200], "file", "truncated: header needs"),
    ("padded", lambda a: adapter_to_bytes(a) + b"\0\0\0\0", "file", "truncated or padded"),
    ("too-short", lambda a: b"\x10\0\0", "file", "too short"),
    ("empty", lambda a: b"", "file", "too short"),
    ("huge-header", lambda a: _header_only(b"{}", declared=1 << 40), "header", "header declares 1099511627776 bytes"),
    ("header-just-over-limit", lambda a: _header_only(b" " * ((1 << 20) + 1)), "header", "at most 1048576"),
    ("header-not-json", lambda a: _header_only(b"{not json at all"), "header", "not valid JSON"),
    ("header-not-utf8", lambda a: _header_only(b"\xff\xfe{}"), "header", "not valid JSON"),
    ("header-a-list", lambda a: _header_only(b"[1, 2]"), "header", "JSON object"),
    ("no-metadata", lambda a: _file(a.tensors, None), "__metadata__", "exactly the key 'adamix'"),
    ("metadata-other-key", lambda a: st_save(a.tensors, metadata={"format": "pt"}), "__metadata__", "'adamix'"),
    ("metadata-a-list", lambda a: _header_only(b'{"__metadata__": ["adamix"]}'), "__metadata__", "got list"),
    ("metadata-not-a-string", lambda a: _header_only(b'{"__metadata__": {"adamix": {"format": 1}}}'),
     "__metadata__", "a JSON string"),
    ("metadata-not-json", lambda a: _file(a.tensors, "{format: adamix"), "__metadata__", "not valid JSON"),
    ("metadata-nan", lambda a: _file(a.tensors, json.dumps(a.metadata()).replace('"score": 0.5', '"score": NaN')),
     "__metadata__", "NaN is not allowed"),
    ("metadata-too-large", lambda a: _with_meta(a, "provenance.notes", "x" * (65 << 10)), "__metadata__",
     "at most 65536"),
    ("corrupt-offsets", lambda a: _corrupt_offsets(adapter_to_bytes(a)), "file", "corrupt"),
]

BAD_METADATA = [
    ("format-name", "format", "safetensors-lora", "format", "must be 'adamix-adapter'"),
    ("format-version-5", "format_version", 5, "format_version", "5 is not supported"),
    ("format-version-huge", "format_version", 10 ** 40, "format_version", "not supported"),
    ("format-version-string", "format_version", "1", "format_version", "not supported"),
    ("extra-metadata-key", "signature", "abc", "metadata", "metadata keys must be"),
    ("missing-task", "task", DELETE, "metadata", "metadata keys must be"),
    ("unknown-config-field", "config.gate", "softmax", "config", r"no field\(s\) \['gate'\]"),
    ("invalid-config-value", "config.num_experts", 0, "config", "AdaMixConfig.num_experts"),
    ("config-not-object", "config", ["adapter"], "config", "must be a dict"),
    ("kind-mismatch", "kind", "lora", "kind", "differs from config.kind"),
    ("lora-scaling-for-adapter", "lora_scaling", 8.0, "lora_scaling", "does not match"),
    ("backbone-missing-field", "backbone.fingerprint", DELETE, "backbone", "keys must be"),
    ("backbone-layers-string", "backbone.num_layers", "2", "backbone.num_layers", "must be a int, got str"),
    ("backbone-layers-bool", "backbone.num_layers", True, "backbone.num_layers", "got bool"),
    ("backbone-hidden-zero", "backbone.hidden_size", 0, "backbone", "out of range"),
    ("labels-duplicate", "task.labels", ["pos", "pos"], "task", "distinct"),
    ("labels-one", "task.labels", ["only"], "task", ">= 2"),
    ("labels-not-strings", "task.labels", [0, 1], "task", "printable"),
    ("labels-lone-surrogate", "task.labels", ["ok", "\ud800"], "task", "printable"),
    ("labels-control-characters", "task.labels", ["ok", "a\x1bb"], "task", "printable"),
    ("labels-too-long", "task.labels", ["ok", "x" * 129], "task", "1-128"),
    ("labels-not-a-list", "task.labels", "negative,positive", "task.labels", "must be a list"),
    ("labels-disagree-with-head", "task.labels", ["a", "b", "c"], "head.weight", r"shape \[3, 32\]"),
    ("task-type", "task.type", "ranking", "task", "TaskSpec.type"),
    ("task-pooling", "task.pooling", "max", "task", "TaskSpec.pooling"),
    ("task-extra-field", "task.prompt", "hi", "task", "task keys must be"),
    ("task-embedding-dim-missing", "task.embedding_dim", DELETE, "task", "task keys must be"),
    ("embedding-dim-for-classification", "task.embedding_dim", 2, "task", "TaskSpec.embedding_dim"),
    ("max-seq-len-zero", "task.max_seq_len", 0, "task", "TaskSpec.max_seq_len"),
    ("max-seq-len-bool", "task.max_seq_len", True, "task", "TaskSpec.max_seq_len"),
    ("provenance-not-object", "provenance", "synthetic", "provenance", "must be a dict"),
]


def _corrupt_offsets(data: bytes) -> bytes:
    """Point the first tensor's data at the second one's bytes (overlap), keeping the file length."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    keys = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    first, second = header[keys[0]], header[keys[1]]
    first["data_offsets"] = [second["data_offsets"][0], second["data_offsets"][0] + first["data_offsets"][1]
                             - first["data_offsets"][0]]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


def _assert_refused(data: bytes, field: str, match: str) -> AdapterFileError:
    with pytest.raises(AdapterFileError, match=match) as info:
        read_adapter_bytes(data)
    assert info.value.field == field, str(info.value)
    return info.value


@pytest.mark.parametrize("name, make, field, match", BAD_TENSORS, ids=[c[0] for c in BAD_TENSORS])
def test_bad_tensors_are_refused(good, name, make, field, match):
    _assert_refused(make(good), field, match)


@pytest.mark.parametrize("name, make, field, match", BAD_CONTAINER, ids=[c[0] for c in BAD_CONTAINER])
def test_bad_containers_are_refused(good, name, make, field, match):
    _assert_refused(make(good), field, match)


@pytest.mark.parametrize("name, path, value, field, match", BAD_METADATA, ids=[c[0] for c in BAD_METADATA])
def test_bad_metadata_is_refused(good, name, path, value, field, match):
    _assert_refused(_with_meta(good, path, value), field, match)


def _as_version(adapter: AdapterFile, version: int) -> bytes:
    """The adapter's file as an older writer wrote it: that format_version, no task.embedding_dim before 3."""
    meta = json.loads(json.dumps(adapter.metadata()))
    meta["format_version"] = version
    if version < 3:
        del meta["task"]["embedding_dim"]
    return _file(adapter.tensors, meta)


def test_version_1_and_2_files_are_still_read_but_cannot_hold_later_task_types(good):
    assert read_adapter_bytes(_as_version(good, 1)).task == good.task
    assert read_adapter_bytes(_as_version(good, 2)).task == good.task
    pair = AdapterFile(good.config, good.backbone, TaskSpec("pair_regression"),
                       {**good.tensors, "head.weight": good.tensors["head.weight"][:1],
                        "head.bias": good.tensors["head.bias"][:1]})
    _assert_refused(_as_version(pair, 1), "task.type", "needs format_version 2")
    assert read_adapter_bytes(_as_version(pair, 2)).task == pair.task
    embedding = build_embedding_adapter(None)[0]
    _assert_refused(_as_version(embedding, 2), "task.type", "needs format_version 3")
    _assert_refused(_with_meta(embedding, "format_version", 2), "task", "task keys must be")  # v3 keys in a v2 file


# ---------------------------------------------------------------- embedding tasks (format version 3)

def build_embedding_adapter(dim: int | None, model_type: str = "bert"):
    """(adapter file, merged model) of an embedding task: no head, or a (dim, d) projection."""
    backbone = tiny_backbone(model_type)
    task = TaskSpec("embedding", (), pooling="mean", embedding_dim=dim)
    model = add_adamix(AdaMixTaskModel(backbone, task), AdaMixConfig(kind="adapter", bottleneck=8))
    perturb_adapters(model)
    merge_adamix(model.eval())
    return adapter_from_model(model, backbone_info(backbone, f"tiny-{model_type}"), task), model


@pytest.mark.parametrize("dim", [None, 5])
def test_embedding_adapters_round_trip_to_unit_vectors(tmp_path, dim):
    adapter, model = build_embedding_adapter(dim)
    assert (adapter.head is None) == (dim is None) and adapter.metadata()["format_version"] == 4
    path = tmp_path / "e.safetensors"
    write_adapter_file(path, adapter)
    loaded = read_adapter_file(path, backbone=adapter.backbone)
    assert loaded.task == adapter.task and set(loaded.tensors) == set(adapter.tensors)
    served = task_model_from_adapter(tiny_backbone("bert"), loaded)
    inputs = make_inputs()
    with torch.no_grad():
        out, expected = served(**inputs), model(**inputs)
    assert out.shape == (3, dim or 32) and torch.equal(out, expected)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-6)


BAD_EMBEDDING_METADATA = [
    ("dim-zero", "task.embedding_dim", 0, "task", r"in \[1, 8192\]"),
    ("dim-huge", "task.embedding_dim", 10 ** 30, "task", "embedding_dim"),
    ("dim-bool", "task.embedding_dim", True, "task", "embedding_dim"),
    ("dim-string", "task.embedding_dim", "5", "task", "embedding_dim"),
    ("dim-disagrees-with-projection", "task.embedding_dim", 6, "head.weight", r"shape \[6, 32\]"),
    ("projection-dropped", "task.embedding_dim", None, "head.bias", "unexpected tensor key"),
    ("labels-on-embedding", "task.labels", ["a", "b"], "task", "must be empty for embedding"),
]


@pytest.mark.parametrize("name, path, value, field, match", BAD_EMBEDDING_METADATA,
                         ids=[c[0] for c in BAD_EMBEDDING_METADATA])
def test_hostile_embedding_metadata_is_refused(name, path, value, field, match):
    adapter, _ = build_embedding_adapter(5)
    _assert_refused(_with_meta(adapter, path, value), field, match)


def test_an_embedding_file_without_projection_may_not_carry_head_tensors():
    adapter, _ = build_embedding_adapter(None)
    _assert_refused(_with_tensors(adapter, head__weight=torch.zeros(3, 32), head__bias=torch.zeros(3)), "head.bias",
                    "unexpected tensor key")


@pytest.mark.parametrize("header", [b"[" * 200_000 + b"]" * 200_000, b'{"a": ' + b"9" * 5000 + b"}"],
                         ids=["nested-200000-deep", "integer-5000-digits"])
def test_hostile_headers_are_refused_not_crashed_on(header):
    data = struct.pack("<Q", len(header)) + header
    _assert_refused(data, "header", "not valid JSON")


def test_lora_scaling_must_match_the_config():
    adapter, _ = build_adapter("bert", "lora")
    _assert_refused(_with_meta(adapter, "lora_scaling", 4.0), "lora_scaling", "does not match")
    _assert_refused(_with_meta(adapter, "lora_scaling", None), "lora_scaling", "does not match")


# ---------------------------------------------------------------- GPT-2 fused LoRA: per slice since version 4

OLD_FILE = Path(__file__).parent / "data" / "gpt2_lora_format3.safetensors"  # see data/README.md
QKV = ("query", "key", "value")


def _dense_b(packed: torch.Tensor, targets: tuple[str, ...], d: int, r: int) -> torch.Tensor:
    """How writers before version 4 stored a fused B: (3d, n * r), target t's (d, r) block at (its slice, its
    columns), zero elsewhere (written out here, independently of the library)."""
    dense = torch.zeros(3 * d, len(targets) * r)
    for t, target in enumerate(targets):
        i = QKV.index(target)
        dense[i * d:(i + 1) * d, t * r:(t + 1) * r] = packed[t * d:(t + 1) * d]
    return dense


def _as_old_gpt2_file(adapter: AdapterFile, version: int, **dense_changes) -> bytes:
    """The fused-LoRA adapter as a version-`version` writer wrote it; dense_changes: key -> f(dense B)."""
    d, r, targets = adapter.backbone.hidden_size, adapter.config.lora_r, adapter.config.lora_targets
    tensors = {k: (_dense_b(t, targets, d, r) if k.endswith(".B") else t) for k, t in adapter.tensors.items()}
    for key, change in dense_changes.items():
        tensors[key.replace("__", ".")] = change(tensors[key.replace("__", ".")].clone())
    meta = json.loads(json.dumps(adapter.metadata()))
    meta["format_version"] = version
    if version < 3:
        del meta["task"]["embedding_dim"]
    return _file(tensors, meta)


@pytest.mark.parametrize("targets", [("query", "value"), ("value", "query"), ("key",), QKV])
def test_gpt2_fused_lora_is_stored_per_slice_without_zeros(targets):
    adapter, _ = build_adapter("gpt2", "lora", lora_targets=targets, lora_r=4)
    n, d, r = len(targets), 32, 4
    lora = {k: tuple(t.shape) for k, t in adapter.tensors.items() if k.startswith("lora.")}
    shapes = {"A": (n * r, d), "B": (n * d, r)}  # a rank-r pair per target, nothing for the other slices
    assert lora == {f"lora.h.{i}.attn.c_attn.{p}": shape for i in range(2) for p, shape in shapes.items()}
    data = adapter_to_bytes(adapter)
    assert json.loads(json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])["__metadata__"]["adamix"])[
        "format_version"] == 4
    assert all(t.any(dim=1).all() for k, t in adapter.tensors.items() if k.endswith(".B"))  # no stored zero row


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("targets", [("query", "value"), ("value", "query"), ("key",), QKV])
def test_older_gpt2_fused_lora_files_are_converted_exactly_on_read(version, targets):
    adapter, model = build_adapter("gpt2", "lora", lora_targets=targets, lora_r=4)
    loaded = read_adapter_bytes(_as_old_gpt2_file(adapter, version), backbone=adapter.backbone)
    assert set(loaded.tensors) == set(adapter.tensors)
    assert all(torch.equal(loaded.tensors[k], t) for k, t in adapter.tensors.items())  # the zeros dropped, no more
    assert loaded.metadata() == adapter.metadata()  # re-written, it is a version-4 file
    with torch.no_grad():
        inputs = make_inputs()
        assert torch.equal(task_model_from_adapter(tiny_backbone("gpt2"), loaded)(**inputs), model(**inputs))


def test_a_file_written_by_the_format_3_writer_reads_and_serves_as_before():
    loaded = read_adapter_file(OLD_FILE, backbone=backbone_info(tiny_backbone("gpt2"), "tiny-gpt2"))
    with safe_open(str(OLD_FILE), framework="pt") as f:
        raw = {k: f.get_tensor(k) for k in f.keys()}
    assert raw["lora.h.0.attn.c_attn.B"].shape == (96, 8) and loaded.tensors["lora.h.0.attn.c_attn.B"].shape == (64, 4)
    for i in range(2):
        site = f"lora.h.{i}.attn.c_attn"
        dense, packed = raw[f"{site}.B"], loaded.tensors[f"{site}.B"]
        assert torch.equal(loaded.tensors[f"{site}.A"], raw[f"{site}.A"])
        # targets ("value", "query"): block 0 of A feeds the value rows, block 1 the query rows; key rows zero
        assert torch.equal(packed, torch.cat([dense[64:, :4], dense[:32, 4:]])) and packed.any(dim=1).all()
        assert not dense[32:64].any() and not dense[64:, 4:].any() and not dense[:32, :4].any()
    served = task_model_from_adapter(tiny_backbone("gpt2"), loaded)
    with torch.no_grad():
        logits = served(**make_inputs())
        plain = task_model_from_adapter(tiny_backbone("gpt2"), AdapterFile(
            loaded.config, loaded.backbone, loaded.task, {k: torch.zeros_like(t) if k.endswith(".B") else t
                                                          for k, t in loaded.tensors.items()}))(**make_inputs())
    expected = torch.tensor(loaded.provenance["logits_on_make_inputs"])
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(plain, expected, rtol=0, atol=1e-3)  # the LoRA update is really there


@pytest.mark.parametrize("version", [1, 3])
def test_an_older_gpt2_file_with_values_off_its_slices_is_refused_naming_the_version(version):
    adapter, _ = build_adapter("gpt2", "lora")
    key = "lora.h.1.attn.c_attn.B"
    for rows, cols in ((slice(32, 64), slice(0, 8)), (slice(0, 32), slice(4, 8))):  # key rows; q rows of v's cols
        def off_slice(b: torch.Tensor) -> torch.Tensor:
            b[rows, cols] = 0.1
            return b
        bad = _as_old_gpt2_file(adapter, version, **{key.replace(".", "__"): off_slice})
        err = _assert_refused(bad, key, f"format_version {version}, one dense")
        assert "outside the q/k/v slices" in str(err) and "format_version 4" in str(err)
    nan_off_slice = _as_old_gpt2_file(adapter, 3, **{key.replace(".", "__"): lambda b: b.index_fill_(0, torch.tensor(
        [40]), float("nan"))})
    _assert_refused(nan_off_slice, key, "non-finite")


def test_a_version_4_gpt2_file_in_the_old_dense_layout_is_refused():
    adapter, _ = build_adapter("gpt2", "lora")
    _assert_refused(_as_old_gpt2_file(adapter, 4), "lora.h.0.attn.c_attn.B",
                    r"must have shape \[64, 4\], got \[96, 8\]")


@pytest.mark.parametrize("model_type, kind", [("bert", "adapter"), ("bert", "lora"), ("distilbert", "lora"),
                                              ("gpt2", "adapter")])
def test_older_files_of_other_kinds_load_unchanged(model_type, kind):
    adapter, _ = build_adapter(model_type, kind)
    for version in (1, 2, 3):
        loaded = read_adapter_bytes(_as_version(adapter, version), backbone=adapter.backbone)
        assert set(loaded.tensors) == set(adapter.tensors)
        assert all(torch.equal(loaded.tensors[k], t) for k, t in adapter.tensors.items())


# ---------------------------------------------------------------- other backbones

@pytest.mark.parametrize("other, differs, same", [
    (lambda: backbone_info(tiny_backbone("bert", seed=1), "tiny-bert"), ["fingerprint"], ["hidden_size", "model_type"]),
    (lambda: backbone_info(tiny_backbone("roberta"), "tiny-roberta"), ["model_type", "fingerprint"], ["num_layers"]),
    (lambda: backbone_info(_bert(hidden=48), "tiny-bert"), ["hidden_size", "fingerprint"], ["num_layers"]),
    (lambda: backbone_info(_bert(layers=3), "tiny-bert"), ["num_layers", "fingerprint"], ["hidden_size"]),
], ids=["other-weights", "other-architecture", "other-width", "other-depth"])
def test_an_adapter_for_another_backbone_is_refused_naming_what_differs(good, other, differs, same):
    with pytest.raises(BackboneMismatchError) as info:
        read_adapter_bytes(adapter_to_bytes(good), backbone=other())
    message = str(info.value)
    assert info.value.field == "backbone" and "'tiny-bert'" in message
    assert all(f"{f}: adapter has" in message for f in differs)
    assert not any(f"{f}: adapter has" in message for f in same)


def test_the_same_backbone_loaded_again_is_accepted(good):
    assert read_adapter_bytes(adapter_to_bytes(good), backbone=backbone_info(tiny_backbone("bert"), "x")).task == \
        good.task


def _bert(hidden: int = 32, layers: int = 2):
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(vocab_size=99, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                                intermediate_size=37, max_position_embeddings=64))


# ---------------------------------------------------------------- pickle files: refused, never unpickled

UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    UNPICKLED.append("unpickled")
    return "payload"


class _Payload:
    """An object whose unpickling calls `_record_unpickling` (what a malicious pickle would do)."""

    def __reduce__(self):
        return (_record_unpickling, ())


def _torch_save_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"head.weight": torch.zeros(2, 32), "payload": _Payload()}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("make, what", [
    (lambda: pickle.dumps({"head.weight": [0.0], "payload": _Payload()}), "a pickle"),
    (lambda: pickle.dumps(_Payload(), protocol=2), "a pickle"),
    (_torch_save_bytes, r"a zip archive \(e.g. torch.save\)"),
], ids=["pickle-protocol-5", "pickle-protocol-2", "torch-save-zip"])
def test_pickle_files_are_refused_without_unpickling(tmp_path, make, what):
    data = make()
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(data)
    for read in (lambda: read_adapter_bytes(data), lambda: read_adapter_file(path)):
        with pytest.raises(AdapterFileError, match=f"file is {what}, not safetensors") as info:
            read()
        assert info.value.field == "file"
    assert UNPICKLED == []


def test_a_protocol_0_pickle_is_refused_as_a_huge_header():
    data = pickle.dumps({"a": 1}, protocol=0)
    with pytest.raises(AdapterFileError, match="header declares"):
        read_adapter_bytes(data)


def test_written_adapter_files_are_world_readable_and_keys_files_private(tmp_path):
    import stat

    from adamix.atomic import atomic_write

    atomic_write(tmp_path / "a.safetensors", b"x")
    atomic_write(tmp_path / "keys.json", b"{}", mode=0o600)
    assert stat.S_IMODE((tmp_path / "a.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
