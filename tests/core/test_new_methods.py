"""FedEx-LoRA, FlexLoRA and FedSA-LoRA through the one server protocol:
what is merged, what travels (and its bytes), the residual kept bit-exact
on clients, FedSA-LoRA's B kept on its client, the aggregation gap of
every method, and checkpoints."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch

from federatedscope_rolora.core.merging import GapStats, lora_modules
from federatedscope_rolora.core.methods import METHODS, make_method
from federatedscope_rolora.core.residual import apply_payload
from federatedscope_rolora.core.roles import LORA_A, LORA_B, RESIDUAL, role_of
from federatedscope_rolora.core.server import (
    AdapterServer,
    ClientUpdate,
    RoundFailed,
    build_update,
)
from federatedscope_rolora.core.validation import InvalidUpdate
from tests.core.reference import dense_flexlora, dense_gap, mean_product

PREFIX = "base_model.model.bert.encoder.layer.0.attention.self"
A_Q = f"{PREFIX}.query.lora_A.default.weight"
B_Q = f"{PREFIX}.query.lora_B.default.weight"
A_V = f"{PREFIX}.value.lora_A.default.weight"
B_V = f"{PREFIX}.value.lora_B.default.weight"
R_Q = f"{PREFIX}.query.fedex_residual.default"
D, K, R = 16, 12, 2
SCALING = 2.0

Tensors = dict[str, torch.Tensor]


def initial_adapter() -> Tensors:
    gen = torch.Generator().manual_seed(0)
    return {A_Q: torch.randn(R, K, generator=gen), B_Q: torch.zeros(D, R),
            A_V: torch.randn(R, K, generator=gen), B_V: torch.zeros(D, R)}


class Client:
    """Holds its adapter and, under FedEx-LoRA, its residual totals."""

    def __init__(self, client_id: int, num_examples: int) -> None:
        self.client_id = client_id
        self.num_examples = num_examples
        self.state: Tensors = {}
        self.residual: Tensors = {}
        self.gen = torch.Generator().manual_seed(100 + client_id)

    def sync(self, server: AdapterServer, round_idx: int) -> Tensors:
        payload = server.downlink(self.client_id, round_idx)
        adapter = {k: v for k, v in payload.items()
                   if role_of(k) != RESIDUAL}
        self.state.update({k: v.clone() for k, v in adapter.items()})
        self.residual = apply_payload(
            self.residual, {k: v for k, v in payload.items()
                            if role_of(k) == RESIDUAL})
        return payload

    def train(self, server: AdapterServer, round_idx: int) -> ClientUpdate:
        """'Local training': a random step on every trained key."""
        plan = server.plan(round_idx)
        for key in plan.trained_keys(self.state):
            self.state[key] = self.state[key] + torch.randn(
                self.state[key].shape, generator=self.gen)
        return build_update(self.client_id, plan,
                            {**self.state, **self.residual},
                            self.num_examples)


def _server(method: str) -> AdapterServer:
    return AdapterServer(make_method(method), initial_adapter(),
                         scaling=SCALING)


def _round(server: AdapterServer, clients: list[Client], round_idx: int
           ) -> list[ClientUpdate]:
    for client in clients:
        client.sync(server, round_idx)
    updates = [client.train(server, round_idx) for client in clients]
    for update in updates:
        server.receive(update)
    server.aggregate(round_idx)
    return updates


def _clients(n: int = 3) -> list[Client]:
    return [Client(i, 2 + 3 * i) for i in range(n)]


def _weights(clients: list[Client]) -> list[float]:
    total = sum(c.num_examples for c in clients)
    return [c.num_examples / total for c in clients]


def _effective_mean(clients: list[Client], module_a: str, module_b: str
                    ) -> torch.Tensor:
    return mean_product([c.state[module_b] for c in clients],
                        [c.state[module_a] for c in clients],
                        _weights(clients), SCALING)


# --- FedEx-LoRA ------------------------------------------------------------


def test_fedex_global_update_is_the_clients_mean_round_after_round(
) -> None:
    """Issue 10: base plus s·B·A equals the weighted mean of the clients'
    effective weights to 1e-6 relative, against a float64 reference."""
    server, clients = _server("fedex_lora"), _clients()
    base = torch.randn(D, K, dtype=torch.float64)
    before = {k: torch.zeros(D, K, dtype=torch.float64)
              for k in lora_modules(server.state)}
    for round_idx in (1, 2, 3):
        _round(server, clients, round_idx)
        assert server.residual is not None
        for key, module in lora_modules(server.state).items():
            want = base + before[key] + _effective_mean(
                clients, module.a_key, module.b_key)
            got = base + server.residual.total[key].double() + SCALING * (
                server.state[module.b_key].double()
                @ server.state[module.a_key].double())
            rel = float((got - want).norm() / (want - base
                                               - before[key]).norm())
            assert rel < 1e-6, (round_idx, key, rel)
            before[key] = server.residual.total[key].double()


def test_fedex_lora_alone_is_not_the_mean() -> None:
    """The residual is what makes it exact: without it, the factors'
    product misses the mean by far more than 1e-6."""
    server, clients = _server("fedex_lora"), _clients()
    _round(server, clients, 1)
    module = lora_modules(server.state)[R_Q]

    want = _effective_mean(clients, module.a_key, module.b_key)
    got = SCALING * server.state[B_Q].double() @ server.state[A_Q].double()

    assert float((got - want).norm() / want.norm()) > 1e-2


def test_fedex_clients_hold_the_servers_residual_bit_for_bit() -> None:
    server, clients = _server("fedex_lora"), _clients()
    late = Client(9, 4)
    for round_idx in (1, 2, 3):
        _round(server, clients, round_idx)
    late.sync(server, 4)          # never seen: gets the total, "set"
    for client in clients:
        client.sync(server, 4)    # one round behind: the increment

    assert server.residual is not None
    for client in [*clients, late]:
        assert set(client.residual) == set(server.residual.total)
        for key, total in server.residual.total.items():
            assert torch.equal(client.residual[key], total)
        server.receive(client.train(server, 4))
    assert server.received() == [0, 1, 2, 9]


def test_fedex_residual_bytes_grow_with_clients_up_to_dense() -> None:
    """Round 1 carries a zero residual (no byte); round 2 the increment
    in its smaller exact form: (n-1)·r·(d+k) elements while that is
    below d·k, else d·k (none from one client: its mean is exact)."""
    for n in (1, 2, 3):
        server, clients = _server("fedex_lora"), _clients(n)
        _round(server, clients, 1)
        assert server.ledger.totals(round_idx=1)["down"].get(RESIDUAL,
                                                             0) == 0
        for client in clients:
            client.sync(server, 2)
        per_module = min(D * K, (n - 1) * R * (D + K)) * 4
        down = server.ledger.totals(round_idx=2)["down"]
        assert down.get(RESIDUAL, 0) == n * 2 * per_module, n


def test_fedex_drifted_residual_is_refused_then_resynced_whole() -> None:
    server, clients = _server("fedex_lora"), _clients(2)
    _round(server, clients, 1)
    _round(server, clients, 2)
    bad, good = clients
    for client in clients:
        client.sync(server, 3)
    bad.residual[R_Q] = bad.residual[R_Q] + 1e-3

    with pytest.raises(InvalidUpdate, match="fingerprint"):
        server.receive(bad.train(server, 3))
    server.receive(good.train(server, 3))
    server.aggregate(3)
    payload = bad.sync(server, 4)

    # the whole total again: set (here a zero start plus the increments
    # since round 0, smaller than the dense total)
    assert {f"{R_Q}.set_u", f"{R_Q}.set_v"} <= set(payload)
    assert server.residual is not None
    assert torch.equal(bad.residual[R_Q], server.residual.total[R_Q])
    server.receive(bad.train(server, 4))


def _residual_forms(payload: Mapping[str, torch.Tensor]) -> set[str]:
    return {k.rpartition(".")[2] for k in payload
            if k.startswith(R_Q)}


def _residual_bytes(payload: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for k, t in payload.items()
               if role_of(k) == RESIDUAL)


def test_fedex_a_client_behind_gets_the_increments_it_missed() -> None:
    """Sampled participation, two clients a round, so each increment is
    of rank R: a client last synced in round 2 (it holds round 1's
    total) gets rounds 2 and 3's increments in order, one never seen a
    zero start and all three, each smaller than the dense total it used
    to get; both then hold the server's totals bit for bit (their
    fingerprints pass)."""
    server, clients = _server("fedex_lora"), _clients(4)
    first, second, away, new = clients
    _round(server, [first, second], 1)
    _round(server, [first, away], 2)
    _round(server, [first, second], 3)
    dense = 2 * D * K * 4                 # two modules' totals, float32

    behind = away.sync(server, 4)
    fresh = new.sync(server, 4)

    assert _residual_forms(behind) == {"add_u", "add_v", "add2_u",
                                       "add2_v"}
    assert _residual_forms(fresh) == {"set_u", "set_v", "add_u", "add_v",
                                      "add2_u", "add2_v", "add3_u",
                                      "add3_v"}
    assert fresh[f"{R_Q}.set_u"].shape == (D, 0)
    assert _residual_bytes(behind) == 2 * 2 * R * (D + K) * 4 < dense
    assert _residual_bytes(fresh) == 3 * 2 * R * (D + K) * 4 < dense
    assert server.residual is not None
    for client in (away, new):
        for key, total in server.residual.total.items():
            assert torch.equal(client.residual[key], total), key
        server.receive(client.train(server, 4))


def test_fedex_sends_the_dense_total_once_the_missed_increments_are_larger(
) -> None:
    """An increment of three clients holds (3 - 1)·R·(D + K) = 112
    values per module against D·K = 192 dense: the server keeps the last
    one only, and a client two rounds behind gets the dense total."""
    server, clients = _server("fedex_lora"), _clients(4)
    _round(server, clients, 1)
    _round(server, clients[:3], 2)
    _round(server, clients[:3], 3)

    payload = clients[3].sync(server, 4)

    assert server.residual is not None
    assert len(server.residual.history) == 1
    assert _residual_forms(payload) == {"set"}
    assert _residual_bytes(payload) == 2 * D * K * 4
    assert torch.equal(clients[3].residual[R_Q], server.residual.total[R_Q])


def test_fedex_keeps_its_increments_through_a_checkpoint() -> None:
    server, clients = _server("fedex_lora"), _clients(4)
    _round(server, clients[:3], 1)
    _round(server, clients[:2], 2)
    restored = _server("fedex_lora")

    restored.load_state_dict(server.state_dict())

    assert restored.residual is not None and server.residual is not None
    assert [(p, v) for p, v, _ in restored.residual.history] == \
        [(0, 1), (1, 2)]
    for lagging in (2, 3):                # behind since round 1; never seen
        want = server.peek_downlink(lagging, 3)
        got = restored.peek_downlink(lagging, 3)
        assert set(got) == set(want)
        assert all(torch.equal(got[k], want[k]) for k in want)
    saved = server.state_dict()
    saved["residual"]["history"][1]["previous"] = 0
    with pytest.raises(ValueError, match="not a chain of rounds"):
        _server("fedex_lora").load_state_dict(saved)
    saved = server.state_dict()
    forms = saved["residual"]["history"][0]["forms"]
    forms[f"{R_Q}.add_v"] = forms[f"{R_Q}.add_v"][:, 1:]
    with pytest.raises(ValueError, match="not one increment of its shape"):
        _server("fedex_lora").load_state_dict(saved)


# --- FlexLoRA --------------------------------------------------------------


def test_flexlora_keeps_the_rank_r_truncation_of_the_mean() -> None:
    server, clients = _server("flexlora"), _clients()
    _round(server, clients, 1)

    dropped_sq = mean_sq = 0.0
    for module in lora_modules(server.state).values():
        mean = _effective_mean(clients, module.a_key, module.b_key)
        u, s, vh = torch.linalg.svd(mean / SCALING)  # the reference
        got = server.state[module.b_key].double() @ \
            server.state[module.a_key].double()
        assert torch.allclose(got, (u[:, :R] * s[:R]) @ vh[:R],
                              rtol=1e-5, atol=1e-5)
        error = float((SCALING * got - mean).norm())
        assert error == pytest.approx(SCALING * float(s[R:].norm()),
                                      rel=1e-4)
        dropped_sq += SCALING ** 2 * float(s[R:].pow(2).sum())
        mean_sq += float(mean.pow(2).sum())
    # the aggregation gap is the truncation error, relative
    gap = server.last_gap.aggregation_gap
    assert gap is not None and gap > 1e-3
    assert gap == pytest.approx((dropped_sq / mean_sq) ** 0.5, rel=1e-4)


# --- FedSA-LoRA ------------------------------------------------------------


def test_fedsa_uploads_no_b_and_never_averages_it() -> None:
    server, clients = _server("fedsa_lora"), _clients()
    init = initial_adapter()
    for round_idx in (1, 2, 3):
        updates = _round(server, clients, round_idx)
        for update in updates:
            assert {role_of(k) for k in update.tensors} == {LORA_A}
    assert server.ledger.totals()["up"] == {
        LORA_A: 3 * 3 * 2 * R * K * 4}
    for key in (B_Q, B_V):
        assert torch.equal(server.state[key], init[key])


def test_fedsa_clients_keep_their_own_b_across_rounds() -> None:
    server, clients = _server("fedsa_lora"), _clients()
    _round(server, clients, 1)
    trained = {c.client_id: c.state[B_Q].clone() for c in clients}

    payloads = [c.sync(server, 2) for c in clients]

    for client, payload in zip(clients, payloads, strict=True):
        assert {role_of(k) for k in payload} == {LORA_A}
        assert torch.equal(client.state[B_Q], trained[client.client_id])
    assert not torch.equal(clients[0].state[B_Q], clients[1].state[B_Q])


def test_fedsa_refused_client_restarts_b_from_the_shared_init() -> None:
    """The server never holds a client's B, so after a refusal it sends
    the only B it can vouch for: the shared initial one."""
    server, clients = _server("fedsa_lora"), _clients(2)
    _round(server, clients, 1)
    bad = clients[0]
    for client in clients:
        client.sync(server, 2)
    update = bad.train(server, 2)
    update.tensors[A_Q][0, 0] = float("nan")
    with pytest.raises(InvalidUpdate):
        server.receive(update)
    server.receive(clients[1].train(server, 2))
    server.aggregate(2)

    payload = bad.sync(server, 3)

    assert B_Q in payload
    assert torch.equal(bad.state[B_Q], initial_adapter()[B_Q])


def test_fedsa_a_refused_clients_b_is_untrusted_until_it_is_resynced(
) -> None:
    server, clients = _server("fedsa_lora"), _clients()
    _round(server, clients, 1)
    assert server.kept_untrusted() == []
    for client in clients:
        client.sync(server, 2)
    updates = [client.train(server, 2) for client in clients]
    server.refuse(1, 2, updates[1].tensors)
    for update in (updates[0], updates[2]):
        server.receive(update)
    server.aggregate(2)

    assert server.kept_untrusted() == [1]
    _round(server, clients, 3)
    assert server.kept_untrusted() == []
    assert _server("lora").kept_untrusted() == []


def test_fedsa_eval_downlink_is_a_once_trained_and_all_for_a_stranger(
        ) -> None:
    """Scoring a client's model after round 1: a client that trained
    lacks only the averaged A (its B is its own); one never contacted
    lacks the whole adapter. Counted as eval_down of round 1, apart."""
    server, clients = _server("fedsa_lora"), _clients(2)
    _round(server, clients, 1)
    down = server.ledger.totals(round_idx=1)["down"]

    trained = server.eval_downlink(0, 1)
    stranger = server.eval_downlink(7, 1)

    assert set(trained) == {A_Q, A_V}
    assert set(stranger) == {A_Q, A_V, B_Q, B_V}
    totals = server.ledger.totals(round_idx=1)
    assert totals["eval_down"] == {LORA_A: 2 * 2 * R * K * 4,
                                   LORA_B: 2 * D * R * 4}
    assert totals["down"] == down


@pytest.mark.parametrize("method", METHODS)
def test_peek_downlink_is_the_next_downlink_and_changes_nothing(
        method: str) -> None:
    """Half the clients train in round 2, so the other half lack what
    changed while they were away (FedEx-LoRA: two rounds of residual)."""
    server, clients = _server(method), _clients(4)
    _round(server, clients, 1)
    _round(server, clients[:2], 2)
    versions = {c: dict(h) for c, h in server.client_versions.items()}
    records = len(server.ledger.records)

    peeked = {c.client_id: server.peek_downlink(c.client_id, 3)
              for c in clients}
    peeked[9] = server.peek_downlink(9, 3)

    assert server.client_versions == versions
    assert len(server.ledger.records) == records
    for client_id, payload in peeked.items():
        sent = server.downlink(client_id, 3)
        assert set(payload) == set(sent), client_id
        for key in sent:
            assert torch.equal(payload[key], sent[key]), key


# --- every method ------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_bytes_equal_the_count_from_shapes(method: str) -> None:
    server, clients = _server(method), _clients()
    for round_idx in (1, 2):
        updates = _round(server, clients, round_idx)
        up = server.ledger.totals(round_idx=round_idx)["up"]
        want: dict[str, int] = {}
        for update in updates:
            for key, tensor in update.tensors.items():
                role = role_of(key)
                assert role is not None
                want[role] = want.get(role, 0) + tensor.numel() * 4
        assert up == want
    sent = server.plan(2).uploaded_keys(server.state)
    per_client = sum(server.state[k].numel() * 4 for k in sent)
    assert sum(server.ledger.totals(round_idx=2)["up"].values()) == \
        3 * per_client


@pytest.mark.parametrize("method", ["rolora", "ffa_lora", "fedex_lora"])
def test_gap_is_zero_where_the_merge_is_exact(method: str) -> None:
    server, clients = _server(method), _clients()
    for round_idx in (1, 2, 3):
        _round(server, clients, round_idx)
        stats = server.last_gap
        assert stats.aggregation_gap is not None
        assert stats.aggregation_gap < 1e-6, (method, round_idx)
        assert stats.aggregation_gap_module_max is not None
        assert stats.aggregation_gap_module_max < 1e-6
        assert stats.client_drift is not None and stats.client_drift > 0


def test_gap_of_lora_is_positive_and_matches_the_reference() -> None:
    server, clients = _server("lora"), _clients()
    _round(server, clients, 1)

    num = den = 0.0
    for module in lora_modules(server.state).values():
        mean = _effective_mean(clients, module.a_key, module.b_key)
        kept = SCALING * server.state[module.b_key].double() @ \
            server.state[module.a_key].double()
        num += float((mean - kept).pow(2).sum())
        den += float(mean.pow(2).sum())

    gap = server.last_gap.aggregation_gap
    assert gap is not None and gap > 1e-2
    assert gap == pytest.approx((num / den) ** 0.5, rel=1e-6)


@pytest.mark.parametrize("start_b", ["zero", "random"])
def test_gap_of_fedsa_is_undefined_the_server_holds_no_b(start_b: str
                                                        ) -> None:
    """The server never sees a client's B. A B starting at zero (PEFT's
    Linear) gave None by accident; one starting random (PEFT's
    embedding) gave a gap near zero, measured against the initial B no
    client trains with."""
    adapter = initial_adapter()
    if start_b == "random":
        gen = torch.Generator().manual_seed(1)
        adapter = {k: torch.randn(v.shape, generator=gen) if k in (B_Q, B_V)
                   else v for k, v in adapter.items()}
    server = AdapterServer(make_method("fedsa_lora"), adapter,
                           scaling=SCALING)
    _round(server, _clients(), 1)

    assert server.last_gap == GapStats(None, None, None)


ROUNDS = ([0, 2, 4], [1, 3], [0, 1, 4], [2, 3, 4])  # sampled clients


def _reference_weights(clients: list[Client], weighting: str
                       ) -> list[float]:
    if weighting == "uniform":
        return [1.0 / len(clients)] * len(clients)
    return _weights(clients)


@pytest.mark.parametrize("weighting", ["examples", "uniform"])
@pytest.mark.parametrize("method", METHODS)
def test_merges_weigh_only_the_accepted_clients_of_a_sampled_round(
        method: str, weighting: str) -> None:
    """Sampled rounds, one update refused in round 3, the server
    restored from its checkpoint before it: every merge, FedEx-LoRA's
    residual and the gap are those of the accepted clients alone, their
    weights renormalised, against a float64 reference; clients that
    skipped rounds come back holding the server's residual total."""
    def make() -> AdapterServer:
        return AdapterServer(make_method(method), initial_adapter(),
                             weighting, scaling=SCALING)

    server, clients = make(), _clients(5)
    for round_idx, chosen in enumerate(ROUNDS, start=1):
        if round_idx == 3:
            restored = make()
            restored.load_state_dict(server.state_dict())
            server = restored
        book = server.residual
        before = dict(book.total) if book is not None else {}
        for i in chosen:
            clients[i].sync(server, round_idx)
            if book is not None:
                _assert_same(clients[i].residual, book.total)
        updates = [clients[i].train(server, round_idx) for i in chosen]
        if round_idx == 3:
            next(iter(updates[0].tensors.values()))[0, 0] = float("nan")
            with pytest.raises(InvalidUpdate):
                server.receive(updates.pop(0))
        for update in updates:
            server.receive(update)
        accepted = [clients[i] for i in server.received()]
        weights = _reference_weights(accepted, weighting)
        server.aggregate(round_idx)

        for key in updates[0].tensors if method != "flexlora" else ():
            want = torch.stack([w * c.state[key].double() for c, w in
                                zip(accepted, weights, strict=True)]).sum(0)
            assert torch.allclose(server.state[key].double(), want,
                                  atol=1e-6), key
        terms = []
        for key, module in lora_modules(server.state).items():
            bs = [c.state[module.b_key] for c in accepted]
            as_ = [c.state[module.a_key] for c in accepted]
            kept = SCALING * server.state[module.b_key].double() @ \
                server.state[module.a_key].double()
            if book is not None:
                kept += (book.total[key] - before[key]).double()
            mean = mean_product(bs, as_, weights, SCALING)
            if method == "flexlora":
                assert torch.allclose(
                    kept, SCALING * dense_flexlora(bs, as_, weights, R),
                    atol=1e-5)
            elif method == "fedex_lora":
                assert torch.allclose(kept, mean, atol=1e-5)
            terms.append(dense_gap(bs, as_, weights, SCALING, kept))
        stats = server.last_gap
        if method == "fedsa_lora":
            assert stats.aggregation_gap is None
            continue
        scale = sum(t[0] for t in terms)
        assert stats.aggregation_gap == pytest.approx(
            (sum(t[1] for t in terms) / scale) ** 0.5, rel=1e-4, abs=1e-6)
        assert stats.client_drift == pytest.approx(
            (sum(t[2] for t in terms) / scale) ** 0.5, rel=1e-6)


