"""Your own data, ``data.type: NAME@tsv``: columns and labels read from
the files, every malformed file named, and a federated run on it in the
embedded runner (the plugin's run is in tests/fs)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from federatedscope_rolora.config import ConfigError, build_config
from federatedscope_rolora.config import _flatten as flatten
from federatedscope_rolora.training.glue import (
    DataError,
    load_task,
    task_spec,
)
from tests.conftest import tiny_config_tree, write_own_data

REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_columns_and_labels_come_from_the_files(tmp_path: Path) -> None:
    root = write_own_data(tmp_path)

    spec = task_spec("tickets@tsv", root)
    train, test = load_task("tickets@tsv", root)

    assert spec.name == "tickets@tsv"
    assert spec.text_columns == ("title", "body")  # id is not text
    assert spec.label_names == ("billing", "bug", "praise")
    assert spec.metrics == ("acc", "f1_macro")
    assert (len(train), len(test)) == (90, 30)
    assert set(train.labels) == {0, 1, 2}
    assert train.texts[0] == ("title 0", "body praise")
    assert train.labels[0] == spec.label_names.index("praise")
    assert test.source == "tickets/dev.tsv"


def test_integer_labels_sort_as_numbers_and_have_no_aliases(
        tmp_path: Path) -> None:
    """Labels 2, 10 and 33: ids in numeric order, and a row labelled 0
    (no such label) is refused, not read as the label with id 0."""
    lines = "text\tlabel\n" + "".join(f"t{i}\t{y}\n" for i, y in
                                      enumerate([10, 2, 33, 2]))
    _write(tmp_path / "n" / "train.tsv", lines)
    _write(tmp_path / "n" / "dev.tsv", "text\tlabel\nx\t0\n")

    assert task_spec("n@tsv", tmp_path).label_names == ("2", "10", "33")
    with pytest.raises(DataError, match=r"dev.tsv:2: unknown label '0'"):
        load_task("n@tsv", tmp_path)


@pytest.mark.parametrize(("header", "rows", "fragment"), [
    ("text\ttag", "a\tx\nb\ty\n", "no 'label' column; the header has "
     "columns text, tag"),
    ("a\tb\tc\tlabel", "1\t2\t3\tx\n4\t5\t6\ty\n",
     "one or two text columns .* the header has a, b, c"),
    ("id\tlabel", "1\tx\n2\ty\n", "one or two text columns .* has none"),
    ("text\tlabel", "a\tx\nb\tx\n", r"two or more labels; the label "
     r"column holds \['x'\]"),
    # a trailing tab made a second, empty text column: every example a
    # pair (text, '')
    ("text\tlabel\t", "a\tx\t\nb\ty\t\n", r"train.tsv:1: the header has "
     r"a column without a name \(a trailing tab\?\)"),
    # the second 'text' column was dropped, the first fed twice
    ("text\ttext\tlabel", "a\tb\tx\nc\td\ty\n",
     r"train.tsv:1: the header has text twice"),
])
def test_a_file_that_cannot_be_a_task_is_named(
        tmp_path: Path, header: str, rows: str, fragment: str) -> None:
    _write(tmp_path / "bad" / "train.tsv", header + "\n" + rows)

    with pytest.raises(DataError, match=fragment):
        task_spec("bad@tsv", tmp_path)


@pytest.mark.parametrize(("rows", "fragment"), [
    # the labels come from the train file, so a row that read_tsv would
    # refuse is named here, not misread as a one-label task
    ("a\tx\nb\ty\textra\n", r"train.tsv:3: expected 2 tab-separated "
     r"columns, found 3"),
    ("a\tx\n\nb\n", r"train.tsv:4: expected 2 tab-separated columns, "
     r"found 1"),
    ("a\tx\nb\t\nc\ty\n", r"train.tsv:3: empty label"),
    ("a\tx\nb\t \nc\ty\n", r"train.tsv:3: empty label ' '"),
    # 'y ' was a third class beside 'y', learnt apart from it
    ("a\tx\nb\ty\nc\tx\nd\ty \n",
     r"train.tsv:5: label 'y ' differs from label 'y' \(line 3\) only by "
     r"spaces"),
])
def test_a_bad_train_row_is_named_with_its_line(
        tmp_path: Path, rows: str, fragment: str) -> None:
    _write(tmp_path / "t" / "train.tsv", "text\tlabel\n" + rows)
    _write(tmp_path / "t" / "dev.tsv", "text\tlabel\na\tx\n")

    with pytest.raises(DataError, match=fragment):
        task_spec("t@tsv", tmp_path)


def test_a_text_longer_than_csvs_field_limit_is_read(
        tmp_path: Path) -> None:
    """csv's default limit (131,072 characters) refused a valid row; the
    tokenizer truncates the text anyway. The limit is restored after."""
    before = csv.field_size_limit()
    long = "b" * (before + 1)
    _write(tmp_path / "t" / "train.tsv",
           f"text\tlabel\na\tx\n{long}\ty\n")
    _write(tmp_path / "t" / "dev.tsv", f"text\tlabel\n{long}\tx\n")

    train, test = load_task("t@tsv", tmp_path, holdout=0)

    assert sorted(len(t[0]) for t in train.texts) == [1, len(long)]
    assert test.texts == [(long,)]
    assert csv.field_size_limit() == before


def test_a_test_file_header_naming_a_column_twice_is_refused(
        tmp_path: Path) -> None:
    _write(tmp_path / "t" / "train.tsv", "text\tlabel\na\tx\nb\ty\n")
    _write(tmp_path / "t" / "dev.tsv", "text\tlabel\tlabel\na\tx\ty\n")

    with pytest.raises(DataError, match=r"dev.tsv:1: the header has label "
                       r"twice"):
        load_task("t@tsv", tmp_path)


def test_label_ids_do_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    """Labels equal as numbers ('0' and '-0', '1' and '01') get the same
    ids in every process (the run, FederatedScope's parties, export),
    whatever the process's string hash seed."""
    _write(tmp_path / "n" / "train.tsv", "text\tlabel\n" + "".join(
        f"t{i}\t{y}\n" for i, y in enumerate(["1", "01", "2", "0", "-0"])))
    code = ("from federatedscope_rolora.training.glue import task_spec; "
            f"print(task_spec('n@tsv', {str(tmp_path)!r}).label_names)")

    orders = set()
    for seed in ("0", "1", "2", "4"):
        env = {**os.environ, "PYTHONHASHSEED": seed,
               "FEDERATEDSCOPE_ROLORA_NO_HOOK": "1"}
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                              env=env, capture_output=True, text=True,
                              check=True)
        orders.add(done.stdout.strip())

    assert orders == {"('-0', '0', '01', '1', '2')"}


