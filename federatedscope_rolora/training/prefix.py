"""The frozen prefix of the encoder, run once per input.

When LoRA adapts only the upper encoder layers (``layers_to_transform``,
e.g. the paper's 15-23 of RoBERTa-Large's 24) and the head sits above the
encoder, the embeddings and layers 0..L-1 below the lowest adapted layer L
are a fixed function of the input: recomputing them in every local step
and every evaluation changes nothing but the clock. ``rolora.prefix_cache``
runs them once per distinct input, in evaluation mode (so without dropout,
the one thing it changes), and training and evaluation then run layers
L.. and the head on the cached hidden states.

The cached forward is the model's own forward with the embeddings replaced
by a pass-through of ``inputs_embeds`` and the encoder's layer list cut to
layers L..: the attention mask, the head and the loss are the model's own
code, so they cannot drift from the uncached forward. Padded positions get
zeros; the attention mask hides them from every real position, as it hides
the pad tokens' states in the uncached forward. Works for models whose
backbone has ``embeddings`` and ``encoder.layer`` (BERT, MiniLM, RoBERTa)
and whose encoder only runs that list in turn: the cache is checked
against the model's own forward on a few inputs when it is built.

States are keyed by the tokens themselves (ids and token types), so an
input that occurs twice is stored once, and both runners look rows up
alike whatever their data pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from federatedscope_rolora.core.roles import role_of
from federatedscope_rolora.training.encoding import EncodedDataset, collate

# The tokens of one input: ids, and token types (None for RoBERTa).
InputKey = tuple[tuple[int, ...], tuple[int, ...] | None]

MB = 10**6


class PrefixError(ValueError):
    """The prefix cannot be cached; the message names the key or model."""


def prefix_layers(layers_to_transform: Sequence[int] | None) -> int:
    """L, the number of encoder layers below the lowest adapted one; 0
    when ``layers_to_transform`` is unset (every layer is adapted)."""
    return min(layers_to_transform) if layers_to_transform else 0


def backbone_of(model: nn.Module) -> Any:
    """The transformer under PEFT's wrapper and the task head: the module
    holding ``embeddings`` and ``encoder.layer`` (typed Any: those are
    the model's own attributes, unknown to ``nn.Module``)."""
    unwrap = getattr(model, "get_base_model", None)
    base = unwrap() if callable(unwrap) else model
    backbone = getattr(base, str(getattr(base, "base_model_prefix", "")),
                       None)
    encoder = getattr(backbone, "encoder", None)
    if backbone is None or not hasattr(backbone, "embeddings") or \
            not isinstance(getattr(encoder, "layer", None), nn.ModuleList):
        raise PrefixError(f"rolora.prefix_cache needs a BERT- or "
                          f"RoBERTa-style encoder (embeddings, "
                          f"encoder.layer); {type(base).__name__} is not")
    return backbone


def check_frozen_prefix(model: nn.Module, layers: int) -> None:
    """PrefixError unless some layer lies above the first ``layers`` and
    neither they nor the embeddings hold an adapter tensor: a prefix that
    trains is no fixed function of the input."""
    backbone = backbone_of(model)
    stack = backbone.encoder.layer
    if layers >= len(stack):
        raise PrefixError(f"rolora.prefix_cache: the model has "
                          f"{len(stack)} encoder layers, none above layer "
                          f"{layers - 1}")
    prefix = {"embeddings": backbone.embeddings,
              **{f"encoder.layer.{i}": stack[i] for i in range(layers)}}
    for where, module in prefix.items():
        for name, _ in module.named_parameters():
            if role_of(name) is not None:
                raise PrefixError(f"rolora.prefix_cache: {where}.{name} "
                                  "is trained, so layers below "
                                  f"{layers} are not a fixed function of "
                                  "the input")


def nothing_to_cache(layers_to_transform: Sequence[int] | None) -> str:
    """Why ``rolora.prefix_cache`` has no layer to cache, for the log."""
    key = "llm.adapter.args[0].layers_to_transform"
    why = f"{key} is unset, so every layer is adapted" \
        if not layers_to_transform else f"{key} starts at layer 0"
    return (f"rolora.prefix_cache: nothing to cache ({why}); every layer "
            "runs, as without the cache")


def input_key(data: EncodedDataset, row: int) -> InputKey:
    types = data.token_type_ids
    return (tuple(data.input_ids[row]),
            None if types is None else tuple(types[row]))


def distinct_inputs(datasets: Iterable[EncodedDataset]) -> list[InputKey]:
    """Every distinct input of ``datasets``, in order of first sight."""
    seen: dict[InputKey, None] = {}
    for data in datasets:
        for row in range(len(data)):
            seen.setdefault(input_key(data, row), None)
    return list(seen)


def cache_bytes(keys: Sequence[InputKey], model: nn.Module) -> int:
    """Bytes the cache of ``keys`` holds: a state per real token."""
    backbone = backbone_of(model)
    width = int(backbone.config.hidden_size)
    element = int(next(backbone.embeddings.parameters()).element_size())
    return sum(len(ids) for ids, _ in keys) * width * element


def prefix_span(layers: int) -> str:
    """'layer 0' or 'layers 0-3', for messages."""
    return "layer 0" if layers == 1 else f"layers 0-{layers - 1}"


def check_cache_size(nbytes: int, limit_mb: float, layers: int) -> None:
    if nbytes > limit_mb * MB:
        raise PrefixError(
            f"rolora.prefix_cache: the states after {prefix_span(layers)} "
            f"would take {nbytes / MB:,.2f} MB ({nbytes:,} bytes), over "
            f"rolora.prefix_cache_mb ({limit_mb:g} MB); raise "
            "rolora.prefix_cache_mb or set rolora.prefix_cache false")


@dataclass
class PrefixCache:
    """Hidden states after encoder layer ``layers``-1, per input, each
    at its own length (no padding)."""

    layers: int
    states: dict[InputKey, torch.Tensor] = field(default_factory=dict)
    build_seconds: float = 0.0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for t in self.states.values())

    def summary(self) -> dict[str, Any]:
        return {"layers": self.layers, "bytes": self.nbytes,
                "inputs": len(self.states),
                "build_seconds": self.build_seconds}

    def describe(self) -> str:
        """The log line: what was cached, its size and time."""
        return (f"prefix cache: embeddings and {prefix_span(self.layers)} "
                f"ran once for {len(self.states):,} distinct inputs, "
                f"{self.nbytes / MB:,.1f} MB, in "
                f"{self.build_seconds:.1f} s")

    def hidden(self, keys: Sequence[InputKey], length: int
               ) -> torch.Tensor:
        """The states of ``keys``, right-padded with zeros to ``length``:
        (batch, length, hidden)."""
        try:
            rows = [self.states[key] for key in keys]
        except KeyError:
            raise KeyError("an input the prefix cache was not built for: "
                           "the cache covers the run's train and test "
                           "rows only") from None
        out = rows[0].new_zeros(len(rows), length, rows[0].shape[-1])
        for i, row in enumerate(rows):
            out[i, :len(row)] = row
        return out