def _assert_same(got: Mapping[str, torch.Tensor],
                 want: Mapping[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("method", ["fedex_lora", "fedsa_lora",
                                    "flexlora"])
def test_state_dict_restores_residual_and_downlinks(method: str) -> None:
    server, clients = _server(method), _clients()
    _round(server, clients, 1)
    _round(server, clients, 2)
    restored = _server(method)
    restored.load_state_dict(server.state_dict())

    for client in clients:
        _assert_same(restored.downlink(client.client_id, 3),
                     server.downlink(client.client_id, 3))
    if method == "fedex_lora":
        assert server.residual is not None
        assert restored.residual is not None
        _assert_same(restored.residual.total, server.residual.total)


def test_state_dict_of_fedex_refuses_a_residual_that_does_not_fit(
) -> None:
    server = _server("fedex_lora")
    saved = server.state_dict()
    saved["residual"]["total"][R_Q] = torch.zeros(3, 3)

    with pytest.raises(ValueError, match="residual"):
        _server("fedex_lora").load_state_dict(saved)


def test_lora_b_key_is_uploaded_by_every_method_but_ffa_and_fedsa(
) -> None:
    uploads = {m: {role_of(k) for k in make_method(m).plan(1)
                   .uploaded_keys(initial_adapter())} for m in METHODS}

    assert uploads == {
        "rolora": {LORA_B}, "lora": {LORA_A, LORA_B},
        "ffa_lora": {LORA_B}, "fedex_lora": {LORA_A, LORA_B},
        "flexlora": {LORA_A, LORA_B}, "fedsa_lora": {LORA_A}}


@pytest.mark.parametrize("method", ["fedex_lora", "flexlora"])
def test_a_merge_that_overflows_fails_the_round_and_changes_nothing(
        method: str) -> None:
    """Huge but finite factors pass validation, and B·A in float32
    overflows: the round fails naming the client, and the state (and
    what a checkpoint would hold) stays that of the round before."""
    server, clients = _server(method), _clients()
    _round(server, clients, 1)
    before = server.state_dict()
    for client in clients:
        client.sync(server, 2)
    updates = [client.train(server, 2) for client in clients]
    loud = updates[1]
    for key in loud.tensors:
        if role_of(key) in (LORA_A, LORA_B):
            loud.tensors[key] = torch.full_like(loud.tensors[key], 1e30)
    for update in updates:
        server.receive(update)

    with pytest.raises(RoundFailed, match=f"not finite.*client "
                       f"{loud.client_id} sent the largest"):
        server.aggregate(2)

    server._pending = {}  # the runner stops here; compare the state
    _assert_same(server.state, before["state"])
    assert server.aggregated_round == 1
    if server.residual is not None:
        _assert_same(server.residual.total, before["residual"]["total"])
        assert server.residual.version == 1


def test_state_dict_of_fedex_refuses_a_non_finite_residual() -> None:
    server = _server("fedex_lora")
    _round(server, _clients(), 1)
    saved = server.state_dict()
    saved["residual"]["total"][R_Q] = torch.full_like(
        saved["residual"]["total"][R_Q], float("inf"))

    with pytest.raises(ValueError, match="NaN or Inf"):
        _server("fedex_lora").load_state_dict(saved)
