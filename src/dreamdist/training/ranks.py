"""What the data-parallel processes of one run must agree on, as few collectives as possible.

Methods are not wrapped in DDP (their trainables are token rows, adapters or whole UNets, and
some keep state outside parameters), so the loop calls these explicitly. With one process every
call is a no-op, and no ``torch.distributed`` call is made.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from accelerate import Accelerator

BUCKET_ELEMENTS = 1 << 24  # 16 M floats (64 MiB fp32) per all-reduce


class Ranks:
    """Collectives of the run's process group (gloo on CPU, nccl on GPUs)."""

    def __init__(self, accelerator: Accelerator):
        self.world = accelerator.num_processes
        self.device = accelerator.device

    @property
    def active(self) -> bool:
        return self.world > 1 and dist.is_available() and dist.is_initialized()

    def broadcast(self, params: list[torch.Tensor]) -> None:
        """Copy rank 0's values of ``params`` to every rank (in buckets)."""
        if not self.active:
            return
        for bucket in _buckets(params):
            flat = torch.cat([p.detach().reshape(-1).float() for p in bucket])  # (n,)
            dist.broadcast(flat, src=0)
            _scatter(flat, bucket, lambda p, part: p.data.copy_(part.view_as(p)))

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any rank (one tiny all-reduce), e.g. a non-finite loss or a stop signal."""
        if not self.active:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value)
        return bool(value.item() > 0)

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """Mean of every parameter's gradient over ranks, one all-reduce per bucket (not per tensor).

        A parameter without a gradient on some rank counts as zero there, so every rank sends
        the same layout.
        """
        if not self.active:
            return
        for bucket in _buckets(params):
            parts = [p.grad.reshape(-1).float() if p.grad is not None else p.new_zeros(p.numel()) for p in bucket]
            flat = torch.cat(parts)  # (n,)
            dist.all_reduce(flat)
            flat /= self.world

            def assign(p, part):
                grad = part.view_as(p).to(p.dtype)
                if p.grad is None:
                    p.grad = grad.clone()
                else:
                    p.grad.copy_(grad)

            _scatter(flat, bucket, assign)

    def gather_states(self, state: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's generator state (uint8 tensors of equal length), in rank order."""
        if not self.active:
            return [state]
        parts = [torch.empty_like(state) for _ in range(self.world)]
        dist.all_gather(parts, state.contiguous())
        return parts


def _buckets(params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive groups of ``params`` of at most BUCKET_ELEMENTS elements (one tensor may exceed it)."""
    buckets, current, size = [], [], 0
    for p in params:
        if current and size + p.numel() > BUCKET_ELEMENTS:
            buckets.append(current)
            current, size = [], 0
        current.append(p)
        size += p.numel()
    if current:
        buckets.append(current)
    return buckets


def _scatter(flat: torch.Tensor, bucket: list[torch.Tensor], assign) -> None:
    """Hand each parameter of ``bucket`` its slice of ``flat``."""
    offset = 0
    for p in bucket:
        assign(p, flat[offset : offset + p.numel()])
        offset += p.numel()
