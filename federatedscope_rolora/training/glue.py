"""GLUE tasks: their columns, labels and metrics, and how to load them.

A task comes from a local directory in the GLUE TSV layout
(``<root>/<TASK>/train.tsv`` and ``dev.tsv``) or, when no root is given,
from the Hugging Face Hub. The GLUE dev set is the test set, as in the
RoLoRA paper (its labels are public; GLUE's test labels are not). A local
copy may lack a split; the few fallbacks below are explicit and recorded in
``Split.source`` so a result always says what it was measured on. Nothing
is downloaded when a root is given.

Your own classification data reads the same way: ``data.type: NAME@tsv``
is ``<root>/NAME/train.tsv`` and ``dev.tsv`` (the test set), with a
``label`` column and one or two text columns (an ``idx``, ``index`` or
``id`` column is ignored); its labels are the distinct values of the train
file's ``label`` column, sorted (as numbers where all are integers).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import importlib
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from federatedscope_rolora.schema import TSV_NAME, TSV_SUFFIX

# Macro F1 beside accuracy: own labels are often skewed, and a model that
# always says the majority label scores its share in accuracy.
OWN_METRICS = ("acc", "f1_macro")


class DataError(ValueError):
    """Bad or missing task data; the message names the file and line."""


@dataclass(frozen=True)
class Layout:
    """Where a TSV file keeps a task's texts and label, by header name.

    ``skip_label``: a label value whose rows are dropped and counted
    (MNLI's ``-``, pairs the annotators did not agree on)."""

    text_columns: tuple[str, ...]
    label_column: str = "label"
    skip_label: str | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.text_columns, self.label_column)


@dataclass(frozen=True)
class TaskSpec:
    """What one GLUE task looks like on disk and how it is scored.

    ``label_names[i]`` is the label with id ``i``, in the Hugging Face
    ``glue`` convention, so ids agree between local TSVs and the Hub.
    ``glue_layouts``: the headers of GLUE's own download, read as well as
    the normalised layout (``text_columns`` and ``label``); a file whose
    header fits none is refused, naming the columns it has.
    """

    name: str
    dir_name: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    glue_layouts: tuple[Layout, ...] = ()

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def layouts(self) -> tuple[Layout, ...]:
        return (Layout(self.text_columns), *self.glue_layouts)


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        # SST-2 (sentence, label), QNLI (index, question, sentence,
        # label) and RTE (index, sentence1, sentence2, label) ship with
        # the normalised column names; extra columns are ignored.
        TaskSpec("sst2", "SST-2", ("sentence",), _BINARY, ("acc",)),
        TaskSpec("qnli", "QNLI", ("question", "sentence"), _NLI2, ("acc",)),
        TaskSpec(
            "mnli",
            "MNLI",
            ("premise", "hypothesis"),
            ("entailment", "neutral", "contradiction"),
            ("acc",),
            (Layout(("sentence1", "sentence2"), "gold_label", "-"),),
        ),
        TaskSpec(
            "qqp", "QQP", ("question1", "question2"), _BINARY,
            ("acc", "f1"),
            (Layout(("question1", "question2"), "is_duplicate"),),
        ),
        TaskSpec("rte", "RTE", ("sentence1", "sentence2"), _NLI2, ("acc",)),
        # GLUE's CoLA files have no header: see _COLA_HEADERLESS.
        TaskSpec("cola", "CoLA", ("sentence",), _BINARY, ("mcc", "acc")),
        TaskSpec(
            "mrpc", "MRPC", ("sentence1", "sentence2"), _BINARY,
            ("acc", "f1"),
            (Layout(("#1 String", "#2 String"), "Quality"),),
        ),
    )
}

# Hub split names of the test (GLUE dev) set where they are not
# 'validation'.
_HUB_TEST_SPLIT = {"mnli": "validation_matched"}


# Columns of your own TSV that are neither text nor label.
_ID_COLUMNS = ("idx", "index", "id")


