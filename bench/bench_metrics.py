"""Benchmark: density / coverage / precision / recall, ours (chunked torch) vs the ``prdc`` package.

Both run in the same process on the same random features, with the same thread budget, and the
script prints the time ratio and the largest difference between the two sets of numbers.

    python bench/bench_metrics.py                 # 4000 x 4000, d = 768: about a minute on 2 cores
    python bench/bench_metrics.py --n 10000       # the 10k x 10k case (prdc needs ~3 GB of RAM)
    python bench/bench_metrics.py --quick         # 300 x 300, d = 32: a smoke run

Ours runs with ``boundary="exclusive"`` (prdc's open balls) so that the numbers must agree; the
default inclusive boundary costs the same.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import numpy as np
import torch
from prdc import compute_prdc
from threadpoolctl import threadpool_limits

from dreamdist.evaluation.metrics import manifold_metrics


def features(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Embedding-like float32 features: a 32-d latent mapped to d dims, plus noise.

    Fakes come from a shifted latent, so all four metrics sit well inside (0, 1).
    """
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((32, d)).astype(np.float32) / np.sqrt(32)  # (32, d)
    real = rng.standard_normal((n, 32), dtype=np.float32) @ mixing  # (n, d)
    fake = (rng.standard_normal((n, 32), dtype=np.float32) * 1.0 + 0.3) @ mixing
    real += 0.1 * rng.standard_normal((n, d), dtype=np.float32)
    fake += 0.1 * rng.standard_normal((n, d), dtype=np.float32)
    return real, fake


def timed(fn, repeats: int) -> tuple[float, dict]:
    """Best wall time of ``repeats`` calls and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000, help="real and fake set size (10000 for the full case)")
    parser.add_argument("--d", type=int, default=768, help="feature size (DINOv2-base: 768)")
    parser.add_argument("--k", type=int, default=5, help="nearest-neighbour rank")
    parser.add_argument("--threads", type=int, default=1, help="BLAS / torch threads for both implementations")
    parser.add_argument("--repeats", type=int, default=1, help="runs per implementation (best time is kept)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="our distance block rows")
    parser.add_argument("--quick", action="store_true", help="300 x 300 features, d = 32, chunks of 128 (smoke run)")
    parser.add_argument("--json", help="also write the result into this docs/results table (scripts/bench_docs.py)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.d, args.chunk_size = 300, 32, 128

    torch.set_num_threads(args.threads)
    real, fake = features(args.n, args.d, seed=0)
    print(f"{args.n} x {args.n} features, d={args.d}, k={args.k}, {args.threads} thread(s), {platform.processor()}")
    with threadpool_limits(limits=args.threads):
        ours_time, ours = timed(
            lambda: manifold_metrics(
                torch.from_numpy(real),
                torch.from_numpy(fake),
                k=args.k,
                boundary="exclusive",
                chunk_size=args.chunk_size,
            ),
            args.repeats,
        )
        ours_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        prdc_time, reference = timed(lambda: compute_prdc(real, fake, nearest_k=args.k), args.repeats)
        prdc_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'metric':>10} {'ours':>10} {'prdc':>10}")
    for name in ("precision", "recall", "density", "coverage"):
        print(f"{name:>10} {ours[name]:10.5f} {float(reference[name]):10.5f}")
    worst = max(abs(ours[name] - float(reference[name])) for name in ours)
    print(f"largest difference: {worst:.2e} (prdc keeps float32 distances, ours float64)")
    print(f"peak RSS after ours: {ours_rss:.0f} MiB; after prdc: {prdc_rss:.0f} MiB")
    print(f"time ours {ours_time:.2f} s, prdc {prdc_time:.2f} s, ratio prdc/ours = {prdc_time / ours_time:.2f}x")
    if args.json:
        from _results import command_line, write_speed_row

        values = {"n": args.n, "prdc_s": prdc_time, "ours_s": ours_time, "speedup": prdc_time / ours_time}
        values |= {"memory": ours_rss / prdc_rss, "max_diff": worst}
        cells = {
            "benchmark": f"`bench/bench_metrics.py` (density/coverage/precision/recall, {{n:,}} x {{n:,}}, d = {args.d}, "
            f"k = {args.k}, {args.threads} thread(s))",
            "reference": "`prdc`: {prdc_s:.2f} s",
            "dreamdist": "blocked float64: {ours_s:.2f} s",
            "ratio": "**{speedup:.2f}x faster**, {memory:.2f}x peak memory, same numbers (max diff {max_diff:.0e})",
        }
        settings = {"n": args.n, "d": args.d, "k": args.k, "threads": args.threads, "repeats": args.repeats}
        command = command_line("bench/bench_metrics.py", argv)
        write_speed_row(args.json, f"bench_metrics_n{args.n}", command, settings, values, cells)


if __name__ == "__main__":
    main()