def test_missing_files_and_root_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="set data.root"):
        task_spec("tickets@tsv", None)
    with pytest.raises(DataError, match=r"tickets/train.tsv: file not "
                       r"found \(data.type tickets@tsv\)"):
        task_spec("tickets@tsv", tmp_path)
    _write(tmp_path / "t" / "train.tsv", "text\tlabel\na\tx\nb\ty\n")
    with pytest.raises(DataError, match=r"t/dev.tsv: file not found"):
        load_task("t@tsv", tmp_path)


def test_an_edited_file_is_read_again(tmp_path: Path) -> None:
    path = _write(tmp_path / "t" / "train.tsv", "text\tlabel\na\tx\nb\ty\n")
    assert task_spec("t@tsv", tmp_path).label_names == ("x", "y")

    _write(path, "text\tlabel\na\tx\nb\ty\nc\tz\n")

    assert task_spec("t@tsv", tmp_path).label_names == ("x", "y", "z")


@pytest.mark.parametrize("data_type", ["../x@tsv", "@tsv", "a/b@tsv",
                                       "tickets@csv"])
def test_config_refuses_what_is_not_a_name(data_type: str) -> None:
    with pytest.raises(ConfigError, match="data.type"):
        build_config({"data.type": data_type})


def test_a_federated_run_on_your_own_data(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    """Three labels, two text columns, label skew: the run scores its
    test rows, and eval and export rebuild the model from its files."""
    from federatedscope_rolora.runners.simulation import run
    from federatedscope_rolora.runners.trained import export_model, score_run

    root = write_own_data(tmp_path / "data")
    tree = tiny_config_tree(tiny_model_dir, root, tmp_path / "run",
                            federate={"total_round_num": 2},
                            data={"type": "tickets@tsv", "splitter": "lda",
                                  "splitter_args": [{"alpha": 0.5}]})
    cfg = build_config(flatten(tree))

    summary = run(cfg)
    record = export_model(tmp_path / "run", cfg, tmp_path / "model")

    assert summary["task"] == "tickets@tsv"
    assert summary["test_examples"] == 30
    assert 0.0 <= summary["final"]["acc"] <= 1.0
    assert list(summary["final"]) == ["acc", "f1_macro", "loss"]
    scored = score_run(tmp_path / "run", cfg)["eval"]
    assert (scored["acc"], scored["f1_macro"]) == \
        (summary["final"]["acc"], summary["final"]["f1_macro"])
    assert record["labels"] == ["billing", "bug", "praise"]


def test_eval_and_export_refuse_a_run_whose_labels_changed(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    """The head's ids are the labels the run was trained with: once the
    files give others (billing renamed sales, so every id shifts), eval
    and export refuse, where export would write the wrong id2label."""
    from federatedscope_rolora.runners.simulation import run
    from federatedscope_rolora.runners.trained import (
        TrainedError,
        export_model,
        score_run,
    )

    root = write_own_data(tmp_path / "data")
    tree = tiny_config_tree(tiny_model_dir, root, tmp_path / "run",
                            federate={"total_round_num": 1},
                            data={"type": "tickets@tsv"})
    cfg = build_config(flatten(tree))
    summary = run(cfg)
    for name in ("train.tsv", "dev.tsv"):
        path = root / "tickets" / name
        path.write_text(path.read_text(encoding="utf-8").replace(
            "\tbilling\n", "\tsales\n"), encoding="utf-8")
    changed = (r"trained with labels billing, bug, praise \(ids 0..2\), "
               r"but its train.tsv under data.root now gives bug, praise, "
               r"sales")

    with pytest.raises(TrainedError, match=changed):
        score_run(tmp_path / "run", cfg)
    with pytest.raises(TrainedError, match=changed):
        export_model(tmp_path / "run", cfg, tmp_path / "model")
    assert summary["labels"] == ["billing", "bug", "praise"]
    assert not (tmp_path / "model").exists()


def test_export_without_the_data_uses_the_labels_the_run_recorded(
        tiny_model_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A run's folder on a machine without your data (the server's, in
    a federation): `export --check-rows 0` read train.tsv all the same,
    for the text columns and labels, and refused. The run records both;
    what needs the rows (eval, the export check) still names the file.
    A summary from before the record (no text_columns) reads the file."""
    import json
    import shutil

    from federatedscope_rolora.cli import main
    from federatedscope_rolora.runners.simulation import run

    root = write_own_data(tmp_path / "data")
    tree = tiny_config_tree(tiny_model_dir, root, tmp_path / "run",
                            federate={"total_round_num": 1},
                            data={"type": "tickets@tsv"})
    summary = run(build_config(flatten(tree)))
    shutil.move(root / "tickets", tmp_path / "elsewhere")
    run_dir = str(tmp_path / "run")

    assert main(["export", "--check-rows", "0", run_dir,
                 str(tmp_path / "model")]) == 0
    written = json.loads((tmp_path / "model" / "config.json").read_text())
    assert written["id2label"] == {"0": "billing", "1": "bug", "2": "praise"}
    assert summary["text_columns"] == ["title", "body"]
    capsys.readouterr()
    assert main(["eval", run_dir]) == 2
    assert "tickets/train.tsv: file not found" in capsys.readouterr().err
    assert main(["export", run_dir, str(tmp_path / "checked")]) == 2
    assert "tickets/train.tsv: file not found" in capsys.readouterr().err
    assert not (tmp_path / "checked").exists()

    path = tmp_path / "run" / "summary.json"
    older = json.loads(path.read_text(encoding="utf-8"))
    del older["text_columns"]
    path.write_text(json.dumps(older), encoding="utf-8")
    assert main(["export", "--check-rows", "0", run_dir,
                 str(tmp_path / "older")]) == 2
    assert "tickets/train.tsv: file not found" in capsys.readouterr().err
