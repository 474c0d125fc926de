"""Labelled data: the GLUE TSV layouts, generic CSV / JSONL tables, and dynamically padded batches."""
from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch


class DataError(ValueError):
    """A data file that cannot be used as given: missing, empty, a missing column, an unknown label."""


@dataclass(frozen=True)
class Example:
    text: str
    text_pair: str | None
    label: int | float  # class index (classification) or score (regression)


@dataclass(frozen=True)
class GlueLayout:
    """How one GLUE task's TSV files are laid out and scored."""

    text: str | int  # column name (header files) or index (CoLA has no header)
    text_pair: str | int | None
    label: str | int
    labels: dict[str, str]  # raw value in the file -> human label name; {} for regression
    metric: str  # the task's primary metric
    metrics: tuple[str, ...]  # every metric reported
    header: bool = True
    dev_file: str = "dev.tsv"

    @property
    def task_type(self) -> str:
        pair = "pair_" if self.text_pair is not None else ""
        return pair + ("classification" if self.labels else "regression")


_NLI = {"entailment": "entailment", "not_entailment": "not_entailment"}
GLUE_TASKS: dict[str, GlueLayout] = {
    "sst2": GlueLayout("sentence", None, "label", {"0": "negative", "1": "positive"}, "accuracy", ("accuracy",)),
    "cola": GlueLayout(3, None, 1, {"0": "unacceptable", "1": "acceptable"}, "matthews", ("matthews", "accuracy"),
                       header=False),
    "mrpc": GlueLayout("#1 String", "#2 String", "Quality", {"0": "not_equivalent", "1": "equivalent"}, "f1",
                       ("f1", "accuracy")),
    "rte": GlueLayout("sentence1", "sentence2", "label", _NLI, "accuracy", ("accuracy",)),
    "qnli": GlueLayout("question", "sentence", "label", _NLI, "accuracy", ("accuracy",)),
    "stsb": GlueLayout("sentence1", "sentence2", "score", {}, "pearson", ("pearson", "spearman")),
    "mnli": GlueLayout("sentence1", "sentence2", "gold_label",
                       {x: x for x in ("contradiction", "entailment", "neutral")}, "accuracy", ("accuracy",),
                       dev_file="dev_matched.tsv"),
}


@dataclass
class Dataset:
    """A task's train and dev examples with everything needed to build its head and score it."""

    name: str  # provenance, e.g. "glue/rte" or the train file's name
    task_type: str  # classification | pair_classification | regression | pair_regression

    @property
    def regression(self) -> bool:
        return self.task_type in ("regression", "pair_regression")
    labels: tuple[str, ...]  # human label names, index = class id; () for regression
    metric: str
    metrics: tuple[str, ...]
    train: list[Example]
    dev: list[Example]


# ---------------------------------------------------------------- reading rows

def _read_tsv(path: Path, header: bool) -> tuple[list[str] | None, list[list[str]]]:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    with path.open(encoding="utf-8-sig", newline="") as f:  # -sig: MRPC's header starts with a BOM
        rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r]
    if header:
        if not rows:
            raise DataError(f"{path} is empty: expected a header line and at least one row")
        names, rows = rows[0], rows[1:]
    else:
        names = None
    if not rows:
        raise DataError(f"{path} has no data rows")
    return names, rows


def _column(names: list[str] | None, key: str | int, path: Path) -> int:
    if isinstance(key, int):
        return key
    assert names is not None
    if key not in names:
        raise DataError(f"{path} has no column {key!r}; its columns are {names}")
    return names.index(key)


