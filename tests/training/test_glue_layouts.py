"""GLUE read as GLUE ships it: each task's own download (headers, label
columns, MNLI's file names and '-' labels, CoLA without a header) reads
the same as the normalised copy, in both runners' data paths; a file of
no known layout is exit 2 naming the file and the columns it has."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from federatedscope_rolora.cli import main
from federatedscope_rolora.config import _flatten as flatten
from federatedscope_rolora.config import build_config
from federatedscope_rolora.fs.data import glue_rows
from federatedscope_rolora.runners.setup import scored_subset, split_train
from federatedscope_rolora.training.glue import TASKS as SPECS
from federatedscope_rolora.training.glue import (
    DataError,
    load_task,
    read_tsv,
    task_spec,
)
from tests.conftest import tiny_config_tree

NLI = ("entailment", "neutral", "contradiction")
NLI2 = ("entailment", "not_entailment")
WORDS = ["the", "film", "plot", "was", "good", "bad", "a", "story", '"odd']


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(5))


def _rows(task: str, n: int, seed: int) -> tuple[list[str], list[tuple[
        tuple[str, ...], str]]]:
    """GLUE's header for ``task`` and n rows; each row's (texts, label)
    as a reader must return them."""
    rng = random.Random(seed)
    lines, expected = [], []
    for i in range(n):
        a, b = _text(rng), _text(rng)
        if task == "SST-2":
            label = str(i % 2)
            lines.append(f"{a}\t{label}")
            expected.append(((a,), label))
        elif task in ("QNLI", "RTE"):
            label = NLI2[i % 2]
            lines.append(f"{i}\t{a}\t{b}\t{label}")
            expected.append(((a, b), label))
        elif task == "MRPC":
            label = str(i % 2)
            lines.append(f"{label}\t{100 + i}\t{200 + i}\t{a}\t{b}")
            expected.append(((a, b), label))
        elif task == "QQP":
            label = str(i % 2)
            lines.append(f"{i}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}\t{label}")
            expected.append(((a, b), label))
        elif task == "MNLI":
            label = "-" if i % 5 == 4 else NLI[i % 3]
            parses = "\t".join(["( x )"] * 4)
            lines.append(f"{i}\t{i}\t{i}e\tfiction\t{parses}\t{a}\t{b}"
                         f"\t{label}\t{label}")
            if label != "-":
                expected.append(((a, b), label))
        elif task == "CoLA":
            label = str(i % 2)
            star = "" if label == "1" else "*"
            lines.append(f"gj04\t{label}\t{star}\t{a}")
            expected.append(((a,), label))
    headers = {
        "SST-2": ["sentence\tlabel"], "QNLI": [
            "index\tquestion\tsentence\tlabel"],
        "RTE": ["index\tsentence1\tsentence2\tlabel"],
        "MRPC": ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"],
        "QQP": ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"],
        "MNLI": ["index\tpromptID\tpairID\tgenre\tsentence1_binary_parse"
                 "\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse"
                 "\tsentence1\tsentence2\tlabel1\tgold_label"],
        "CoLA": [],
    }
    return headers[task] + lines, expected


TASKS = {"sst2": "SST-2", "qnli": "QNLI", "rte": "RTE", "mrpc": "MRPC",
         "qqp": "QQP", "mnli": "MNLI", "cola": "CoLA"}
FILES = {"MNLI": ("train.tsv", "dev_matched.tsv")}


def write_glue_download(root: Path, task: str, n: int = 30
                        ) -> dict[str, list[tuple[tuple[str, ...], str]]]:
    """``root/<TASK>/`` as GLUE's download lays it out."""
    folder = root / TASKS[task]
    folder.mkdir(parents=True)
    expected = {}
    for split, name in zip(("train", "test"),
                           FILES.get(TASKS[task], ("train.tsv", "dev.tsv")),
                           strict=True):
        lines, rows = _rows(TASKS[task], n, seed=len(expected))
        (folder / name).write_text("\n".join(lines) + "\n",
                                   encoding="utf-8")
        expected[split] = rows
    return expected