def task_spec(name: str, root: str | Path | None = None) -> TaskSpec:
    """The spec of a GLUE task (``sst2``, ``sst2@glue``), or of your own
    data (``NAME@tsv``, read from ``root``); a DataError lists the known
    tasks or names what is wrong with the files."""
    task, _, suffix = name.partition("@")
    if suffix.lower() == TSV_SUFFIX:
        return tsv_task_spec(task, root)
    try:
        return TASKS[task.lower()]
    except KeyError:
        known = ", ".join(sorted(TASKS))
        raise DataError(
            f"unknown GLUE task {name!r}; known tasks: {known} (or your "
            f"own data as NAME@{TSV_SUFFIX})"
        ) from None


def tsv_task_spec(name: str, root: str | Path | None) -> TaskSpec:
    """The spec of your own data ``<root>/<name>/train.tsv``: its text
    columns from the header, its labels from the ``label`` column."""
    if not TSV_NAME.fullmatch(name):
        raise DataError(f"data.type {name + '@' + TSV_SUFFIX!r}: NAME must "
                        "be a directory name (letters, digits, _ . -)")
    if root is None:
        raise DataError(f"data.type {name}@{TSV_SUFFIX} reads your own "
                        f"TSV files: set data.root to the directory holding "
                        f"{name}/train.tsv and {name}/dev.tsv")
    path = Path(root) / name / "train.tsv"
    try:
        stat = path.stat()
    except OSError:
        raise DataError(f"{path}: file not found (data.type "
                        f"{name}@{TSV_SUFFIX})") from None
    return _tsv_spec(str(path), name, stat.st_mtime_ns, stat.st_size)


