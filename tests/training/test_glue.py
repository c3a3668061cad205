"""GLUE loading: bad files fail with file and line, the real local copy
loads with its documented counts and fallbacks, and the Hub path works
through a fake ``datasets`` module (no network)."""

from __future__ import annotations

import os
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from federatedscope_rolora.training.glue import (
    TASKS,
    DataError,
    Split,
    load_task,
    read_tsv,
    task_spec,
)


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _glue_root() -> Path:
    root = os.environ.get("GLUE_DATA_ROOT")
    if not root:
        pytest.skip("GLUE_DATA_ROOT is not set (the Makefile sets it)")
    if not Path(root, "SST-2", "dev.tsv").is_file():
        pytest.skip(f"GLUE_DATA_ROOT={root} holds no SST-2/dev.tsv")
    return Path(root)


# --- specs -----------------------------------------------------------------


def test_task_specs_follow_hf_glue_label_order() -> None:
    assert set(TASKS) == {"sst2", "qnli", "mnli", "qqp", "rte", "cola", "mrpc"}
    assert task_spec("mnli").label_names == (
        "entailment",
        "neutral",
        "contradiction",
    )
    assert task_spec("rte").label_names == ("entailment", "not_entailment")
    assert task_spec("qnli").num_labels == 2
    assert task_spec("mnli").num_labels == 3
    assert task_spec("cola").metrics == ("mcc", "acc")
    assert task_spec("mrpc").metrics == ("acc", "f1")


def test_unknown_task_lists_known_ones() -> None:
    with pytest.raises(DataError, match=r"'stsb'.*mnli.*sst2"):
        task_spec("stsb")


# --- read_tsv --------------------------------------------------------------


def test_read_tsv_uses_header_names_and_keeps_quotes(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "RTE" / "dev.tsv",
        [
            "index\tlabel\tsentence2\tsentence1",
            '0\tnot_entailment\tb1\t" a1 starts with a quote',
            "1\tentailment\tb2\ta2 ",
            "",
            "2\t1\tb3\ta3",
        ],
    )

    split = read_tsv(path, task_spec("rte"))

    assert split.texts == [
        ('" a1 starts with a quote', "b1"),
        ("a2 ", "b2"),
        ("a3", "b3"),
    ]
    assert split.labels == [1, 0, 1]
    assert split.source == "RTE/dev.tsv"
    assert len(split) == 3


def test_read_tsv_row_with_wrong_column_count(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "bad.tsv",
        ["sentence\tlabel", "fine\t1", "a stray\ttab\t0"],
    )

    with pytest.raises(DataError) as info:
        read_tsv(path, task_spec("sst2"))

    assert f"{path}:3:" in str(info.value)
    assert "expected 2" in str(info.value)


def test_read_tsv_unknown_label(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "bad.tsv",
        ["premise\thypothesis\tlabel", "p\th\tneutral", "p\th\tmaybe"],
    )

    with pytest.raises(DataError) as info:
        read_tsv(path, task_spec("mnli"))

    assert f"{path}:3:" in str(info.value)
    assert "'maybe'" in str(info.value)


def test_read_tsv_label_id_out_of_range(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.tsv", ["sentence\tlabel", "s\t2"])

    with pytest.raises(DataError, match=r"bad\.tsv:2: unknown label '2'"):
        read_tsv(path, task_spec("sst2"))


def test_read_tsv_header_missing_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.tsv", ["text\tlabel", "s\t1"])

    with pytest.raises(DataError, match=r"bad\.tsv:1: .*sentence"):
        read_tsv(path, task_spec("sst2"))


def test_read_tsv_empty_and_missing_files(tmp_path: Path) -> None:
    empty = _write(tmp_path / "empty.tsv", [])
    with pytest.raises(DataError, match=r"empty\.tsv: empty file"):
        read_tsv(empty, task_spec("sst2"))
    with pytest.raises(DataError, match=r"nowhere\.tsv: file not found"):
        read_tsv(tmp_path / "nowhere.tsv", task_spec("sst2"))


def test_read_tsv_refuses_a_file_without_examples(tmp_path: Path) -> None:
    header_only = _write(tmp_path / "dev.tsv", ["sentence\tlabel"])
    unagreed = _write(tmp_path / "mnli.tsv", [
        "sentence1\tsentence2\tgold_label", "a\tb\t-"])

    with pytest.raises(DataError,
                       match=r"dev\.tsv: no examples after the header"):
        read_tsv(header_only, task_spec("sst2"))
    with pytest.raises(DataError, match=r"mnli\.tsv: no examples after "
                       r"the header .*1 rows with gold_label '-' skipped"):
        read_tsv(unagreed, task_spec("mnli"))


def test_read_tsv_reads_past_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "dev.tsv"
    path.write_text("\ufeffsentence\tlabel\ngood film\t1\n",
                    encoding="utf-8")

    split = read_tsv(path, task_spec("sst2"))

    assert (split.texts, split.labels) == ([("good film",)], [1])


def test_read_tsv_names_a_path_it_cannot_read(tmp_path: Path) -> None:
    folder = tmp_path / "dev.tsv"
    folder.mkdir()

    with pytest.raises(DataError, match=r"dev\.tsv: cannot be read"):
        read_tsv(folder, task_spec("sst2"))


# --- load_task on small local copies ---------------------------------------


def test_load_task_missing_file_names_path(tmp_path: Path) -> None:
    _write(tmp_path / "SST-2" / "train.tsv", ["sentence\tlabel", "s\t1"])

    with pytest.raises(DataError) as info:
        load_task("sst2", tmp_path)

    assert str(tmp_path / "SST-2" / "dev.tsv") in str(info.value)


def test_load_task_missing_task_dir_names_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"RTE[/\\]train\.tsv: file not found"):
        load_task("rte", str(tmp_path))


