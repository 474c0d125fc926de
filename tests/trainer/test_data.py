"""Data loading: the real GLUE layouts, generic CSV / JSONL files, actionable errors, dynamic padding."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from adamix import default_backbone_path
from tests.conftest import SHARED_DATA
from trainer.data import Collator, DataError, Example, load_files, load_glue, load_glue_dev, train_batches

GLUE = SHARED_DATA / "glue"


def _glue(name: str) -> Path:
    if not (GLUE / name / "dev.tsv").is_file():
        pytest.skip(f"GLUE {name} not found under {GLUE}")
    return GLUE / name


def test_glue_layouts_read_with_human_labels() -> None:
    rte = load_glue("rte", _glue("RTE"))
    assert (len(rte.train), len(rte.dev)) == (2490, 277)
    assert rte.labels == ("entailment", "not_entailment") and rte.task_type == "pair_classification"
    assert rte.dev[0].text.startswith("Dana Reeve") and rte.dev[0].label == 1  # not_entailment
    cola = load_glue("cola", _glue("CoLA"))  # no header line: the first row is data
    assert len(cola.dev) == 1043 and cola.labels == ("unacceptable", "acceptable") and cola.metric == "matthews"
    assert cola.dev[0] == Example("The sailors rode the breeze clear of the rocks.", None, 1)
    stsb = load_glue("stsb", _glue("STS-B"))
    assert stsb.task_type == "pair_regression" and stsb.dev[0].label == pytest.approx(5.0)
    assert stsb.metrics == ("pearson", "spearman") and stsb.dev[0].text_pair == "A man wearing a hard hat is dancing."
    sst2 = load_glue("sst2", _glue("SST-2"))
    assert len(sst2.dev) == 872 and sst2.labels == ("negative", "positive")
    mrpc = load_glue("mrpc", _glue("MRPC"))  # header starts with a BOM; quotes are literal text
    assert mrpc.metric == "f1" and len(mrpc.dev) == 408 and mrpc.dev[0].text_pair.startswith('" The foodservice')


def test_glue_missing_split_is_named(tmp_path: Path) -> None:
    (tmp_path / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(DataError, match="no train.tsv"):
        load_glue("rte", tmp_path)


def test_glue_unknown_label_names_row(tmp_path: Path) -> None:
    rows = "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\tmaybe\n"
    (tmp_path / "train.tsv").write_text(rows)
    (tmp_path / "dev.tsv").write_text(rows)
    with pytest.raises(DataError, match=r"train.tsv row 3: unknown label 'maybe'"):
        load_glue("rte", tmp_path)


@pytest.mark.parametrize("load", [load_glue, load_glue_dev], ids=["train+dev", "dev only"])
def test_glue_short_row_is_named(tmp_path: Path, load) -> None:
    good = "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n"
    (tmp_path / "train.tsv").write_text(good)
    (tmp_path / "dev.tsv").write_text(good + "1\tc\n")
    with pytest.raises(DataError, match=r"dev.tsv row 3 has 2 fields, the rte layout needs 4"):
        load("rte", tmp_path)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_generic_csv_and_jsonl(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.csv", 'review,stars\n"good, really",pos\nbad,neg\nfine,pos\n')
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps(r) + "\n" for r in [{"review": "meh", "stars": "neg"},
                                                            {"review": "great", "stars": "pos"}]))
    data = load_files(train, dev, "review", "stars")
    assert data.labels == ("neg", "pos")  # sorted train labels
    assert data.train[0] == Example("good, really", None, 1)
    assert [e.label for e in data.dev] == [0, 1] and data.metric == "accuracy"
    reg = load_files(_write(tmp_path / "r.csv", "a,b,y\nx,y,0.5\n"), tmp_path / "r.csv", "a", "y",
                     text_pair_column="b", regression=True)
    assert reg.task_type == "pair_regression" and reg.train[0] == Example("x", "y", 0.5)


@pytest.mark.parametrize("content, kwargs, message", [
    ("text,label\nhi,a\nyo,b\n", {"label_column": "target"},
     r"has no column 'target'; its columns are \['text', 'label'\]"),
    ("", {}, "is empty"),
    ("text,label\n", {}, "no data rows"),
    ("text,label\nhi,a\nyo,b\n", {"labels": ["a", "c"]}, r"row 3: unknown label 'b'; known labels are \['a', 'c'\]"),
    ("text,label\nhi,0.3\nyo,high\n", {"regression": True}, r"row 3: regression label 'high' is not a number"),
    ("text,label\nhi,a\nyo,a\n", {}, "only the label"),
])
def test_generic_errors_are_actionable(tmp_path: Path, content: str, kwargs: dict, message: str) -> None:
    path = _write(tmp_path / "data.csv", content)
    kwargs = {"text_column": "text", "label_column": "label", **kwargs}
    with pytest.raises(DataError, match=message):
        load_files(path, path, **kwargs)


def test_jsonl_missing_field_and_missing_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2 has no field 'label'"):
        load_files(path, path, "text", "label")
    with pytest.raises(DataError, match="does not exist"):
        load_files(tmp_path / "nope.csv", path, "text", "label")


def test_collator_pads_per_batch_not_to_max_len() -> None:
    tokenizer = AutoTokenizer.from_pretrained(default_backbone_path(), local_files_only=True)
    collate = Collator(tokenizer, max_seq_len=128, regression=False)
    batch = collate([Example("a short one", None, 0), Example("a slightly longer sentence here", None, 1)])
    assert batch["input_ids"].shape[1] < 16  # padded to the longest in the batch, not to 128
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()
    assert batch["labels"].tolist() == [0, 1]
    long = collate([Example("word " * 500, "other " * 500, 0)])
    assert long["input_ids"].shape == (1, 128)  # truncated to max_seq_len


def test_train_batches_are_a_seeded_permutation_grouped_by_length() -> None:
    examples = [Example("x" * (1 + (i * 37) % 90), None, 0) for i in range(200)]
    batches = train_batches(examples, 8, seed=3, epoch=1, group_size=5)
    assert sorted(i for b in batches for i in b) == list(range(200))  # every example once
    assert batches == train_batches(examples, 8, seed=3, epoch=1, group_size=5)  # replayable (resume)
    assert batches != train_batches(examples, 8, seed=3, epoch=2, group_size=5)  # reshuffled each epoch

    def spread(bs: list[list[int]]) -> float:  # mean length range inside a batch: the padding waste
        return sum(max(len(examples[i].text) for i in b) - min(len(examples[i].text) for i in b) for b in bs) / len(bs)

    plain = train_batches(examples, 8, seed=3, epoch=1, group_by_length=False)
    assert spread(batches) < spread(plain) / 2