@contextlib.contextmanager
def _long_fields() -> Iterator[None]:
    """csv's default field limit (131,072 characters) refuses valid rows
    with one long text, which the tokenizer truncates anyway."""
    before = csv.field_size_limit()
    csv.field_size_limit(2 ** 31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(before)


@functools.lru_cache(maxsize=8)
def _tsv_spec(path: str, name: str, mtime_ns: int, size: int) -> TaskSpec:
    """Read once per version of the file (``mtime_ns``, ``size``)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle, \
                _long_fields():
            rows = csv.reader(handle, delimiter="\t",
                              quoting=csv.QUOTE_NONE)
            try:
                texts, labels = _columns_and_labels(rows, path)
            except csv.Error as exc:
                raise DataError(f"{path}:{rows.line_num}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    if len(labels) < 2:
        raise DataError(f"{path}: a classifier needs two or more labels; "
                        f"the label column holds {sorted(labels)}")
    numeric = all(re.fullmatch(r"-?\d+", y) for y in labels)
    # Ties in value ('1' and '01') are broken by the text, so the ids
    # never depend on the set's order (a process's hash seed).
    names = sorted(labels, key=lambda y: (int(y), y)) if numeric \
        else sorted(labels)
    return TaskSpec(f"{name}@{TSV_SUFFIX}", name, texts, tuple(names),
                    OWN_METRICS)


def recorded_task_spec(name: str, root: str | Path | None,
                       text_columns: Sequence[str], labels: Sequence[str]
                       ) -> TaskSpec | None:
    """Your own data's spec as a run recorded it (text columns, labels),
    for a machine that holds the run but not the data (``export
    --check-rows 0`` where the model was trained); None for a GLUE task
    or where ``train.tsv`` is there, to be read (and its labels checked
    against the run's)."""
    task, _, suffix = name.partition("@")
    if suffix.lower() != TSV_SUFFIX or root is None or \
            (Path(root) / task / "train.tsv").exists():
        return None
    return TaskSpec(f"{task}@{TSV_SUFFIX}", task, tuple(text_columns),
                    tuple(labels), OWN_METRICS)


def _check_names(header: list[str], path: str | Path) -> None:
    """DataError if a header names a column twice or not at all: an empty
    name (a trailing tab) made a second, empty text column, and a name
    given twice fed its first column twice."""
    if "" not in header and len(set(header)) == len(header):
        return
    twice = sorted({c for c in header if c and header.count(c) > 1})
    what = "a column without a name (a trailing tab?)" if "" in header \
        else f"{', '.join(twice)} twice"
    raise DataError(f"{path}:1: the header has {what}; give every column "
                    "its own name")


def _columns_and_labels(rows: Any, path: str
                        ) -> tuple[tuple[str, ...], set[str]]:
    """The text columns of your own train file's header and the distinct
    values of its label column. The labels are the task's, so a row that
    ``read_tsv`` would refuse (another column count, and here an empty
    label too) stops this read with its line, not a wrong label set."""
    header = next(rows, None)
    if header is None:
        raise DataError(f"{path}: empty file, expected a header row")
    if "label" not in header:
        raise DataError(f"{path}:1: no 'label' column; the header has "
                        f"columns {', '.join(header)}")
    _check_names(header, path)
    texts = tuple(c for c in header
                  if c != "label" and c.lower() not in _ID_COLUMNS)
    if not 1 <= len(texts) <= 2:
        raise DataError(
            f"{path}:1: expected one or two text columns beside 'label' "
            f"(and an optional {', '.join(_ID_COLUMNS)}); the header has "
            f"{', '.join(texts) or 'none'}")
    at = header.index("label")
    labels: dict[str, int] = {}   # label -> the line it first appears on
    for row in rows:
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{rows.line_num}: expected "
                            f"{len(header)} tab-separated columns, found "
                            f"{len(row)}")
        if not row[at].strip():
            raise DataError(f"{path}:{rows.line_num}: empty label "
                            f"{row[at]!r}; every row of your own data "
                            "needs one")
        labels.setdefault(row[at], rows.line_num)
    _check_spacing(labels, path)
    return texts, set(labels)


def _check_spacing(labels: dict[str, int], path: str) -> None:
    """DataError if two labels differ only by the spaces around them
    ('pos' and 'pos '): each would be a class of its own, and the model
    would learn to tell them apart."""
    seen: dict[str, str] = {}
    for label in sorted(labels, key=labels.__getitem__):
        other = seen.setdefault(label.strip(), label)
        if other != label:
            raise DataError(
                f"{path}:{labels[label]}: label {label!r} differs from "
                f"label {other!r} (line {labels[other]}) only by spaces; "
                "they would be two classes. Write each label one way")


@dataclass
class Split:
    """Texts (one tuple per example, in ``text_columns`` order), label ids
    and a human-readable note of where they came from."""

    texts: list[tuple[str, ...]]
    labels: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.labels)


def _label_ids(spec: TaskSpec) -> dict[str, int]:
    """Label string -> id. For a GLUE task integer ids are accepted too,
    so a TSV exported from the Hub (labels 0..n-1) reads the same as a
    GLUE original."""
    ids = {name: i for i, name in enumerate(spec.label_names)}
    if spec.name in TASKS:  # your own data's labels are what it holds
        ids.update({str(i): i for i in range(spec.num_labels)})
    return ids


# GLUE's CoLA download: four columns and no header (source, label, the
# original judgement, sentence). Told from a header by its shape.
_COLA_HEADERLESS = ("source", "label", "judgement", "sentence")


def _is_cola_headerless(first: list[str], spec: TaskSpec) -> bool:
    return spec.name == "cola" and len(first) == 4 \
        and first[1] in _BINARY and "sentence" not in first


def _layout_of(header: list[str], path: Path, spec: TaskSpec) -> Layout:
    """The first of the task's layouts whose columns the header has."""
    for layout in spec.layouts:
        if all(name in header for name in layout.columns):
            return layout
    known = "; ".join(" ".join(layout.columns) for layout in spec.layouts)
    if spec.name == "cola":
        known += "; or GLUE's headerless " + " ".join(_COLA_HEADERLESS)
    raise DataError(
        f"{path}:1: unknown layout for task {spec.name}: the header has "
        f"columns {', '.join(header)}; expected columns {known}"
    )


