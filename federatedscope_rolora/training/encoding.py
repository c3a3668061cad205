"""Tokenisation once per split, then dynamic padding per batch.

A split is tokenised in one call (the fast tokenizers batch in Rust) and
kept unpadded; each batch is padded only to its own longest row, which on
GLUE's short sentences saves most of the compute that padding every row to
``max_length`` would waste. The tokenizer is any callable Hugging Face
tokenizer, passed in, so this module does not import transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from federatedscope_rolora.training.glue import Split


@dataclass
class EncodedDataset:
    """Unpadded token ids per example; ``token_type_ids`` is None for
    tokenizers that do not make them (RoBERTa)."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


def _as_lists(rows: Any) -> list[list[int]]:
    return [[int(token) for token in row] for row in rows]


def pair_separator(tokenizer: Any) -> str | None:
    """The token put before a pair's second text where the tokenizer marks
    no boundary between the two (GPT-2's byte-level BPE joins them into
    one text): its sep token, else its eos token. None where it marks
    pairs itself (BERT's [SEP], RoBERTa's </s></s>, Llama's BOS).
    ValueError if it marks none and has neither token."""
    count = getattr(tokenizer, "num_special_tokens_to_add", None)
    if count is None or count(pair=True) > count(pair=False):
        return None
    sep = getattr(tokenizer, "sep_token", None) or \
        getattr(tokenizer, "eos_token", None)
    if not sep:
        raise ValueError("the tokenizer marks no boundary between the two "
                         "texts of a pair and has no sep or eos token to "
                         "put there; a sentence-pair task cannot be told "
                         "apart from one joined text")
    return str(sep)


def min_tok_len(tokenizer: Any, texts: int) -> int:
    """The smallest ``llm.tok_len`` that keeps one token of each of the
    ``texts`` (1 or 2) texts beside the special tokens the tokenizer adds
    (and the separator ``pair_separator`` puts in)."""
    count = getattr(tokenizer, "num_special_tokens_to_add", None)
    specials = 0 if count is None else int(count(pair=texts == 2))
    separator = texts == 2 and pair_separator(tokenizer) is not None
    # The separator leads the second text, so truncation, which takes
    # the longer text's tokens first, can leave that text the separator
    # alone at one token less: with a longer first text (the, movie |
    # sep) every second text read the same. Two more keep one of its own.
    return specials + texts + 2 * int(separator)


def encode(split: Split, tokenizer: Any, max_length: int) -> EncodedDataset:
    """Tokenise every example of ``split`` (as pairs for two-column tasks),
    truncated to ``max_length`` tokens, without padding."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if not split.texts:
        return EncodedDataset([], None, [])
    width = len(split.texts[0])
    if width not in (1, 2):
        raise ValueError(
            f"{split.source}: examples have {width} text columns; "
            "a tokenizer takes one text or a pair"
        )
    columns = [list(column) for column in zip(*split.texts, strict=True)]
    if width == 2 and (sep := pair_separator(tokenizer)) is not None:
        columns[1] = [sep + text for text in columns[1]]
    encoded = tokenizer(*columns, truncation=True, max_length=max_length)
    type_ids = encoded.get("token_type_ids")
    return EncodedDataset(
        input_ids=_as_lists(encoded["input_ids"]),
        token_type_ids=None if type_ids is None else _as_lists(type_ids),
        labels=list(split.labels),
    )


def _padded(rows: list[list[int]], length: int, pad: int) -> torch.Tensor:
    return torch.tensor(
        [row + [pad] * (length - len(row)) for row in rows], dtype=torch.long
    )


def collate(
    dataset: EncodedDataset, indices: Sequence[int], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """A batch of the rows ``indices``, right-padded to its longest row:
    ``input_ids``, ``attention_mask``, ``token_type_ids`` (if the dataset
    has them, padded with 0) and ``labels``."""
    if len(indices) == 0:
        raise ValueError("cannot collate an empty batch")
    ids = [dataset.input_ids[i] for i in indices]
    length = max(len(row) for row in ids)
    batch = {
        "input_ids": _padded(ids, length, pad_token_id),
        "attention_mask": _padded([[1] * len(row) for row in ids], length, 0),
    }
    if dataset.token_type_ids is not None:
        types = [dataset.token_type_ids[i] for i in indices]
        batch["token_type_ids"] = _padded(types, length, 0)
    batch["labels"] = torch.tensor(
        [dataset.labels[i] for i in indices], dtype=torch.long
    )
    return batch


def batch_indices(
    indices: Sequence[int],
    batch_size: int,
    generator: torch.Generator | None,
) -> list[list[int]]:
    """``indices`` in batches of ``batch_size``, the last one possibly
    smaller; shuffled first with ``generator`` when one is given, so a
    seeded generator gives the same batches on every run."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = list(indices)
    if generator is not None:
        permutation = torch.randperm(len(order), generator=generator)
        order = [order[i] for i in permutation.tolist()]
    return [
        order[start : start + batch_size]
        for start in range(0, len(order), batch_size)
    ]
