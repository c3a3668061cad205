"""What FedEx-LoRA's residual costs to download under sampled
participation: the increments a client missed (core/residual.py) against
the dense total every lagging client used to get.

The server protocol alone (core/server.py), no model: MiniLM's adapted
shapes (12 modules of 384 x 384, rank 2), FedEx-LoRA, ``m`` of ``n``
clients a round drawn as the runners draw them (core/sampling.py), each
client's local step a random change of both factors. Every client applies
what it is sent to its own residual totals and uploads with their
fingerprint, so a total that were not bit-identical to the server's
would be refused: the table counts refusals (0 is the check). The dense
baseline is counted from the same downlinks: per client, nothing if it
is current, the last increment if it is one round behind, else the
dense total.

    python benchmarks/fedex_sampled_bytes.py [--quick] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402

from federatedscope_rolora.core.methods import make_method  # noqa: E402
from federatedscope_rolora.core.residual import (  # noqa: E402
    VERSION_KEY,
    apply_payload,
)
from federatedscope_rolora.core.roles import RESIDUAL, role_of  # noqa: E402
from federatedscope_rolora.core.sampling import sample_clients  # noqa: E402
from federatedscope_rolora.core.server import (  # noqa: E402
    AdapterServer,
    build_update,
)
from federatedscope_rolora.core.validation import (  # noqa: E402
    InvalidUpdate,
)

# (clients, sampled a round)
FULL: tuple[tuple[int, int], ...] = (
    (20, 2), (20, 5), (50, 5), (50, 10), (100, 10), (50, 50))
QUICK: tuple[tuple[int, int], ...] = ((6, 2), (6, 6))
MODULES, HIDDEN, RANK, ROUNDS = 12, 384, 2, 16


def nbytes(payload: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for k, t in payload.items()
               if role_of(k) == RESIDUAL)


def adapter(modules: int, hidden: int, rank: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    state = {}
    for i in range(modules):
        prefix = f"base_model.model.layer.{i}.attention.self.query"
        state[f"{prefix}.lora_A.default.weight"] = torch.randn(
            rank, hidden, generator=gen) / hidden ** 0.5
        state[f"{prefix}.lora_B.default.weight"] = torch.zeros(hidden, rank)
    return state


def dense_baseline(server: AdapterServer, held: int | None) -> int:
    """What the protocol sent before it kept increments."""
    book = server.residual
    assert book is not None
    if held == book.version or book.version == 0:
        return 0
    if held == book.previous and book.last:
        return sum(t.numel() * t.element_size()
                   for form in book.last.values() for t in form.values())
    return sum(t.numel() * t.element_size() for t in book.total.values())


def measure(clients: int, sampled: int, rounds: int, modules: int,
            hidden: int, rank: int) -> dict[str, Any]:
    init = adapter(modules, hidden, rank)
    server = AdapterServer(make_method("fedex_lora"), init, scaling=8.0)
    state = {c: {k: v.clone() for k, v in init.items()}
             for c in range(1, clients + 1)}
    residual: dict[int, dict[str, torch.Tensor]] = {c: {} for c in state}
    gen = torch.Generator().manual_seed(1)
    sent = baseline = refused = lagging = 0
    for round_idx in range(1, rounds + 1):
        chosen = sample_clients(clients, round_idx, 0,
                                sample_client_num=sampled)
        for c in chosen:
            held = server.client_versions.get(c, {}).get(VERSION_KEY)
            book = server.residual
            assert book is not None
            if held not in (book.version, book.previous) and \
                    book.version > 0:
                lagging += 1
            baseline += dense_baseline(server, held)
            payload = server.downlink(c, round_idx)
            sent += nbytes(payload)
            state[c].update({k: v.clone() for k, v in payload.items()
                             if role_of(k) != RESIDUAL})
            residual[c] = apply_payload(residual[c], {
                k: v for k, v in payload.items() if role_of(k) == RESIDUAL})
        for c in chosen:
            plan = server.plan(round_idx)
            for key in plan.trained_keys(state[c]):
                state[c][key] = state[c][key] + 0.01 * torch.randn(
                    state[c][key].shape, generator=gen)
            try:
                server.receive(build_update(c, plan,
                                            {**state[c], **residual[c]}, 10))
            except InvalidUpdate:
                refused += 1
        server.aggregate(round_idx)
    dense = modules * hidden * hidden * 4
    return {"clients": clients, "sampled": sampled, "rounds": rounds,
            "lagging_downlinks": lagging, "refused": refused,
            "residual_down_bytes": sent,
            "dense_baseline_bytes": baseline,
            "dense_total_bytes": dense,
            "ratio": sent / baseline if baseline else None}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| clients | a round | downlinks to new or lagging clients "
             "| residual down, increments (MB) | dense baseline (MB) | "
             "ratio | refused |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.3f}"
        lines.append(
            f"| {r['clients']} | {r['sampled']} | {r['lagging_downlinks']}"
            f" | {r['residual_down_bytes'] / 1e6:.2f} | "
            f"{r['dense_baseline_bytes'] / 1e6:.2f} | {ratio} | "
            f"{r['refused']} |")
    return "\n".join(lines)


def main() -> None:
    args = common.quick_parser(__doc__).parse_args()
    torch.set_num_threads(1)
    if args.quick:
        sizes, rounds, modules, hidden = QUICK, 6, 2, 32
    else:
        sizes, rounds, modules, hidden = FULL, ROUNDS, MODULES, HIDDEN
    rows = [measure(n, m, rounds, modules, hidden, RANK) for n, m in sizes]
    command = "python benchmarks/fedex_sampled_bytes.py" + \
        (" --quick" if args.quick else "")
    text = ("# FedEx-LoRA's residual under sampled participation\n\n"
            f"Command: `{command}` (server protocol only: {modules} "
            f"modules of {hidden} x {hidden}, rank {RANK}, {rounds} "
            "rounds; a dense total is "
            f"{modules * hidden * hidden * 4 / 1e6:.2f} MB). Residual "
            "bytes downloaded over the run, summed over clients: as "
            "sent now (the increments a client missed while they are "
            "smaller than the total) and as the dense baseline (the "
            "total to every client more than one round behind); "
            "'refused' counts updates whose residual fingerprint did "
            "not match the server's.\n\n" + table(rows))
    print(text)
    name = "fedex_sampled_bytes" + ("_quick" if args.quick else "")
    common.write_results(args.out, name, text,
                         {"command": command, "rows": rows})


if __name__ == "__main__":
    main()