@contextmanager
def _layers_only(backbone: Any, layers: slice) -> Iterator[None]:
    stack = backbone.encoder.layer
    backbone.encoder.layer = nn.ModuleList(list(stack)[layers])
    try:
        yield
    finally:
        backbone.encoder.layer = stack


class _GivenStates(nn.Module):
    """Stands in for the embeddings: the cached states come in as
    ``inputs_embeds`` and go on unchanged."""

    def forward(self, *args: Any, inputs_embeds: torch.Tensor | None = None,
                **kwargs: Any) -> torch.Tensor:
        if inputs_embeds is None:
            raise ValueError("the cached forward takes the prefix states "
                             "as inputs_embeds")
        return inputs_embeds


@contextmanager
def upper_only(model: nn.Module, layers: int) -> Iterator[None]:
    """Within: ``model(inputs_embeds=states, attention_mask=...)`` runs
    encoder layers ``layers``.. and the head on ``states``. The model's
    modules are put back on exit, so parameter names never change."""
    backbone = backbone_of(model)
    embeddings = backbone.embeddings
    backbone.embeddings = _GivenStates()
    try:
        with _layers_only(backbone, slice(layers, None)):
            yield
    finally:
        backbone.embeddings = embeddings


def run_model(model: nn.Module, inputs: dict[str, torch.Tensor],
              cache: PrefixCache | None) -> Any:
    """The model's output on ``inputs``: tokens, or with a cache the
    states after its prefix (``inputs_embeds``)."""
    if cache is None:
        return model(**inputs)
    with upper_only(model, cache.layers):
        return model(**inputs)