@pytest.mark.parametrize("task", sorted(TASKS))
def test_glues_own_layout_reads_by_header(tmp_path: Path, task: str
                                          ) -> None:
    expected = write_glue_download(tmp_path, task)

    train, test = load_task(task, tmp_path)

    ids = {name: i for i, name in enumerate(task_spec(task).label_names)}
    ids.update({str(i): i for i in range(len(ids))})
    for split, rows in ((train, expected["train"]),
                        (test, expected["test"])):
        assert split.texts == [texts for texts, _ in rows]
        assert split.labels == [ids[label] for _, label in rows]


def test_mnli_gold_label_dashes_are_skipped_and_counted(tmp_path: Path
                                                        ) -> None:
    write_glue_download(tmp_path, "mnli", n=30)

    train, test = load_task("mnli", tmp_path)

    assert len(train) == 24 and len(test) == 24
    assert train.source == ("MNLI/train.tsv (GLUE layout, label column "
                            "'gold_label'; 6 rows with gold_label '-' "
                            "skipped)")
    assert test.source.startswith("MNLI/dev_matched.tsv")


def test_cola_without_a_header_is_told_by_its_shape(tmp_path: Path
                                                    ) -> None:
    write_glue_download(tmp_path, "cola", n=10)

    train, _ = load_task("cola", tmp_path)

    assert len(train) == 10          # the first row is data, not a header
    assert "headerless" in train.source


def test_a_bad_row_of_headerless_cola_is_named_by_its_own_line(
        tmp_path: Path) -> None:
    """The rows were all read before the first was checked, so every
    error named the file's last line."""
    rows = ["gj04\t1\t\tthe cat sat .", "gj04\t7\t*\tcat the sat .",
            "gj04\t0\t*\tsat cat .", "gj04\t1\t\ta dog ran ."]
    path = tmp_path / "train.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")

    with pytest.raises(DataError, match=r"train\.tsv:2: "):
        read_tsv(path, SPECS["cola"])


@pytest.mark.parametrize("task", sorted(TASKS))
def test_both_runners_read_glues_layout_alike(
        tiny_model_dir: Path, tmp_path: Path, task: str) -> None:
    """The embedded runner's set-up and the plugin's data builder (its
    rows, before FederatedScope's splitter) read the same examples."""
    write_glue_download(tmp_path / "glue", task)
    tree = tiny_config_tree(tiny_model_dir, tmp_path / "glue",
                            tmp_path / "run", data={"type": f"{task}@glue"})
    cfg = build_config(flatten(tree))
    train, test = load_task(cfg.task, cfg["data.root"],
                            seed=cfg["seed"], holdout=cfg["rolora.holdout"])

    subset, _ = split_train(cfg, train)             # the embedded runner
    scored = scored_subset(cfg, test)
    fs_train, fs_test = glue_rows(_namespace(cfg.to_tree()))  # the plugin

    assert len(fs_train) == len(subset) > 0
    assert len(fs_test) == len(scored) > 0
    assert [fs_train[i][1] for i in range(len(fs_train))] == subset.labels
    assert subset.source.startswith(f"{TASKS[task]}/train.tsv")


def _namespace(tree: dict[str, Any]) -> Any:
    """A FederatedScope-like config: attribute access all the way down."""
    return SimpleNamespace(**{k: _namespace(v) if isinstance(v, dict)
                              else v for k, v in tree.items()})


def test_an_unknown_layout_names_the_file_and_its_columns(
        tmp_path: Path) -> None:
    folder = tmp_path / "MRPC"
    folder.mkdir()
    (folder / "train.tsv").write_text("text_a\ttext_b\ty\nx\ty\t1\n",
                                      encoding="utf-8")

    with pytest.raises(DataError) as err:
        load_task("mrpc", tmp_path)

    message = str(err.value)
    assert "MRPC/train.tsv:1: unknown layout for task mrpc" in message
    assert "columns text_a, text_b, y" in message
    assert "#1 String #2 String Quality" in message


def test_an_unknown_layout_is_exit_2_in_the_cli(
        tiny_model_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "glue" / "QQP"
    folder.mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_text("q1\tq2\tdup\na\tb\t0\n",
                                   encoding="utf-8")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_tree(
        tiny_model_dir, tmp_path / "glue", tmp_path / "run",
        data={"type": "qqp@glue"})), encoding="utf-8")

    code = main(["run", "--cfg", str(cfg)])

    err = capsys.readouterr().err
    assert code == 2
    assert "QQP/train.tsv:1: unknown layout for task qqp" in err
    assert "columns q1, q2, dup" in err
    assert not (tmp_path / "run").exists()
