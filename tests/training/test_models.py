"""Saving an adapter: PEFT's format, and no network lookup on the way."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import torch

from federatedscope_rolora.training.models import (
    LoraSpec,
    ModelError,
    adapter_parameters,
    build_model,
    load_base,
    save_adapter,
)


def test_saving_an_adapter_never_looks_up_the_hub(
        tiny_model_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = build_model(str(tiny_model_dir), 2, LoraSpec(r=2), seed=0)
    # What a run on the offline MiniLM copy records: a Hub id, which PEFT
    # would try to fetch a config for unless told not to.
    configs: dict[str, Any] = getattr(model, "peft_config")  # noqa: B009
    for config in configs.values():
        config.base_model_name_or_path = \
            "sentence-transformers/all-MiniLM-L6-v2"
    lookups: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        lookups.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    state = {k: torch.ones_like(v)
             for k, v in adapter_parameters(model).items()}

    save_adapter(model, state, tmp_path / "adapter")

    assert lookups == []
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_a_head_of_another_label_count_is_drawn_afresh(
        tiny_model_dir: Path) -> None:
    """The tiny checkpoint's head has 2 outputs: a 3-label task gets a
    fresh one from the seed (transformers refuses it otherwise), and a
    2-label task keeps the checkpoint's."""
    from transformers import AutoModelForSequenceClassification

    saved = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_model_dir))
    three, _ = load_base(str(tiny_model_dir), 3, seed=0)
    again, _ = load_base(str(tiny_model_dir), 3, seed=0)
    two, _ = load_base(str(tiny_model_dir), 2, seed=0)

    assert three.classifier.weight.shape[0] == 3
    assert torch.equal(three.classifier.weight, again.classifier.weight)
    assert torch.equal(two.classifier.weight, saved.classifier.weight)


@pytest.mark.parametrize(("problem_type", "labels"), [
    ("regression", 1), ("multi_label_classification", 2)])
def test_a_checkpoint_saved_for_another_loss_trains_on_cross_entropy(
        tiny_model_dir: Path, tmp_path: Path, problem_type: str,
        labels: int) -> None:
    """A checkpoint saved for regression or multi-label kept that loss on
    the new head: MSE or BCE, which failed in every client on class
    ids, or (batch of one) trained on MSE without a word."""
    import json
    import shutil

    saved = tmp_path / "saved"
    shutil.copytree(tiny_model_dir, saved)
    config = json.loads((saved / "config.json").read_text())
    config["problem_type"] = problem_type
    if labels == 1:
        config["id2label"] = {"0": "LABEL_0"}
        config["label2id"] = {"LABEL_0": 0}
    (saved / "config.json").write_text(json.dumps(config))

    model, _ = load_base(str(saved), 2, seed=0)
    ids = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0], [2, 8, 9, 3]])
    targets = torch.tensor([0, 1, 1])
    out = model(input_ids=ids, attention_mask=(ids > 0).long(),
                labels=targets)

    assert model.config.problem_type == "single_label_classification"
    assert torch.allclose(
        out.loss, torch.nn.functional.cross_entropy(out.logits, targets))


def test_a_checkpoint_with_a_wrong_shaped_weight_is_refused(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    """Only the head may be replaced: a body weight of the wrong shape
    for its config is a broken checkpoint, named, not trained from
    random values."""
    import json
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] += 8
    (broken / "config.json").write_text(json.dumps(config))

    with pytest.raises(ModelError, match=r"wrong shape for its config: "
                       r"bert\.encoder\.layer\.0\.intermediate"):
        load_base(str(broken), 2, seed=0)


def test_a_model_file_it_may_not_read_is_named_as_such(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers said "No such file or directory" of a weight file
    without read permission. Root reads anything, so the check is given
    a file it reports unreadable."""
    import os

    from federatedscope_rolora.training import models

    real = os.access
    monkeypatch.setattr(models.os, "access", lambda path, mode: False
                        if Path(path).name == "model.safetensors"
                        else real(path, mode))

    with pytest.raises(ModelError, match=r"cannot read model\.safetensors "
                       r"\(permissions\)"):
        load_base(str(tiny_model_dir), 2, seed=0)