def read_tsv(path: Path, spec: TaskSpec) -> Split:
    """Read one GLUE TSV: a header row, tab separated, nothing quoted.

    Quoting is off because GLUE fields may start with ``"`` (QNLI, MRPC,
    RTE); a csv reader with quoting on would silently merge rows. A
    UTF-8 byte-order mark (spreadsheet exports write one) is dropped, or
    the first column's name would not match.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle, \
                _long_fields():
            rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            try:
                texts, labels, note = _read_rows(rows, path, spec)
            except csv.Error as exc:
                raise DataError(f"{path}:{rows.line_num}: {exc}") from None
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc})") from None
    except OSError as exc:  # a directory, no permission, an I/O error
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})"
                        ) from None
    if not labels:
        # An empty test set would fail the first evaluation, after a
        # round of training; an empty train set leaves clients nothing.
        raise DataError(f"{path}: no examples after the header{note}")
    return Split(texts, labels, _short_name(path) + note)


def _read_rows(
    rows: Any, path: Path, spec: TaskSpec
) -> tuple[list[tuple[str, ...]], list[int], str]:
    """Texts and label ids of the rows after the header (of every row in
    GLUE's headerless CoLA file), and a note on the layout; blank lines
    are skipped, any other malformed row stops the read with its line."""
    header = next(rows, None)
    if header is None:
        raise DataError(f"{path}: empty file, expected a header row")
    first: list[list[str]] = []
    if _is_cola_headerless(header, spec):
        first, header = [header], list(_COLA_HEADERLESS)
    _check_names(header, path)
    layout = _layout_of(header, path, spec)
    *text_pos, label_pos = [header.index(c) for c in layout.columns]
    label_ids = _label_ids(spec)
    texts: list[tuple[str, ...]] = []
    labels: list[int] = []
    skipped = 0
    # lazily: rows.line_num is then the line of the row at hand
    for row in itertools.chain(first, rows):
        if not row:
            continue
        line = rows.line_num
        if len(row) != len(header):
            raise DataError(
                f"{path}:{line}: expected {len(header)} "
                f"tab-separated columns, found {len(row)}"
            )
        label = row[label_pos]
        if label == layout.skip_label:
            skipped += 1
            continue
        if label not in label_ids:
            raise DataError(
                f"{path}:{line}: unknown label {label!r} for task "
                f"{spec.name}; expected one of {', '.join(spec.label_names)}"
            )
        texts.append(tuple(row[p] for p in text_pos))
        labels.append(label_ids[label])
    return texts, labels, _layout_note(layout, skipped, bool(first))


def _layout_note(layout: Layout, skipped: int, headerless: bool) -> str:
    """What ``data_sources`` says about how the file was read, beyond its
    name: a GLUE layout, and the rows skipped."""
    notes = []
    if headerless:
        notes.append("GLUE's headerless CoLA layout")
    elif layout.label_column != "label":
        notes.append(f"GLUE layout, label column {layout.label_column!r}")
    if skipped:
        notes.append(f"{skipped} rows with {layout.label_column} "
                     f"{layout.skip_label!r} skipped")
    return f" ({'; '.join(notes)})" if notes else ""


def _short_name(path: Path) -> str:
    """'SST-2/dev.tsv': the task directory and file, never a machine's
    absolute path, so sources can go into committed results."""
    return f"{path.parent.name}/{path.name}"


def _subset(split: Split, indices: Sequence[int], source: str) -> Split:
    return Split(
        [split.texts[i] for i in indices],
        [split.labels[i] for i in indices],
        source,
    )


def _hold_out(split: Split, holdout: int, seed: int) -> tuple[Split, Split]:
    """Seeded disjoint (rest, held-out) parts of ``split``, in file order."""
    if not 0 < holdout < len(split):
        raise DataError(
            f"{split.source}: cannot hold out {holdout} of {len(split)} "
            f"rows as a test set; holdout must be between 1 and "
            f"{len(split) - 1}"
        )
    order = np.random.default_rng(seed).permutation(len(split))
    held = sorted(order[:holdout].tolist())
    rest = sorted(order[holdout:].tolist())
    note = f"(seed {seed}, {holdout} rows)"
    return (
        _subset(split, rest, f"{split.source} minus held-out rows {note}"),
        _subset(split, held, f"{split.source} rows held out {note}"),
    )


def _load_local(
    spec: TaskSpec, root: Path, seed: int, holdout: int
) -> tuple[Split, Split]:
    """Local GLUE layout, with the fallbacks this repository's copy needs:
    MNLI has no train.tsv (train on the mismatched dev set, which shares no
    rows with the matched one) and QQP has no dev.tsv (hold out a seeded
    part of train.tsv)."""
    folder = root / spec.dir_name
    train_path = folder / "train.tsv"
    dev_path = folder / "dev.tsv"
    matched = folder / "dev_matched.tsv"  # the original GLUE file name
    if spec.name == "mnli" and not dev_path.is_file() and matched.is_file():
        dev_path = matched
    if spec.name == "mnli" and not train_path.is_file():
        mismatched = folder / "dev_mismatched.tsv"
        if mismatched.is_file():
            train = read_tsv(mismatched, spec)
            train.source += " (no train.tsv: mismatched dev used as train)"
            return train, read_tsv(dev_path, spec)
    if spec.name == "qqp" and not dev_path.is_file() and train_path.is_file():
        return _hold_out(read_tsv(train_path, spec), holdout, seed)
    return read_tsv(train_path, spec), read_tsv(dev_path, spec)


def _hub_split(dataset: Any, spec: TaskSpec, split: str) -> Split:
    rows = dataset[split]
    columns = [rows[name] for name in spec.text_columns]
    labels = [int(label) for label in rows["label"]]
    bad = [i for i, y in enumerate(labels) if not 0 <= y < spec.num_labels]
    if bad:
        raise DataError(
            f"hub glue/{spec.name} {split}: row {bad[0]} has label "
            f"{labels[bad[0]]}, outside 0..{spec.num_labels - 1}"
        )
    return Split(
        [tuple(text) for text in zip(*columns, strict=True)],
        labels,
        f"hub glue/{spec.name} {split}",
    )


def _load_hub(spec: TaskSpec) -> tuple[Split, Split]:
    """Hugging Face ``glue`` dataset; ``datasets`` is optional, so it is
    imported only here."""
    try:
        datasets = importlib.import_module("datasets")
    except ImportError:
        raise DataError(
            f"task {spec.name}: no data.root given and the 'datasets' "
            "package is not installed; install it (pip install datasets) "
            "or set data.root to a local GLUE copy"
        ) from None
    try:
        dataset = datasets.load_dataset("glue", spec.name)
    except Exception as exc:
        raise DataError(
            f"task {spec.name}: could not load glue/{spec.name} from the "
            f"Hugging Face Hub ({exc}); set data.root to a local GLUE copy"
        ) from exc
    test_split = _HUB_TEST_SPLIT.get(spec.name, "validation")
    return (
        _hub_split(dataset, spec, "train"),
        _hub_split(dataset, spec, test_split),
    )


def load_task(
    task: str,
    root: str | Path | None,
    *,
    seed: int = 0,
    holdout: int = 2000,
) -> tuple[Split, Split]:
    """(train, test) of ``task``; test is GLUE's dev set (MNLI: matched).

    ``seed`` and ``holdout`` matter only where a test set has to be carved
    out of train.tsv (QQP in a local copy without dev.tsv). ``task`` is
    a GLUE task or your own data, ``NAME@tsv`` (see ``task_spec``).
    """
    spec = task_spec(task, root)
    if root is None:
        return _load_hub(spec)
    return _load_local(spec, Path(root), seed, holdout)
