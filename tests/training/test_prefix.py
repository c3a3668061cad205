"""The cached forward equals the uncached one with the prefix's dropout
off, for tiny random BERT and RoBERTa built in code; the cache stores each
distinct input once, at its own length, and leaves the model as it was."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from federatedscope_rolora.training.encoding import EncodedDataset, collate
from federatedscope_rolora.training.prefix import (
    PrefixCache,
    PrefixError,
    backbone_of,
    build_prefix_cache,
    cache_bytes,
    cached_inputs,
    check_cache_size,
    distinct_inputs,
    prefix_layers,
    run_model,
    upper_only,
)

LAYERS = 2        # cached: embeddings and layers 0-1 of 4
VOCAB = 40
PAD = {"bert": 0, "roberta": 1}
SIZES = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 4,
         "num_attention_heads": 2, "intermediate_size": 64, "num_labels": 2,
         "initializer_range": 0.2}


def tiny_model(kind: str, dropout: float = 0.1) -> nn.Module:
    """4 layers, LoRA on query, value and the dense layers of 2-3."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    common = {**SIZES, "hidden_dropout_prob": dropout,
              "attention_probs_dropout_prob": dropout}
    torch.manual_seed(0)
    base: nn.Module
    if kind == "bert":
        base = BertForSequenceClassification(BertConfig(
            max_position_embeddings=64, **common))
    else:
        base = RobertaForSequenceClassification(RobertaConfig(
            max_position_embeddings=66, pad_token_id=1, type_vocab_size=1,
            **common))
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8,
                        target_modules=["query", "value", "dense"],
                        layers_to_transform=[2, 3])
    with warnings.catch_warnings():
        # PEFT calls a transformers API that 5.x deprecates; not ours.
        warnings.filterwarnings("ignore", category=FutureWarning)
        model = get_peft_model(base, config)
    # LoRA's B starts at zero; make it matter so a wrong cut shows.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    return model


def tiny_data(kind: str) -> EncodedDataset:
    """Rows of lengths 3..12, one duplicated; BERT with token types."""
    gen = torch.Generator().manual_seed(1)
    ids = [[2] + torch.randint(3, VOCAB, (n,), generator=gen).tolist()
           for n in (5, 11, 2, 8, 11, 3)]
    ids.append(list(ids[1]))
    types = [[0] * (len(r) - 2) + [1, 1] for r in ids] \
        if kind == "bert" else None
    return EncodedDataset(ids, types, [i % 2 for i in range(len(ids))])


def prefix_in_eval_mode(model: nn.Module) -> None:
    """The reference: the model training, its frozen prefix without
    dropout."""
    backbone = backbone_of(model)
    backbone.embeddings.eval()
    for layer in backbone.encoder.layer[:LAYERS]:
        layer.eval()


def build(model: nn.Module, data: EncodedDataset, kind: str) -> PrefixCache:
    return build_prefix_cache(model, distinct_inputs([data]), LAYERS,
                              pad_token_id=PAD[kind], batch_size=3,
                              device=torch.device("cpu"))


def lora_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters()
            if p.grad is not None}


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_cached_training_step_equals_uncached_with_prefix_dropout_off(
        kind: str) -> None:
    model, data = tiny_model(kind), tiny_data(kind)
    cache = build(model, data, kind)
    rows = [0, 1, 2, 3, 5]
    batch = collate(data, rows, PAD[kind])
    model.train()
    prefix_in_eval_mode(model)
    torch.manual_seed(7)
    want = model(**batch).loss
    want.backward()
    want_grads = lora_grads(model)
    model.zero_grad(set_to_none=True)
    model.train()

    torch.manual_seed(7)
    got = run_model(model, cached_inputs(cache, data, rows, batch), cache)
    got.loss.backward()

    assert got.loss.item() == pytest.approx(want.item(), abs=1e-5)
    got_grads = lora_grads(model)
    assert set(got_grads) == set(want_grads) and got_grads
    for key, grad in want_grads.items():
        assert torch.allclose(got_grads[key], grad, atol=1e-5), key


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_cached_evaluation_equals_uncached(kind: str) -> None:
    model, data = tiny_model(kind), tiny_data(kind)
    model.eval()
    cache = build(model, data, kind)
    rows = list(range(len(data)))
    batch = collate(data, rows, PAD[kind])

    got = run_model(model, cached_inputs(cache, data, rows, batch), cache)

    want = model(**batch)
    assert torch.allclose(got.logits, want.logits, atol=1e-5)


def test_a_cache_one_layer_short_gives_other_logits() -> None:
    """The check above can fail: states after layer 0 fed to layers 2.."""
    model, data = tiny_model("bert"), tiny_data("bert")
    model.eval()
    short = build_prefix_cache(model, distinct_inputs([data]), 1,
                               pad_token_id=0, batch_size=3,
                               device=torch.device("cpu"))
    short.layers = LAYERS
    rows = list(range(len(data)))
    batch = collate(data, rows, 0)

    got = run_model(model, cached_inputs(short, data, rows, batch), short)

    assert not torch.allclose(got.logits, model(**batch).logits, atol=1e-3)