def cached_inputs(cache: PrefixCache, data: EncodedDataset,
                  rows: Sequence[int], batch: dict[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
    """``batch`` (``collate`` of ``rows``) with its tokens replaced by
    their cached states, padded to the batch's own length."""
    keys = [input_key(data, row) for row in rows]
    return {"inputs_embeds": cache.hidden(keys, batch["input_ids"].shape[1]),
            "attention_mask": batch["attention_mask"],
            "labels": batch["labels"]}


@torch.no_grad()
def build_prefix_cache(model: nn.Module, keys: Sequence[InputKey],
                       layers: int, *, pad_token_id: int, batch_size: int,
                       device: torch.device) -> PrefixCache:
    """Run embeddings and layers 0..``layers``-1 once per input of
    ``keys``, in evaluation mode (no dropout), in batches of similar
    length; the states stay on the CPU."""
    check_frozen_prefix(model, layers)
    backbone = backbone_of(model)
    order = sorted(keys, key=lambda key: len(key[0]))
    cache = PrefixCache(layers)
    was_training = backbone.training
    pooler = getattr(backbone, "pooler", None)
    start = time.perf_counter()
    backbone.eval()
    if pooler is not None:
        backbone.pooler = None  # the head's business, not the prefix's
    try:
        with _layers_only(backbone, slice(0, layers)):
            for first in range(0, len(order), batch_size):
                chunk = order[first:first + batch_size]
                _add_states(cache, backbone, chunk, pad_token_id, device)
    finally:
        if pooler is not None:
            backbone.pooler = pooler
        backbone.train(was_training)
    cache.build_seconds = time.perf_counter() - start
    check_cached_forward(model, cache, order, pad_token_id=pad_token_id,
                         device=device)
    return cache


# Checked on a few of the cached inputs: the cached forward must give the
# model's own logits, to float noise (they agree to ~1e-6 for BERT).
CHECK_INPUTS = 4
CHECK_TOLERANCE = 1e-4


@torch.no_grad()
def check_cached_forward(model: nn.Module, cache: PrefixCache,
                         keys: Sequence[InputKey], *, pad_token_id: int,
                         device: torch.device) -> None:
    """PrefixError unless the cached forward of a few of ``keys`` (the
    shortest, the longest and between, batched together so padding is
    tried too) gives the logits of the model's own forward, both in
    evaluation mode. An encoder that does more than run its layer list
    in turn passes the structural check but not this: DeBERTa-v2 with a
    conv layer (applied after the list's first layer: twice, in the
    wrong place, silently), ELECTRA with a smaller embedding (its
    projection applied to the cached states: a shape error)."""
    if not keys:
        return
    picks = sorted({round(i * (len(keys) - 1) / (CHECK_INPUTS - 1))
                    for i in range(CHECK_INPUTS)})
    sample = [keys[i] for i in picks]
    data = _dataset_of(sample)
    rows = list(range(len(sample)))
    batch = collate(data, rows, pad_token_id)
    name = type(getattr(model, "get_base_model", lambda: model)()).__name__
    was_training = model.training
    model.eval()
    try:
        tokens = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        want = model(**tokens).logits
        states = {k: v.to(device) for k, v in
                  cached_inputs(cache, data, rows, batch).items()
                  if k != "labels"}
        try:
            got = run_model(model, states, cache).logits
        except (RuntimeError, ValueError, TypeError) as err:
            raise PrefixError(
                f"rolora.prefix_cache: {name} cannot run from cached "
                f"states ({type(err).__name__}: {err}); its encoder does "
                "more than run its layers in turn; set "
                "rolora.prefix_cache false") from None
    finally:
        model.train(was_training)
    diff = float((got - want).abs().max())
    if not diff <= CHECK_TOLERANCE * (1.0 + float(want.abs().max())):
        raise PrefixError(
            f"rolora.prefix_cache: {name} gives other logits from cached "
            f"states than from its tokens (max difference {diff:.3g} on "
            f"{len(sample)} inputs): its encoder does more than run its "
            "layers in turn (e.g. DeBERTa-v2's conv layer); set "
            "rolora.prefix_cache false")


def _add_states(cache: PrefixCache, backbone: Any,
                keys: Sequence[InputKey], pad_token_id: int,
                device: torch.device) -> None:
    batch = collate(_dataset_of(keys), range(len(keys)), pad_token_id)
    del batch["labels"]
    out = backbone(**{k: v.to(device) for k, v in batch.items()})
    states = out.last_hidden_state.to("cpu")
    for key, row in zip(keys, states, strict=True):
        cache.states[key] = row[:len(key[0])].clone()


def _dataset_of(keys: Sequence[InputKey]) -> EncodedDataset:
    """The inputs ``keys`` name, as rows to ``collate`` (labels unused)."""
    with_types = keys[0][1] is not None
    return EncodedDataset(
        input_ids=[list(ids) for ids, _ in keys],
        token_type_ids=[list(t or ()) for _, t in keys] if with_types
        else None,
        labels=[0] * len(keys))
