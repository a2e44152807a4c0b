"""Classification metrics as pure tensor functions: no model, no files, no state.

Conventions: ``logits`` (N, C) scores (any monotone transform of probabilities works), ``targets``
(N,) long class indices in ``[0, C)``, ``confusion`` (C, C) counts with rows = true class and
columns = predicted class.
"""

from __future__ import annotations

import math

import torch


def _check(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f"need logits (N, C) and targets (N,); got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]):
        raise ValueError(f"targets must lie in [0, {logits.shape[1]}); got {targets.min()}..{targets.max()}")


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """Bool (N,): whether each target is among its row's ``k`` highest scores.

    Ties are broken by ``torch.topk`` (lower index first on CPU); ``k`` is capped at C.
    """
    _check(logits, targets)
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # (N, k)
    return (top == targets[:, None]).any(dim=1)  # (N,)


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows whose target is among the ``k`` highest scores (NaN for N = 0)."""
    correct = topk_correct(logits, targets, k)
    return float(correct.double().mean()) if correct.numel() else math.nan


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Long (C, C): entry [t, p] counts samples of true class t predicted as p.

    Args:
        predictions: long (N,) predicted class indices.
        targets: long (N,) true class indices.
        num_classes: C.
    """
    if predictions.shape != targets.shape or predictions.ndim != 1:
        raise ValueError(
            f"need predictions and targets of the same (N,) shape; got {predictions.shape}, {targets.shape}"
        )
    for name, values in (("predictions", predictions), ("targets", targets)):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes})")
    flat = targets.long() * num_classes + predictions.long()  # (N,) index into the flattened (C, C)
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Float (C,): recall of each class (diagonal / row sum); NaN for a class with no samples."""
    totals = confusion.sum(dim=1).double()  # (C,)
    return torch.where(totals > 0, confusion.diagonal().double() / totals.clamp_min(1), math.nan)


def mean_class_accuracy(confusion: torch.Tensor) -> float:
    """Mean of the per-class accuracies over classes that have samples (balanced accuracy)."""
    values = per_class_accuracy(confusion)
    values = values[~values.isnan()]
    return float(values.mean()) if values.numel() else math.nan
