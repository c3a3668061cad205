"""Tokenisation and batching with a tiny WordPiece tokenizer built from a
vocab file in a temporary directory (no downloads)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from federatedscope_rolora.training.encoding import (
    EncodedDataset,
    batch_indices,
    collate,
    encode,
    min_tok_len,
    pair_separator,
)
from federatedscope_rolora.training.glue import Split

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB += ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "."]
ID = {token: i for i, token in enumerate(VOCAB)}
CLS, SEP = ID["[CLS]"], ID["[SEP]"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # transformers 5 defines this alias lazily; mypy cannot see it.
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]

    folder = tmp_path_factory.mktemp("tokenizer")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return BertTokenizerFast.from_pretrained(str(folder))


def _ids(text: str) -> list[int]:
    return [ID[word] for word in text.split()]


def test_encode_single_sentences(tokenizer: Any) -> None:
    split = Split([("the cat sat",), ("a dog",)], [1, 0], "test")

    encoded = encode(split, tokenizer, max_length=32)

    assert encoded.input_ids == [
        [CLS, *_ids("the cat sat"), SEP],
        [CLS, *_ids("a dog"), SEP],
    ]
    assert encoded.token_type_ids == [[0] * 5, [0] * 4]
    assert encoded.labels == [1, 0]
    assert len(encoded) == 2


def test_encode_pairs_marks_second_segment(tokenizer: Any) -> None:
    split = Split([("the cat", "a dog ran")], [1], "test")

    encoded = encode(split, tokenizer, max_length=32)

    assert encoded.input_ids == [
        [CLS, *_ids("the cat"), SEP, *_ids("a dog ran"), SEP]
    ]
    assert encoded.token_type_ids == [[0, 0, 0, 0, 1, 1, 1, 1]]


@pytest.fixture(scope="module")
def gpt2_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A byte-level BPE tokenizer with GPT-2's post-processor: it adds no
    special token, to single texts or to pairs."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import GPT2TokenizerFast

    eos = "<|endoftext|>"
    inner = Tokenizer(models.BPE())
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    inner.post_processor = processors.ByteLevel(trim_offsets=False)
    inner.train_from_iterator(
        ["is it good? it is. the movie was good"] * 50,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=[eos],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return GPT2TokenizerFast(tokenizer_object=inner, eos_token=eos,
                             bos_token=eos, unk_token=eos)


def test_a_pair_gets_a_separator_where_the_tokenizer_marks_none(
        gpt2_tokenizer: Any, tokenizer: Any) -> None:
    """GPT-2's tokenizer joined a pair into one text: ("is it good?",
    "it is.") was the same ids as "is it good?it is."."""
    eos = gpt2_tokenizer.eos_token_id
    pair = encode(Split([("is it good?", "it is.")], [0], "t"),
                  gpt2_tokenizer, 32).input_ids[0]
    first = gpt2_tokenizer("is it good?")["input_ids"]
    second = gpt2_tokenizer("it is.")["input_ids"]

    assert pair == [*first, eos, *second]
    assert pair_separator(gpt2_tokenizer) == gpt2_tokenizer.eos_token
    assert pair_separator(tokenizer) is None      # BERT marks pairs itself
    # a, the separator, b, and one more: at 3 a longer first text kept
    # two tokens and the second the separator alone
    assert min_tok_len(gpt2_tokenizer, 2) == 4
    least = [encode(Split([("the movie was good", second)], [0], "t"),
                    gpt2_tokenizer, 4).input_ids[0]
             for second in ("is it", "was good")]
    assert least[0] != least[1]
    assert all(ids[-2] == eos for ids in least)   # ..., sep, one of b
    assert min_tok_len(tokenizer, 2) == 5         # [CLS] a [SEP] b [SEP]
    assert min_tok_len(tokenizer, 1) == 3


def test_encode_truncates_without_padding(tokenizer: Any) -> None:
    split = Split([("the cat sat on the mat .",), ("dog",)], [0, 1], "test")

    encoded = encode(split, tokenizer, max_length=5)

    assert encoded.input_ids == [
        [CLS, *_ids("the cat sat"), SEP],
        [CLS, ID["dog"], SEP],
    ]


class _CountingTokenizer:
    """A RoBERTa-like tokenizer: no token_type_ids; counts its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *texts: list[str], **kwargs: Any) -> dict[str, Any]:
        self.calls.append(texts)
        first = texts[0]
        return {"input_ids": [[0, len(t), 2] for t in first]}


def test_encode_calls_tokenizer_once_and_allows_no_type_ids() -> None:
    fake = _CountingTokenizer()
    split = Split([("ab", "x"), ("abc", "y"), ("a", "z")], [0, 1, 0], "t")

    encoded = encode(split, fake, max_length=8)

    assert fake.calls == [(["ab", "abc", "a"], ["x", "y", "z"])]
    assert encoded.token_type_ids is None
    assert encoded.input_ids == [[0, 2, 2], [0, 3, 2], [0, 1, 2]]


def test_encode_empty_split_and_bad_max_length(tokenizer: Any) -> None:
    assert len(encode(Split([], [], "empty"), tokenizer, 8)) == 0
    with pytest.raises(ValueError, match="max_length must be >= 1, got 0"):
        encode(Split([("a",)], [0], "t"), tokenizer, 0)


def test_collate_pads_to_longest_in_batch() -> None:
    data = EncodedDataset(
        input_ids=[[5, 6, 7, 8], [5, 6], [5, 6, 7]],
        token_type_ids=[[0, 0, 1, 1], [0, 0], [0, 1, 1]],
        labels=[1, 0, 2],
    )

    batch = collate(data, [1, 2], pad_token_id=9)

    assert batch["input_ids"].tolist() == [[5, 6, 9], [5, 6, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0], [0, 1, 1]]
    assert batch["labels"].tolist() == [0, 2]
    assert all(t.dtype == torch.long for t in batch.values())


def test_collate_without_type_ids_and_empty_batch() -> None:
    data = EncodedDataset([[1, 2], [3]], None, [0, 1])

    batch = collate(data, [0, 1], pad_token_id=0)

    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [[1, 2], [3, 0]]
    with pytest.raises(ValueError, match="empty batch"):
        collate(data, [], pad_token_id=0)


def test_batch_indices_in_order_keeps_last_batch() -> None:
    batches = batch_indices([10, 11, 12, 13, 14], 2, generator=None)

    assert batches == [[10, 11], [12, 13], [14]]


def test_batch_indices_shuffles_with_seeded_generator() -> None:
    indices = list(range(100, 130))

    first = batch_indices(indices, 8, torch.Generator().manual_seed(0))
    again = batch_indices(indices, 8, torch.Generator().manual_seed(0))
    other = batch_indices(indices, 8, torch.Generator().manual_seed(1))

    assert first == again
    assert first != other
    assert [len(b) for b in first] == [8, 8, 8, 6]
    flat = [i for batch in first for i in batch]
    assert sorted(flat) == indices
    assert flat != indices


def test_batch_indices_rejects_bad_size() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        batch_indices([1, 2], 0, generator=None)
