"""Client updates are checked key by key; the frozen-factor fingerprint
catches any drift of the frozen half."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from federatedscope_rolora.core.validation import (
    InvalidUpdate,
    fingerprint,
    validate_tensors,
)

PREFIX = "base_model.model.bert.encoder.layer.0.attention.self"
A_KEY = f"{PREFIX}.query.lora_A.default.weight"
B_KEY = f"{PREFIX}.query.lora_B.default.weight"
B_OTHER = f"{PREFIX}.value.lora_B.other.weight"
HEAD_KEY = "base_model.model.classifier.modules_to_save.default.weight"


def _reference() -> dict[str, torch.Tensor]:
    return {
        B_KEY: torch.zeros(4, 2),
        B_OTHER: torch.zeros(4, 2, dtype=torch.bfloat16),
        HEAD_KEY: torch.zeros(2, 4, dtype=torch.float16),
    }


def _good_update() -> dict[str, torch.Tensor]:
    return {key: torch.full_like(ref, 0.5)
            for key, ref in _reference().items()}


# --- fingerprint -----------------------------------------------------------


def _frozen() -> dict[str, torch.Tensor]:
    return {A_KEY: torch.arange(8, dtype=torch.float32).reshape(2, 4),
            HEAD_KEY: torch.ones(2, 4, dtype=torch.bfloat16)}


def test_fingerprint_is_deterministic_and_order_free() -> None:
    state = _frozen()

    first = fingerprint(state, [A_KEY, HEAD_KEY])
    again = fingerprint(dict(reversed(state.items())), [HEAD_KEY, A_KEY])

    assert first == again
    assert len(first) == 64


def test_fingerprint_changes_with_one_value() -> None:
    state = _frozen()
    before = fingerprint(state, [A_KEY, HEAD_KEY])

    state[A_KEY][1, 3] += 1e-6

    assert fingerprint(state, [A_KEY, HEAD_KEY]) != before


def test_fingerprint_changes_with_dtype_shape_and_name() -> None:
    state = _frozen()
    base = fingerprint(state, [A_KEY])
    other_name = f"{PREFIX}.query.lora_A.other.weight"

    reshaped = {A_KEY: state[A_KEY].reshape(4, 2)}
    as_int = {A_KEY: torch.arange(8, dtype=torch.int32).reshape(2, 4)}
    renamed = {other_name: state[A_KEY]}

    assert fingerprint(reshaped, [A_KEY]) != base
    assert fingerprint(as_int, [A_KEY]) != base
    assert fingerprint(renamed, [other_name]) != base


def test_fingerprint_covers_only_the_given_keys() -> None:
    state = _frozen()
    before = fingerprint(state, [A_KEY])

    state[HEAD_KEY].fill_(7.0)

    assert fingerprint(state, [A_KEY]) == before


def test_fingerprint_of_non_contiguous_equals_its_copy() -> None:
    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4)

    view = fingerprint({A_KEY: tensor.t()}, [A_KEY])
    copy = fingerprint({A_KEY: tensor.t().contiguous()}, [A_KEY])

    assert view == copy


# --- validate_tensors ------------------------------------------------------


def test_valid_update_passes() -> None:
    validate_tensors("client 3", _good_update(), _reference())


def test_missing_key_is_named() -> None:
    update = _good_update()
    del update[B_OTHER]

    with pytest.raises(InvalidUpdate, match="client 3: wrong key set") as err:
        validate_tensors("client 3", update, _reference())
    assert B_OTHER in str(err.value)


def test_extra_key_is_named() -> None:
    update = _good_update()
    update[A_KEY] = torch.zeros(2, 4)

    with pytest.raises(InvalidUpdate, match="client 3: wrong key set") as err:
        validate_tensors("client 3", update, _reference())
    assert A_KEY in str(err.value)


def test_wrong_shape_is_named() -> None:
    update = _good_update()
    update[B_KEY] = torch.zeros(2, 4)

    with pytest.raises(InvalidUpdate) as err:
        validate_tensors("client 3", update, _reference())
    assert str(err.value) == (f"client 3: {B_KEY} has shape (2, 4), "
                              "expected (4, 2)")


def test_wrong_dtype_is_named() -> None:
    update = _good_update()
    update[B_OTHER] = torch.zeros(4, 2, dtype=torch.float32)

    with pytest.raises(InvalidUpdate) as err:
        validate_tensors("client 3", update, _reference())
    assert str(err.value) == (f"client 3: {B_OTHER} has dtype "
                              "torch.float32, expected torch.bfloat16")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_value_is_named(bad: float) -> None:
    update = _good_update()
    update[HEAD_KEY][1, 2] = bad

    with pytest.raises(InvalidUpdate) as err:
        validate_tensors("client 3", update, _reference())
    assert str(err.value) == f"client 3: {HEAD_KEY} holds NaN or Inf values"


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support")
@pytest.mark.parametrize("make", [
    lambda t: t.to_sparse(), lambda t: t.to_sparse_csr(),
    lambda t: torch.empty_like(t, device="meta")],
    ids=["sparse_coo", "sparse_csr", "meta"])
def test_a_tensor_without_dense_values_is_named(make: Any) -> None:
    """torch.isfinite raises on these; they must be refused, not crash
    the round."""
    update = _good_update()
    update[B_KEY] = make(update[B_KEY])

    with pytest.raises(InvalidUpdate, match=f"client 3: {B_KEY} is a "
                       ".*expected a dense one with values"):
        validate_tensors("client 3", update, _reference())


def test_non_tensor_value_is_named() -> None:
    update: dict[str, object] = dict(_good_update())
    update[B_KEY] = [[0.0, 0.0]] * 4

    with pytest.raises(InvalidUpdate, match=f"{B_KEY} is a list"):
        validate_tensors("client 3", update, _reference())  # type: ignore


@pytest.mark.parametrize("payload", [None, [1, 2], "lora_B"])
def test_an_update_that_is_not_a_mapping_is_named(payload: object) -> None:
    with pytest.raises(InvalidUpdate, match="client 3: the update is a "
                       f"{type(payload).__name__}, not a mapping"):
        validate_tensors("client 3", payload, _reference())  # type: ignore


@pytest.mark.parametrize("key", [0, ("lora_B",), None])
def test_a_tensor_name_that_is_not_a_string_is_named(key: object) -> None:
    update: dict[object, object] = dict(_good_update())
    update[key] = torch.zeros(4, 2)

    with pytest.raises(InvalidUpdate) as err:
        validate_tensors("client 3", update, _reference())  # type: ignore
    assert str(err.value) == \
        f"client 3: tensor names must be strings, got {key!r}"


def test_invalid_update_is_a_value_error() -> None:
    assert issubclass(InvalidUpdate, ValueError)


# --- property: any dict either passes or raises InvalidUpdate ---------------

_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64,
           torch.int64, torch.bool]
_SHAPES = [(4, 2), (2, 4), (8,), (), (4, 2, 1), (0, 2)]
_KEYS: list[object] = [B_KEY, B_OTHER, HEAD_KEY, A_KEY, "x", "", 0]


@st.composite
def _tensors(draw: st.DrawFn) -> object:
    kind = draw(st.sampled_from(["tensor", "tensor", "tensor", "other"]))
    if kind == "other":
        return draw(st.one_of(st.none(), st.integers(), st.floats(),
                              st.lists(st.floats(), max_size=3)))
    dtype = draw(st.sampled_from(_DTYPES))
    shape = draw(st.sampled_from(_SHAPES))
    fill = draw(st.sampled_from([0.0, 0.5, -3.0, math.nan, math.inf]))
    if dtype in (torch.int64, torch.bool):
        fill = 1.0
    tensor = torch.full(shape, fill, dtype=dtype)
    if tensor.numel() and dtype.is_floating_point and draw(st.booleans()):
        tensor.view(-1)[0] = draw(st.floats(allow_nan=True,
                                            allow_infinity=True,
                                            width=16))
    return tensor


def _expected_ok(update: dict[str, object],
                 reference: dict[str, torch.Tensor]) -> bool:
    if set(update) != set(reference):
        return False
    for key, ref in reference.items():
        value = update[key]
        if not isinstance(value, torch.Tensor):
            return False
        if value.shape != ref.shape or value.dtype != ref.dtype:
            return False
        if not all(math.isfinite(float(x))
                   for x in value.reshape(-1).tolist()):
            return False
    return True


@settings(max_examples=200, deadline=None)
@given(
    update=st.dictionaries(st.sampled_from(_KEYS), _tensors(), max_size=5),
    use_good=st.booleans(),
)
def test_validate_tensors_passes_or_raises_invalid_update(
    update: dict[str, object], use_good: bool,
) -> None:
    reference = _reference()
    if use_good:  # start from a valid update so passing cases are drawn
        update = {**_good_update(), **{k: v for k, v in update.items()
                                       if k in reference and
                                       isinstance(v, torch.Tensor) and
                                       v.shape == reference[k].shape and
                                       v.dtype == reference[k].dtype}}
    expected = _expected_ok(update, reference)

    try:
        validate_tensors("client 9", update, reference)  # type: ignore
    except InvalidUpdate as err:
        assert not expected, f"valid update refused: {err}"
        assert str(err).startswith("client 9: ")
    else:
        assert expected, "invalid update accepted"
