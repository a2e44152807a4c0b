"""Train the oracle (one small CNN per attribute) on freshly rendered images.

    python -m dreamdist.toyworld.train_oracle --steps 1200 --threads 1

Each step renders a new batch with wider-than-default nuisance, blurs and noises half of it,
and takes one Adam step on the summed cross-entropies. Seeded, so reruns match on one machine.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dreamdist.toyworld.attributes import ATTRIBUTES
from dreamdist.toyworld.augment import corrupt
from dreamdist.toyworld.oracle import ORACLE_FILE, Oracle, save_oracle
from dreamdist.toyworld.render import Nuisance, render

# Wider than the base model's training nuisance, so the oracle stays right on imperfect samples.
WIDE_NUISANCE = Nuisance(
    radius=(0.22, 0.40),
    offset=0.14,
    rotation_deg=25.0,
    colour_gain=(0.80, 1.12),
    colour_shift=0.06,
    noise=(0.0, 0.05),
)


def training_batch(batch_size: int, step: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 3, 32, 32) and their combos (B, 3) for one step; half of them corrupted."""
    batch = render(batch_size, seed=seed * 1_000_003 + step, split="all", nuisance=WIDE_NUISANCE)
    generator = torch.Generator().manual_seed(seed * 7919 + step)
    half = batch_size // 2
    images = torch.cat([batch.images[:half], corrupt(batch.images[half:], generator, max_blur=1.0)])
    return images, batch.combos


@torch.no_grad()
def accuracy(oracle: Oracle, n: int = 2000, seed: int = 12345, corrupted: bool = False) -> dict[str, float]:
    """Per-attribute accuracy on ``n`` fresh default renders (optionally mildly blurred/noised)."""
    batch = render(n, seed=seed, split="all")
    images = batch.images
    if corrupted:
        images = corrupt(images, torch.Generator().manual_seed(seed))
    predicted = oracle.predict(images)  # (n, 3)
    hits = (predicted == batch.combos).float().mean(0)
    return {name: float(hits[i]) for i, name in enumerate(ATTRIBUTES)}


def train_oracle(steps: int = 1200, batch_size: int = 128, lr: float = 3e-3, seed: int = 0) -> Oracle:
    """Train a fresh oracle; cosine learning-rate decay after a 50-step warmup."""
    torch.manual_seed(seed)
    oracle = Oracle()
    optimizer = torch.optim.AdamW(oracle.parameters(), lr=lr, weight_decay=1e-4)
    start = time.time()
    for step in range(steps):
        scale = min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        images, combos = training_batch(batch_size, step, seed)
        logits = oracle(images)
        loss = sum(F.cross_entropy(logits[name], combos[:, i]) for i, name in enumerate(ATTRIBUTES))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:6.0f}s", flush=True)
    return oracle.eval()


def main(argv: list[str] | None = None) -> None:
    """Command line: train, report accuracy on clean and corrupted fresh renders, save."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--out", type=Path, default=ORACLE_FILE)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    oracle = train_oracle(args.steps, args.batch_size, args.lr, args.seed)
    print("clean accuracy:", accuracy(oracle))
    print("blur/noise accuracy:", accuracy(oracle, corrupted=True))
    save_oracle(oracle, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
