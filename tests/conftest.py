"""Shared fixtures: a tiny random BERT and a tiny GLUE-layout task.

Nothing is downloaded: the model is built from a config in code and the
tokenizer from a vocabulary file written here.
"""

from __future__ import annotations

import importlib.metadata
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml


def environment_snapshot() -> dict[str, object]:
    """What a test must not change in the environment running it
    (DESIGN.md, invariant 9): the installed distributions and versions,
    and the scripts in its ``bin``."""
    bindir = Path(sys.prefix) / "bin"
    return {
        "distributions": sorted(
            {(d.metadata["Name"] or "?", d.version)
             for d in importlib.metadata.distributions()}),
        "scripts": sorted(p.name for p in bindir.iterdir())
        if bindir.is_dir() else [],
    }


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_ENV_KEY] = environment_snapshot()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a test installed, removed or replaced anything in
    the environment running the tests."""
    before = session.config.stash.get(_ENV_KEY, None)
    after = environment_snapshot()
    if before is None or before == after:
        return
    changes = []
    for field in ("distributions", "scripts"):
        old, new = set(before[field]), set(after[field])  # type: ignore
        changes += [f"{field}: lost {sorted(old - new)}"] if old - new \
            else []
        changes += [f"{field}: gained {sorted(new - old)}"] if new - old \
            else []
    print("\nThe tests changed the environment running them "
          f"({sys.prefix}): " + "; ".join(changes), file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


_ENV_KEY = pytest.StashKey[dict[str, object]]()

POSITIVE = ["good", "great", "fine", "nice", "superb"]
NEGATIVE = ["bad", "awful", "poor", "sad", "dull"]
FILLER = ["the", "a", "movie", "film", "plot", "was", "is", "very",
          "quite", "story", "actor", "scene", "and", "it"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _sentence(rng: random.Random, label: int) -> str:
    words = rng.sample(FILLER, 5)
    words.insert(rng.randrange(6), rng.choice(POSITIVE if label
                                              else NEGATIVE))
    return " ".join(words)


def write_sst2(root: Path, n_train: int = 240, n_dev: int = 80,
               seed: int = 0) -> Path:
    """An SST-2-shaped task whose label is the sentiment word's."""
    rng = random.Random(seed)
    task = root / "SST-2"
    task.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            label = i % 2
            rows.append(f"{_sentence(rng, label)}\t{label}")
        (task / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def write_own_data(root: Path, n_train: int = 90, n_dev: int = 30
                   ) -> Path:
    """Your own data as ``tickets@tsv``: an id, two text columns and
    three named labels, the label word in the body."""
    task = root / "tickets"
    task.mkdir(parents=True, exist_ok=True)
    labels = ("praise", "bug", "billing")
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        rows = ["id\ttitle\tbody\tlabel"]
        rows += [f"{i}\ttitle {i}\tbody {labels[i % 3]}\t{labels[i % 3]}"
                 for i in range(n)]
        (task / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def write_tiny_bert(path: Path) -> Path:
    """A 2-layer, 32-wide random BERT with a matching tokenizer."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertTokenizerFast,  # type: ignore[attr-defined]
    )

    path.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + sorted(set(POSITIVE + NEGATIVE + FILLER))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n",
                                    encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(str(path))
    config = BertConfig(vocab_size=len(vocab), hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64,
                        num_labels=2, initializer_range=0.2)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_glue_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sst2(tmp_path_factory.mktemp("glue"))


def tiny_config_tree(model_dir: Path, glue_root: Path, outdir: Path,
                     **sections: Any) -> dict[str, Any]:
    """A config that runs a few rounds in seconds on the tiny model."""
    tree: dict[str, Any] = {
        "seed": 1,
        "outdir": str(outdir),
        "federate": {"method": "rolora", "client_num": 3,
                     "total_round_num": 4},
        "data": {"root": str(glue_root), "type": "sst2@glue"},
        "model": {"type": str(model_dir)},
        "llm": {"tok_len": 16, "adapter": {"args": [{
            "adapter_package": "peft", "adapter_method": "lora", "r": 4,
            "lora_alpha": 8,
            "target_modules": ["query", "value", "dense"]}]}},
        "train": {"local_update_steps": 4,
                  "optimizer": {"type": "AdamW", "lr": 0.01}},
        "dataloader": {"batch_size": 16},
        "eval": {"freq": 1},
        "rolora": {"head": "frozen", "threads": 1},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            tree.setdefault(section, {}).update(values)
        else:
            tree[section] = values
    return tree


@pytest.fixture
def tiny_cfg_file(tiny_model_dir: Path, tiny_glue_root: Path,
                  tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    tree = tiny_config_tree(tiny_model_dir, tiny_glue_root,
                            tmp_path / "run")
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def rescale_a_weight(model_dir: Path) -> bytes:
    """Scale one query weight of the model in ``model_dir`` by 1.01 (same
    shapes, same path: another model all the same); its file's original
    bytes, to put back."""
    from safetensors.torch import load_file, save_file

    weights = model_dir / "model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(str(weights))
    name = next(k for k in sorted(tensors) if k.endswith("query.weight"))
    tensors[name] = tensors[name] * 1.01
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return original
