"""Roles come from PEFT's path components, never from the adapter name."""

from __future__ import annotations

import pytest

from federatedscope_rolora.core.roles import (
    HEAD,
    LORA_A,
    LORA_B,
    ROLES,
    keys_with_roles,
    role_of,
    split_by_role,
)

PREFIX = "base_model.model.bert.encoder.layer.0.attention.self"
A_KEY = f"{PREFIX}.query.lora_A.default.weight"
B_KEY = f"{PREFIX}.query.lora_B.default.weight"
A_OTHER = f"{PREFIX}.value.lora_A.other.weight"
B_OTHER = f"{PREFIX}.value.lora_B.other.weight"
HEAD_KEY = "base_model.model.classifier.modules_to_save.default.weight"
HEAD_OTHER = "base_model.model.classifier.modules_to_save.other.bias"
ORIGINAL_HEAD = "base_model.model.classifier.original_module.weight"
BASE_KEY = f"{PREFIX}.query.base_layer.weight"


def test_role_names_are_the_three_roles_and_the_residual() -> None:
    assert ROLES == ("lora_A", "lora_B", "head", "residual")


def test_fedex_residual_keys_have_their_own_role() -> None:
    key = f"{PREFIX}.query.fedex_residual.default.add_u"
    assert role_of(key) == "residual"


@pytest.mark.parametrize("key", [A_KEY, A_OTHER])
def test_lora_a_keys_are_a_whatever_the_adapter_name(key: str) -> None:
    assert role_of(key) == LORA_A


@pytest.mark.parametrize("key", [B_KEY, B_OTHER])
def test_lora_b_keys_are_b_whatever_the_adapter_name(key: str) -> None:
    assert role_of(key) == LORA_B


def test_embedding_factors_have_the_factor_roles() -> None:
    emb = "base_model.model.bert.embeddings.word_embeddings"

    assert role_of(f"{emb}.lora_embedding_A.default") == LORA_A
    assert role_of(f"{emb}.lora_embedding_B.other") == LORA_B


@pytest.mark.parametrize("key", [
    HEAD_KEY,
    HEAD_OTHER,
    "base_model.model.score.modules_to_save.default.weight",
    "base_model.model.classifier.out_proj.modules_to_save.other.weight",
    "classifier.weight",
    "score.weight",
])
def test_classifier_and_score_heads_are_head(key: str) -> None:
    assert role_of(key) == HEAD


def test_original_module_of_the_head_is_not_a_role() -> None:
    assert role_of(ORIGINAL_HEAD) is None
    assert role_of("base_model.model.score.original_module.weight") is None


@pytest.mark.parametrize("key", [
    BASE_KEY,
    "base_model.model.bert.embeddings.word_embeddings.weight",
    "base_model.model.bert.pooler.dense.bias",
    # substrings are not path components
    "base_model.model.my_lora_A_thing.weight",
    "base_model.model.scores.weight",
])
def test_base_weights_have_no_role(key: str) -> None:
    assert role_of(key) is None


def test_keys_with_roles_keeps_order_and_filters() -> None:
    keys = [HEAD_KEY, B_KEY, BASE_KEY, A_OTHER, A_KEY]

    assert keys_with_roles(keys, [LORA_A]) == [A_OTHER, A_KEY]
    assert keys_with_roles(keys, {LORA_B, HEAD}) == [HEAD_KEY, B_KEY]
    assert keys_with_roles(keys, []) == []


def test_split_by_role_groups_and_drops_base_weights() -> None:
    state = {A_KEY: 1, B_KEY: 2, A_OTHER: 3, HEAD_KEY: 4, BASE_KEY: 5,
             ORIGINAL_HEAD: 6}

    groups = split_by_role(state)

    assert groups == {
        LORA_A: {A_KEY: 1, A_OTHER: 3},
        LORA_B: {B_KEY: 2},
        HEAD: {HEAD_KEY: 4},
    }