def read_table(path: str | Path, columns: Sequence[str | None]) -> list[tuple[str | None, ...]]:
    """Rows of a CSV / TSV (header line) or JSONL file, as tuples of the named columns (None -> None)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if path.suffix.lower() in (".jsonl", ".json"):
        records = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno} is not valid JSON: {exc}") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{lineno} must be a JSON object, got {type(record).__name__}")
                records.append((lineno, record))
        if not records:
            raise DataError(f"{path} is empty: expected one JSON object per line")
        out = []
        for lineno, record in records:
            missing = [c for c in columns if c is not None and c not in record]
            if missing:
                raise DataError(f"{path}:{lineno} has no field {missing[0]!r}; its fields are {sorted(record)}")
            out.append(tuple(None if c is None else _as_text(record[c]) for c in columns))
        return out
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        rows = [r for r in reader if r]
    if not rows:
        raise DataError(f"{path} is empty: expected a header line naming the columns, then rows")
    names, rows = rows[0], rows[1:]
    if not rows:
        raise DataError(f"{path} has a header but no data rows")
    index = [None if c is None else _column(names, c, path) for c in columns]
    out = []
    for lineno, row in enumerate(rows, 2):
        if len(row) != len(names):
            raise DataError(f"{path}:{lineno} has {len(row)} fields, the header has {len(names)}")
        out.append(tuple(None if i is None else row[i] for i in index))
    return out


def _as_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# ---------------------------------------------------------------- labels

def label_index(labels: Sequence[str], task_type: str, raw: str, where: str) -> int | float:
    """Map a raw label to a class index (or a float score for regression), with an actionable error."""
    if task_type in ("regression", "pair_regression"):
        try:
            value = float(raw)
        except ValueError:
            raise DataError(f"{where}: regression label {raw!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise DataError(f"{where}: regression label {raw!r} is not finite")
        return value
    if raw not in labels:
        raise DataError(f"{where}: unknown label {raw!r}; known labels are {list(labels)}")
    return list(labels).index(raw)


def _examples(rows: list[tuple], labels: Sequence[str], task_type: str, source: str,
              raw_to_name: dict[str, str] | None = None, first_line: int = 2) -> list[Example]:
    out = []
    for i, (text, pair, raw) in enumerate(rows):
        where = f"{source} row {i + first_line}"
        raw = raw.strip() if raw is not None else raw
        if raw_to_name is not None:
            if raw not in raw_to_name:
                raise DataError(f"{where}: unknown label {raw!r}; this task's labels are {sorted(raw_to_name)}")
            raw = raw_to_name[raw]
        if not text:
            raise DataError(f"{where}: empty text")
        out.append(Example(text, pair, label_index(labels, task_type, raw, where)))
    return out


# ---------------------------------------------------------------- loaders

def load_glue(task: str, directory: str | Path) -> Dataset:
    """A GLUE task from its standard TSV directory (train.tsv + dev.tsv, labels given human names)."""
    layout = _glue_layout(task)
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"GLUE data directory {directory} does not exist")
    splits = {}
    for split, filename in (("train", "train.tsv"), ("dev", layout.dev_file)):
        if not (directory / filename).is_file():
            raise DataError(f"{directory} has no {filename} (the GLUE {task} {split} split)")
        splits[split] = _glue_split(task, layout, directory / filename)
    return Dataset(f"glue/{task}", layout.task_type, tuple(layout.labels.values()), layout.metric, layout.metrics,
                   splits["train"], splits["dev"])


def load_glue_dev(task: str, directory: str | Path) -> Dataset:
    """Only the dev split of a GLUE task (for `adamix eval`; QNLI here has no train split)."""
    layout = _glue_layout(task)
    dev = _glue_split(task, layout, Path(directory) / layout.dev_file)
    return Dataset(f"glue/{task}", layout.task_type, tuple(layout.labels.values()), layout.metric, layout.metrics,
                   [], dev)


def _glue_layout(task: str) -> GlueLayout:
    if task not in GLUE_TASKS:
        raise DataError(f"unknown GLUE task {task!r}; known: {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[task]


def _glue_split(task: str, layout: GlueLayout, path: Path) -> list[Example]:
    """One GLUE TSV file -> examples, refusing rows too short for the task's column layout."""
    names, rows = _read_tsv(path, layout.header)
    cols = [_column(names, c, path) if c is not None else None for c in (layout.text, layout.text_pair, layout.label)]
    width = max(c for c in cols if c is not None) + 1
    short = next((i for i, r in enumerate(rows) if len(r) < width), None)
    if short is not None:
        raise DataError(f"{path} row {short + 1 + layout.header} has {len(rows[short])} fields, "
                        f"the {task} layout needs {width}")
    picked = [tuple(None if c is None else r[c] for c in cols) for r in rows]
    return _examples(picked, tuple(layout.labels.values()), layout.task_type, str(path), layout.labels or None,
                     first_line=1 + layout.header)


def load_files(train_file: str | Path, dev_file: str | Path, text_column: str, label_column: str,
               text_pair_column: str | None = None, labels: Sequence[str] | None = None,
               regression: bool = False, metric: str | None = None) -> Dataset:
    """A task from generic CSV / TSV / JSONL files with named columns; labels default to the sorted train set."""
    columns = (text_column, text_pair_column, label_column)
    train_rows = read_table(train_file, columns)
    dev_rows = read_table(dev_file, columns)
    if regression:
        task_type, names = "pair_regression" if text_pair_column else "regression", ()
    else:
        task_type = "pair_classification" if text_pair_column else "classification"
        names = tuple(labels) if labels else tuple(sorted({r[2].strip() for r in train_rows}))
        if len(names) < 2:
            raise DataError(f"{train_file}: column {label_column!r} has only the label(s) {list(names)}; "
                            "classification needs at least two")
    metric = metric or ("pearson" if regression else "accuracy")
    metrics = ("pearson", "spearman") if regression else tuple(dict.fromkeys((metric, "accuracy")))
    first = 1 if Path(train_file).suffix.lower() in (".jsonl", ".json") else 2
    return Dataset(Path(train_file).name, task_type, names, metric, metrics,
                   _examples(train_rows, names, task_type, str(train_file), first_line=first),
                   _examples(dev_rows, names, task_type, str(dev_file), first_line=first))


