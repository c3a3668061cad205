"""``rolora.prefix_cache`` inside FederatedScope: one cache per process.

FederatedScope builds the data first (``fs/data.py``, which sees the whole
config) and then a model per worker or one shared model
(``fs/model.py``, which sees ``cfg.model`` alone). The data builder keeps
the run's distinct inputs here; the first model built runs its frozen
prefix over them, the way the embedded runner does at setup (same size
check, same log line), and every later model of the process uses that
cache: each is built from the same checkpoint, so their prefixes are the
same function. The trainers and the server read it from here.

Each process caches the whole train and test set it loaded (in
distributed mode, a client process holds every client's inputs).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from federatedscope_rolora.config import Config
from federatedscope_rolora.training.encoding import EncodedDataset
from federatedscope_rolora.training.models import LoraSpec
from federatedscope_rolora.training.prefix import (
    InputKey,
    PrefixCache,
    build_prefix_cache,
    cache_bytes,
    check_cache_size,
    check_frozen_prefix,
    distinct_inputs,
    nothing_to_cache,
    prefix_layers,
)

logger = logging.getLogger("federatedscope.rolora")

_inputs: list[tuple[list[InputKey], int]] = []   # keys, pad token id
_cache: list[PrefixCache | None] = []


def remember_inputs(settings: Config, datasets: list[EncodedDataset],
                    pad_token_id: int) -> None:
    """The data builder's part: the inputs a cache would cover."""
    _inputs.clear()
    _cache.clear()
    if settings["rolora.prefix_cache"]:
        _inputs.append((distinct_inputs(datasets), pad_token_id))


def prepare(settings: Config, model: torch.nn.Module) -> None:
    """The model builder's part: build the process's cache on the first
    model (checking its size first), or check a later model against it."""
    if not settings["rolora.prefix_cache"]:
        return
    if _cache:
        if _cache[0] is not None:
            check_frozen_prefix(model, _cache[0].layers)
        return
    adapted = LoraSpec.from_args(settings.lora).layers_to_transform
    layers = prefix_layers(adapted)
    if layers == 0:
        logger.warning("%s", nothing_to_cache(adapted))
        _cache.append(None)
        return
    if not _inputs:
        raise RuntimeError("rolora.prefix_cache: the data builder kept no "
                           "inputs; build the data before the model")
    keys, pad = _inputs[0]
    check_frozen_prefix(model, layers)
    check_cache_size(cache_bytes(keys, model),
                     settings["rolora.prefix_cache_mb"], layers)
    cache = build_prefix_cache(model, keys, layers, pad_token_id=pad,
                               batch_size=settings["rolora.eval_batch_size"],
                               device=torch.device("cpu"))
    logger.info("rolora %s", cache.describe())
    _cache.append(cache)


def current() -> PrefixCache | None:
    """The process's cache; None when every layer runs."""
    return _cache[0] if _cache else None


def row_keys(x: Any, ids: int, mask: int, types: int) -> list[InputKey]:
    """The input of each example of a batch of GlueRows tensors: its
    tokens up to its length (rows ``ids``, ``types`` of ``x``)."""
    keys = []
    for example in x:
        length = int(example[mask].sum())
        type_ids = tuple(example[types, :length].tolist()) \
            if example.shape[0] > types else None
        keys.append((tuple(example[ids, :length].tolist()), type_ids))
    return keys