def test_each_distinct_input_is_stored_once_at_its_own_length() -> None:
    model, data = tiny_model("bert"), tiny_data("bert")
    keys = distinct_inputs([data, data])

    cache = build(model, data, "bert")

    assert len(keys) == len(data) - 1            # row 6 repeats row 1
    assert [len(s) for s in cache.states.values()] == \
        sorted(len(ids) for ids, _ in keys)
    tokens = sum(len(ids) for ids, _ in keys)
    assert cache.nbytes == tokens * 32 * 4 == cache_bytes(keys, model)
    assert cache.summary()["layers"] == LAYERS


def test_building_and_running_leave_the_model_as_it_was() -> None:
    model, data = tiny_model("bert"), tiny_data("bert")
    names = [name for name, _ in model.named_parameters()]
    model.train()
    cache = build(model, data, "bert")
    assert model.training and backbone_of(model).pooler is not None

    with pytest.raises(RuntimeError), upper_only(model, LAYERS):
        raise RuntimeError("a failing batch")

    assert [name for name, _ in model.named_parameters()] == names
    assert len(backbone_of(model).encoder.layer) == 4
    assert cache.states


def test_prefix_layers_is_the_lowest_adapted_layer() -> None:
    assert prefix_layers([15, 16, 23]) == 15
    assert prefix_layers([3, 1]) == 1
    assert prefix_layers(None) == 0
    assert prefix_layers([0, 5]) == 0


def test_a_trained_prefix_is_refused() -> None:
    model = tiny_model("bert")

    with pytest.raises(PrefixError, match="encoder.layer.2"):
        build_prefix_cache(model, distinct_inputs([tiny_data("bert")]), 3,
                           pad_token_id=0, batch_size=3,
                           device=torch.device("cpu"))


def test_a_cache_over_the_limit_names_its_size_and_the_key() -> None:
    with pytest.raises(PrefixError, match=r"2\.50 MB \(2,500,000 bytes\), "
                       r"over rolora\.prefix_cache_mb \(2 MB\)"):
        check_cache_size(2_500_000, 2, LAYERS)
    check_cache_size(2_000_000, 2, LAYERS)


def odd_model(kind: str) -> nn.Module:
    """4-layer encoders that backbone_of accepts but whose forward does
    more than run the layer list: DeBERTa-v2 with a conv layer after
    the list's first layer, ELECTRA projecting a narrower embedding;
    ``deberta`` without the conv is the control."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        DebertaV2Config,
        DebertaV2ForSequenceClassification,
        ElectraConfig,
        ElectraForSequenceClassification,
    )

    common = {**SIZES, "max_position_embeddings": 64}
    torch.manual_seed(0)
    base: nn.Module
    if kind == "electra":
        base = ElectraForSequenceClassification(ElectraConfig(
            embedding_size=16, **common))
        targets = ["query", "value"]
    else:
        base = DebertaV2ForSequenceClassification(DebertaV2Config(
            relative_attention=True, position_biased_input=False,
            conv_kernel_size=3 if kind == "deberta-conv" else 0, **common))
        targets = ["query_proj", "value_proj"]
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8,
                        target_modules=targets, layers_to_transform=[2, 3])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return get_peft_model(base, config)


@pytest.mark.parametrize(("kind", "named"), [
    ("deberta-conv", r"DebertaV2ForSequenceClassification gives other "
     r"logits from cached states than from its tokens \(max difference "),
    ("electra", r"ElectraForSequenceClassification cannot run from cached "
     r"states \(RuntimeError: "),
])
def test_an_encoder_that_does_more_than_run_its_layers_is_refused(
        kind: str, named: str) -> None:
    """Both passed the structural check: DeBERTa-v2's conv then ran
    twice, in the wrong place, and trained the wrong network without a
    word; ELECTRA failed in every client with a bare shape error."""
    model = odd_model(kind)

    with pytest.raises(PrefixError, match=named):
        build_prefix_cache(model, distinct_inputs([tiny_data("bert")]),
                           LAYERS, pad_token_id=0, batch_size=3,
                           device=torch.device("cpu"))
    assert model.training     # left as it was


def test_the_check_passes_an_encoder_that_only_runs_its_layers() -> None:
    model = odd_model("deberta")
    data = tiny_data("bert")
    cache = build_prefix_cache(model, distinct_inputs([data]), LAYERS,
                               pad_token_id=0, batch_size=3,
                               device=torch.device("cpu"))

    model.eval()
    rows = list(range(len(data)))
    batch = collate(data, rows, 0)
    with torch.no_grad():
        want = model(**batch).logits
        got = run_model(model, cached_inputs(cache, data, rows, batch),
                        cache).logits
    assert torch.allclose(got, want, atol=1e-5)
