"""The three methods: which roles each round trains (and sends)."""

from __future__ import annotations

import pytest

from federatedscope_rolora.core.methods import (
    METHODS,
    FFALoRA,
    LoRA,
    RoLoRA,
    RoundPlan,
    make_method,
)
from federatedscope_rolora.core.roles import HEAD, LORA_A, LORA_B

PREFIX = "base_model.model.bert.encoder.layer.0.attention.self"
A_Q = f"{PREFIX}.query.lora_A.default.weight"
B_Q = f"{PREFIX}.query.lora_B.default.weight"
A_V = f"{PREFIX}.value.lora_A.other.weight"
B_V = f"{PREFIX}.value.lora_B.other.weight"
HEAD_W = "base_model.model.classifier.modules_to_save.default.weight"
BASE_W = f"{PREFIX}.query.base_layer.weight"
KEYS = [A_Q, B_Q, A_V, B_V, HEAD_W, BASE_W]
ADAPTER_KEYS = [A_Q, B_Q, A_V, B_V, HEAD_W]


def test_lora_trains_both_factors_every_round() -> None:
    method = make_method("lora")

    for t in range(1, 5):
        assert method.plan(t).trained_roles == {LORA_A, LORA_B}
        assert method.plan(t).phase is None


def test_ffa_lora_trains_only_b_every_round() -> None:
    method = make_method("ffa_lora")

    for t in range(1, 5):
        assert method.plan(t).trained_roles == {LORA_B}


def test_rolora_alternates_b_a_b() -> None:
    method = make_method("rolora")

    plans = [method.plan(t) for t in (1, 2, 3)]

    assert [p.trained_roles for p in plans] == [
        {LORA_B}, {LORA_A}, {LORA_B}]
    assert [p.phase for p in plans] == ["B", "A", "B"]
    assert [p.round_idx for p in plans] == [1, 2, 3]


def test_rolora_honours_first_and_period() -> None:
    method = make_method("rolora", first="A", period=2)

    roles = [method.plan(t).trained_roles for t in range(1, 6)]

    assert roles == [{LORA_A}, {LORA_A}, {LORA_B}, {LORA_B}, {LORA_A}]


@pytest.mark.parametrize("name", METHODS)
def test_head_role_only_with_train_head(name: str) -> None:
    frozen_head = make_method(name)
    trained_head = make_method(name, train_head=True)

    for t in (1, 2):
        assert HEAD not in frozen_head.plan(t).trained_roles
        with_head = trained_head.plan(t).trained_roles
        assert HEAD in with_head
        assert with_head - {HEAD} == frozen_head.plan(t).trained_roles


def test_rolora_b_round_trained_and_frozen_keys() -> None:
    plan = RoLoRA().plan(1)

    assert plan.trained_keys(KEYS) == [B_Q, B_V]
    assert plan.frozen_keys(KEYS) == [A_Q, A_V, HEAD_W]


def test_rolora_a_round_with_head_trained_keys() -> None:
    plan = RoLoRA(train_head=True).plan(2)

    assert plan.trained_keys(KEYS) == [A_Q, A_V, HEAD_W]
    assert plan.frozen_keys(KEYS) == [B_Q, B_V]


@pytest.mark.parametrize("method", [
    LoRA(), LoRA(True), FFALoRA(), FFALoRA(True), RoLoRA(), RoLoRA(True),
    RoLoRA(first="A", period=3),
])
def test_trained_and_frozen_keys_partition_the_adapter(method: object
                                                       ) -> None:
    for t in range(1, 7):
        plan = method.plan(t)  # type: ignore[attr-defined]
        trained = plan.trained_keys(KEYS)
        frozen = plan.frozen_keys(KEYS)

        assert not set(trained) & set(frozen)
        assert sorted(trained + frozen) == sorted(ADAPTER_KEYS)
        assert BASE_W not in trained + frozen


def test_plan_keys_accept_a_mapping() -> None:
    plan = FFALoRA().plan(4)
    state = dict.fromkeys(KEYS, 0)

    assert plan.trained_keys(state) == [B_Q, B_V]
    assert plan.frozen_keys(state) == [A_Q, A_V, HEAD_W]


def test_make_method_builds_the_named_method() -> None:
    assert make_method("lora") == LoRA()
    assert make_method("ffa_lora", train_head=True) == FFALoRA(True)
    assert make_method("rolora", first="A", period=2) == RoLoRA(
        False, "A", 2)
    assert [make_method(n).name for n in METHODS] == list(METHODS)


def test_make_method_rejects_unknown_name_listing_known_ones() -> None:
    with pytest.raises(ValueError) as err:
        make_method("fedavg")

    message = str(err.value)
    assert "'fedavg'" in message
    for name in ("rolora", "lora", "ffa_lora"):
        assert name in message


@pytest.mark.parametrize("kwargs", [{"first": "C"}, {"period": 0}])
def test_make_method_validates_rolora_schedule(kwargs: dict[str, object]
                                               ) -> None:
    with pytest.raises(ValueError, match="first phase|period"):
        make_method("rolora", **kwargs)  # type: ignore[arg-type]


def test_round_plan_is_immutable() -> None:
    plan = RoundPlan(1, frozenset({LORA_B}), "B")

    with pytest.raises(AttributeError):
        plan.round_idx = 2  # type: ignore[misc]
