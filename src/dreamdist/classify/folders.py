"""ImageFolder input: ``DIR/<class>/<image>`` -> one uint8 tensor of square images and their labels.

Classes are the sorted sub-folder names. Files are read with ``dreamdist.data.open_image`` (full
decode, EXIF orientation, any mode -> RGB, decompression-bomb guard); an unusable file is skipped
with its reason, never a traceback. A folder without class sub-folders, or a class with no usable
image, is an error that names the folder. Images are decoded once, in parallel threads, resized
(short side) and centre-cropped to the training size, and kept in memory: N x 3 x S x S bytes.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dreamdist.data import LoadReport, list_image_files, open_image, resize_center_crop

MIN_SIDE = 8  # classifiers take small images (the toy model draws 32 x 32); reference loaders want 64


@dataclass
class ClassFolders:
    """Images of an ImageFolder, decoded and resized.

    Attributes:
        folder: the root folder.
        pixels: uint8 (N, 3, S, S).
        labels: long (N,), index into ``classes``.
        classes: sorted class (sub-folder) names.
        report: kept and skipped files of all classes.
    """

    folder: Path
    pixels: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    report: LoadReport

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.pixels.shape[-1])

    def counts(self) -> list[int]:
        """Images per class, in class order."""
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()


def class_folders(folder: str | Path) -> list[Path]:
    """Sorted class sub-folders of an ImageFolder root (dot-folders ignored), with clear errors."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; pass a folder laid out as {folder}/<class>/<image>")
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subfolders:
        raise ValueError(
            f"{folder} has no class sub-folders; lay it out as {folder}/<class>/<image> (one sub-folder per class)"
        )
    if len(subfolders) < 2:
        raise ValueError(f"{folder} has one class sub-folder ({subfolders[0].name}); a classifier needs at least 2")
    return subfolders


def _load_one(path: Path, size: int) -> np.ndarray | str:
    """(S, S, 3) uint8 array, or the reason the file is unusable."""
    try:
        return np.asarray(resize_center_crop(open_image(path, min_side=MIN_SIDE), size), dtype=np.uint8)
    except ValueError as exc:
        return str(exc)


def load_class_folders(
    folder: str | Path,
    image_size: int,
    classes: list[str] | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> ClassFolders:
    """Decode every usable image of an ImageFolder at ``image_size`` x ``image_size``.

    Args:
        folder: root with one sub-folder per class.
        image_size: side S of the stored squares (short side resized, centre-cropped).
        classes: the class names expected (e.g. the training set's); a different set is an error.
        threads: decoding threads (default: up to 8, at most the CPU count).
        progress: show a progress bar on stderr.
    """
    folder = Path(folder)
    subfolders = class_folders(folder)
    names = [p.name for p in subfolders]
    if classes is not None and names != list(classes):
        missing, extra = sorted(set(classes) - set(names)), sorted(set(names) - set(classes))
        raise ValueError(
            f"the classes of {folder} do not match the training classes: "
            + "; ".join(
                part
                for part in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"unexpected {', '.join(extra)}" if extra else "",
                )
                if part
            )
            + "; both folders need the same class sub-folders"
        )
    report = LoadReport()
    files: list[tuple[Path, int]] = []
    for index, sub in enumerate(subfolders):
        found, passed = list_image_files(sub)
        report.skipped += passed
        files += [(path, index) for path in found]
    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes and resizes with the GIL released
        results = list(
            tqdm(
                pool.map(lambda item: _load_one(item[0], image_size), files),
                total=len(files),
                desc=f"loading {folder.name}",
                unit="img",
                disable=not progress,
                leave=False,
            )
        )
    arrays, labels = [], []
    for (path, label), result in zip(files, results):
        if isinstance(result, str):
            report.skipped.append((path, result))
        else:
            arrays.append(result)
            labels.append(label)
            report.kept.append(path)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names))
    empty = [name for name, count in zip(names, counts) if count == 0]
    if empty:
        raise ValueError(
            f"class folder(s) {', '.join(empty)} of {folder} hold no usable image; "
            f"add images or remove the folder.\n{report.summary()}"
        )
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S) uint8
    return ClassFolders(folder, pixels, torch.tensor(labels, dtype=torch.long), names, report)