def test_qqp_holdout_is_seeded_and_disjoint(tmp_path: Path) -> None:
    rows = [f"q{i}\tr{i}\t{i % 2}" for i in range(50)]
    _write(tmp_path / "QQP" / "train.tsv", ["question1\tquestion2\tlabel"])
    with (tmp_path / "QQP" / "train.tsv").open("a") as handle:
        handle.write("".join(row + "\n" for row in rows))

    train, test = load_task("qqp", tmp_path, seed=3, holdout=10)
    again, _ = load_task("qqp", tmp_path, seed=3, holdout=10)
    other, _ = load_task("qqp", tmp_path, seed=4, holdout=10)

    assert (len(train), len(test)) == (40, 10)
    assert set(train.texts).isdisjoint(test.texts)
    assert len(set(train.texts) | set(test.texts)) == 50
    assert again.texts == train.texts
    assert other.texts != train.texts
    assert test.source == "QQP/train.tsv rows held out (seed 3, 10 rows)"


def test_qqp_holdout_too_large(tmp_path: Path) -> None:
    _write(
        tmp_path / "QQP" / "train.tsv",
        ["question1\tquestion2\tlabel", "a\tb\t0", "c\td\t1"],
    )

    with pytest.raises(DataError, match="cannot hold out 2 of 2"):
        load_task("qqp", tmp_path, holdout=2)


# --- the real local copy (GLUE_DATA_ROOT) ----------------------------------


def test_real_sst2_counts() -> None:
    root = _glue_root()

    train, test = load_task("sst2", root)

    assert len(test) == 872
    assert Counter(test.labels) == {0: 428, 1: 444}
    assert len(train) == 67349
    assert test.texts[0] == (
        "it 's a charming and often affecting journey . ",
    )
    assert (train.source, test.source) == ("SST-2/train.tsv", "SST-2/dev.tsv")


def test_real_mnli_trains_on_mismatched_dev() -> None:
    root = _glue_root()

    train, test = load_task("mnli", root)

    assert train.source.startswith("MNLI/dev_mismatched.tsv")
    assert test.source == "MNLI/dev.tsv"
    assert (len(train), len(test)) == (9832, 9815)
    assert Counter(test.labels) == {0: 3479, 1: 3123, 2: 3213}
    assert test.labels[0] == 1  # neutral, per the README's first row
    assert set(train.texts).isdisjoint(test.texts)


def test_real_qqp_holdout_disjoint() -> None:
    root = _glue_root()

    train, test = load_task("qqp", root, seed=0, holdout=2000)

    assert (len(train), len(test)) == (23497 - 2000, 2000)
    assert "held out" in test.source
    # QQP/train.tsv has no repeated question pair, so texts identify rows.
    assert set(train.texts).isdisjoint(test.texts)
    full = read_tsv(root / "QQP" / "train.tsv", task_spec("qqp"))
    assert Counter(train.texts) + Counter(test.texts) == Counter(full.texts)


@pytest.mark.parametrize(
    ("task", "sizes"),
    [
        ("qnli", (10477, 5463)),
        ("rte", (2490, 277)),
        ("cola", (8551, 1043)),
        ("mrpc", (3668, 408)),
    ],
)
def test_real_task_sizes(task: str, sizes: tuple[int, int]) -> None:
    root = _glue_root()

    train, test = load_task(task, root)

    assert (len(train), len(test)) == sizes
    assert set(train.labels) == set(range(task_spec(task).num_labels))


# --- the Hub path, faked ---------------------------------------------------


class _FakeDatasets(types.ModuleType):
    def __init__(self, splits: dict[str, dict[str, list[Any]]]) -> None:
        super().__init__("datasets")
        self.splits = splits
        self.calls: list[tuple[str, str]] = []

    def load_dataset(self, path: str, name: str) -> dict[str, Any]:
        self.calls.append((path, name))
        return self.splits


def test_hub_path_uses_validation_matched_for_mnli(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows: dict[str, list[Any]] = {
        "premise": ["p"],
        "hypothesis": ["h"],
        "label": [2],
    }
    fake = _FakeDatasets(
        {"train": rows, "validation_matched": {**rows, "label": [0]}}
    )
    monkeypatch.setitem(sys.modules, "datasets", fake)

    train, test = load_task("mnli", None)

    assert fake.calls == [("glue", "mnli")]
    assert train == Split([("p", "h")], [2], "hub glue/mnli train")
    assert test.labels == [0]
    assert test.source == "hub glue/mnli validation_matched"


def test_hub_path_rejects_out_of_range_label(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows: dict[str, list[Any]] = {"sentence": ["a", "b"], "label": [1, -1]}
    fake = _FakeDatasets({"train": rows, "validation": rows})
    monkeypatch.setitem(sys.modules, "datasets", fake)

    with pytest.raises(DataError, match="glue/sst2 train: row 1 has label -1"):
        load_task("sst2", None)


def test_hub_path_without_datasets_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)

    with pytest.raises(DataError, match=r"install it.*data\.root"):
        load_task("sst2", None)
