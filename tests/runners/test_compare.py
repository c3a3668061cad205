"""``compare``'s method list and table, without running anything."""

from __future__ import annotations

from typing import Any

import pytest

from federatedscope_rolora.config import ConfigError
from federatedscope_rolora.core.names import METHODS
from federatedscope_rolora.runners.compare import markdown_table, parse_methods


def test_all_is_every_method_in_order() -> None:
    assert parse_methods("all") == list(METHODS)
    assert len(METHODS) == 6


def test_any_subset_in_the_order_given() -> None:
    assert parse_methods("fedsa_lora, rolora") == ["fedsa_lora", "rolora"]


@pytest.mark.parametrize("text", ["", "lora,lora", "lora,all", "fedex"])
def test_bad_lists_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_methods(text)


def _result(acc: float, personal: float | None = None,
            gaps: list[float | None] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "primary_metric": "acc", "final": {"acc": acc},
        "best": {"acc": acc, "round": 2}, "bytes_up_total": 2000,
        "bytes_down_total": 4000, "wall_seconds": 1.0,
        "aggregation_gap": gaps or [None, None]}
    if personal is not None:
        out["final_per_client"] = {
            "example_weighted": {"acc": personal},
            "client_mean": {"acc": personal - 0.01}}
    return out


def test_table_keeps_global_and_per_client_scores_apart() -> None:
    comparison = {"task": "sst2", "model": "m", "clients": 3, "rounds": 2,
                  "seed": 0, "methods": {
                      "lora": _result(0.6, gaps=[0.2, 0.4]),
                      "fedsa_lora": _result(0.5, personal=0.8)}}

    table = markdown_table(comparison)

    rows = {line.split("|")[1].strip(): line.split("|")
            for line in table.splitlines() if line.startswith("| ")}
    assert "global final" in rows["method"][2]
    assert "per-client" in rows["method"][4]
    assert rows["lora"][2].strip() == "acc 0.6000"
    assert rows["lora"][4].strip() == "-"
    assert rows["lora"][5].strip() == "3.00e-01"
    assert rows["fedsa_lora"][2].strip() == "acc 0.5000"
    assert rows["fedsa_lora"][4].strip() == "0.8000 / 0.7900"
    assert rows["fedsa_lora"][5].strip() == "-"