# ---------------------------------------------------------------- batches

class Collator:
    """Tokenize a list of examples and pad to the longest in the batch (dynamic padding)."""

    def __init__(self, tokenizer, max_seq_len: int, regression: bool) -> None:
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.regression = regression

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        texts = [e.text for e in examples]
        pairs = [e.text_pair or "" for e in examples] if examples[0].text_pair is not None else None
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_seq_len, padding=True,
                             return_tensors="pt")
        batch = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}  # (B, T)
        dtype = torch.float32 if self.regression else torch.long
        batch["labels"] = torch.tensor([e.label for e in examples], dtype=dtype)  # (B,)
        return batch


def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled example order of one epoch; a pure function of (seed, epoch), so resuming replays it."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_examples, generator=gen)


def train_batches(examples: Sequence[Example], batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = True, group_size: int = 50) -> list[list[int]]:
    """One epoch's batches of example indices, a pure function of (seed, epoch) so resuming replays it.

    With `group_by_length` (the default) the shuffled order is cut into chunks of `group_size` batches,
    each chunk sorted by length before batching, and the batches shuffled again: the batches stay random
    but hold similar lengths, so dynamic padding wastes far less compute (as Hugging Face's group_by_length).
    """
    order = epoch_order(len(examples), seed, epoch).tolist()
    if group_by_length:
        chunk = batch_size * group_size
        order = [i for start in range(0, len(order), chunk)
                 for i in sorted(order[start:start + chunk], key=lambda i: _length(examples[i]), reverse=True)]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch + 7)
        batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
    return batches


def _length(example: Example) -> int:
    return len(example.text) + len(example.text_pair or "")


def eval_batches(examples: Sequence[Example], batch_size: int) -> Iterator[tuple[list[int], list[Example]]]:
    """Batches of similar length (less padding), each with the examples' original indices."""
    order = sorted(range(len(examples)), key=lambda i: _length(examples[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield idx, [examples[i] for i in idx]


# ---------------------------------------------------------------- the data arguments of `adamix train` / `eval`

SUBSET_SEED = 1234  # --train-limit takes the same random subset for every --seed


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data (a GLUE directory, or generic CSV / TSV / JSONL files)")
    d.add_argument("--glue-task", choices=sorted(GLUE_TASKS), help="read --data as this GLUE task's TSV directory")
    d.add_argument("--data", type=Path, help="GLUE task directory (train.tsv, dev.tsv)")
    d.add_argument("--train-file", type=Path, help="generic train file (.csv, .tsv, .jsonl)")
    d.add_argument("--dev-file", type=Path, help="generic dev file (.csv, .tsv, .jsonl)")
    d.add_argument("--text-column", default="text")
    d.add_argument("--text-pair-column", help="second text column for pair tasks")
    d.add_argument("--label-column", default="label")
    d.add_argument("--labels", help="comma-separated label names in head order (default: sorted train labels)")
    d.add_argument("--regression", action="store_true", help="the label is a number (MSE loss, Pearson)")
    d.add_argument("--metric", choices=("accuracy", "f1", "matthews", "pearson", "spearman"),
                   help="generic files: the metric that picks the best epoch")
    d.add_argument("--dev-limit", type=int, help="evaluate on the first N dev rows only")
    d.add_argument("--backbone", type=Path, help="local Hugging Face model directory (default: embedded MiniLM)")


def load_dataset(args: argparse.Namespace, need_train: bool = True) -> Dataset:
    """The data set the arguments name; `need_train=False` (eval) reads only the dev split."""
    if args.glue_task:
        if args.data is None:
            raise DataError("--glue-task needs --data DIR (the task's directory with train.tsv and dev.tsv)")
        data = load_glue(args.glue_task, args.data) if need_train else load_glue_dev(args.glue_task, args.data)
    else:
        if args.dev_file is None or (need_train and args.train_file is None):
            raise DataError("give --glue-task with --data DIR, or --train-file and --dev-file")
        labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
        data = load_files(args.train_file or args.dev_file, args.dev_file, args.text_column, args.label_column,
                          args.text_pair_column, labels, args.regression, args.metric)
    return apply_limits(data, args)


def apply_limits(data: Dataset, args: argparse.Namespace) -> Dataset:
    """--train-limit (the same fixed random subset for every --seed) and --dev-limit (the first N rows)."""
    if getattr(args, "train_limit", None):
        keep = epoch_order(len(data.train), SUBSET_SEED, 0)[:args.train_limit].tolist()
        data.train = [data.train[i] for i in sorted(keep)]
    if args.dev_limit:
        data.dev = data.dev[:args.dev_limit]
    return data
