"""What does the server's merge cost as models grow: FlexLoRA's SVD and
the aggregation gap from the stacked client factors (core/merging.py)
against the same quantities formed densely, client by client.

For each (hidden size d, clients n, rank r) the factors are random
(d x r and r x d per client, one module), the timings are the best of
``--repeats`` on one torch thread, and the two ways' results are compared
(B·A of FlexLoRA, the gap's squared norms) so that speed never hides a
wrong answer. The dense way holds one d x d float64 per client at once,
as the gap did before; its memory is reported from the shapes.

    python benchmarks/merge_cost.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402

from federatedscope_rolora.core.merging import (  # noqa: E402
    flexlora_truncate,
    module_gap,
)

# the definitions, densely: the tests' reference is the baseline here
from tests.core.reference import dense_flexlora, dense_gap  # noqa: E402

FULL = ((384, 3, 2), (384, 50, 2), (1024, 50, 4), (2048, 50, 8))
QUICK = ((64, 3, 2), (128, 10, 2))


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def measure(d: int, n: int, r: int, repeats: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(d + n + r)
    bs = [torch.randn(d, r, generator=gen) for _ in range(n)]
    as_ = [torch.randn(r, d, generator=gen) for _ in range(n)]
    weights = [1.0 / n] * n
    t_flex, (b, a, _) = best_of(
        repeats, lambda: flexlora_truncate(bs, as_, weights, r))
    t_flex_dense, want = best_of(
        repeats, lambda: dense_flexlora(bs, as_, weights, r))
    kept_b, kept_a = b.float(), a.float()
    t_gap, got = best_of(repeats, lambda: module_gap(
        bs, as_, weights, 2.0, kept_b, kept_a))
    kept = 2.0 * kept_b.double() @ kept_a.double()
    t_gap_dense, ref = best_of(
        repeats, lambda: dense_gap(bs, as_, weights, 2.0, kept))
    flex_err = float((b @ a - want).norm() / want.norm())
    gap_err = max(abs(x - y) / max(abs(y), 1e-300) for x, y in
                  zip((got.mean_sq, got.gap_sq, got.spread_sq), ref,
                      strict=True))
    return {"d": d, "clients": n, "rank": r,
            "flexlora_s": t_flex, "flexlora_dense_s": t_flex_dense,
            "gap_s": t_gap, "gap_dense_s": t_gap_dense,
            "flexlora_rel_diff": flex_err, "gap_rel_diff": gap_err,
            "dense_gap_mb": n * d * d * 8 / 1e6}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| d | clients | rank | FlexLoRA factored s | dense s | "
             "speed-up | gap factored s | dense s | speed-up | dense gap "
             "holds MB | max rel. diff |", "|---" * 11 + "|"]
    for r in rows:
        lines.append(
            f"| {r['d']} | {r['clients']} | {r['rank']} | "
            f"{r['flexlora_s']:.4f} | {r['flexlora_dense_s']:.4f} | "
            f"{r['flexlora_dense_s'] / r['flexlora_s']:.1f}x | "
            f"{r['gap_s']:.4f} | {r['gap_dense_s']:.4f} | "
            f"{r['gap_dense_s'] / r['gap_s']:.1f}x | "
            f"{r['dense_gap_mb']:,.0f} | "
            f"{max(r['flexlora_rel_diff'], r['gap_rel_diff']):.1e} |")
    return "\n".join(lines)


def main() -> None:
    parser = common.quick_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    shapes = QUICK if args.quick else FULL
    if args.quick:
        args.repeats = 1
    rows = [measure(d, n, r, args.repeats) for d, n, r in shapes]
    command = "python benchmarks/merge_cost.py" + \
        (" --quick" if args.quick else "")
    text = (f"# Server merge cost: from the factors vs dense\n\nCommand: "
            f"`{command}` ({platform.processor() or platform.machine()}, "
            f"1 torch thread, best of {args.repeats}; one d x d module, "
            "random factors; seconds per module and round).\n\n"
            + table(rows))
    print(text)
    name = "merge_cost" + ("_quick" if args.quick else "")
    common.write_results(args.out, name, text,
                         {"command": command, "rows": rows})


if __name__ == "__main__":
    main()
