"""``classify(train, test, config)``: train on one ImageFolder, evaluate on another, optionally save.

This is what ``dreamdist classify`` runs; the result is a dataclass whose ``to_dict()`` is the
``--json`` output and ``report.json``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dreamdist import __version__
from dreamdist.classify.config import ClassifyConfig
from dreamdist.classify.folders import load_class_folders
from dreamdist.classify.outputs import (
    CONFUSION_FILE,
    MODEL_FILE,
    REPORT_FILE,
    plot_confusion,
    save_classifier,
    write_json,
)
from dreamdist.classify.train import (
    Classifier,
    Evaluation,
    evaluate,
    resolve_device,
    torch_threads,
    train_classifier,
)
from dreamdist.outputs import CLASSIFY, check_output


@dataclass
class ClassifyResult:
    """A trained classifier and its evaluation on the test folder.

    Attributes:
        classifier: the model, classes, settings and per-epoch history.
        evaluation: top-1, top-k, per-class accuracy and confusion matrix on the test folder.
        train_folder, test_folder: the inputs.
        train_skipped: unusable training files, ``{"file", "reason"}``.
        seconds: wall time of loading + training + evaluation.
        files: what was written under ``out`` (empty without it).
    """

    classifier: Classifier
    evaluation: Evaluation
    train_folder: Path
    test_folder: Path
    train_skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)

    @property
    def top1(self) -> float:
        return self.evaluation.top1

    def to_dict(self) -> dict:
        classifier = self.classifier
        return {
            "train": {
                "folder": str(self.train_folder),
                "count": classifier.train_count,
                "skipped": self.train_skipped,
            },
            "test": {"folder": str(self.test_folder), **self.evaluation.to_dict()},
            "config": dataclasses.asdict(classifier.config),
            "history": classifier.history,
            "seconds": self.seconds,
            "files": [str(p) for p in self.files],
            "versions": {"dreamdist": __version__, "torch": torch.__version__},
        }


def classify(
    train: str | Path,
    test: str | Path,
    config: ClassifyConfig | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> ClassifyResult:
    """Train ``config.arch`` on the ImageFolder ``train`` and report its accuracy on ``test``.

    Both folders are checked (classes, usable images) before any training starts. With ``out``,
    writes ``classifier.safetensors``, ``report.json`` and ``confusion.png`` there; an earlier
    classifier there is refused before training unless ``overwrite`` (``dreamdist.outputs``).
    """
    config = config or ClassifyConfig()
    if out is not None:
        check_output(out, CLASSIFY, overwrite)
    resolve_device(config.device)  # an unavailable device fails before any image is read
    start = time.perf_counter()
    with torch_threads(config.threads):
        train_set = load_class_folders(train, config.image_size, threads=config.threads, progress=config.progress)
        test_set = load_class_folders(test, config.image_size, train_set.classes, config.threads, config.progress)
    classifier = train_classifier(train_set, config)
    evaluation = evaluate(classifier, test_set)
    result = ClassifyResult(
        classifier,
        evaluation,
        Path(train),
        Path(test),
        [{"file": str(path), "reason": reason} for path, reason in train_set.report.skipped],
        time.perf_counter() - start,
    )
    if out is not None:
        result.files = write_outputs(result, Path(out))
    return result


def write_outputs(result: ClassifyResult, out: Path) -> list[Path]:
    """``classifier.safetensors``, ``report.json`` and (matplotlib installed) ``confusion.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = [save_classifier(result.classifier, out / MODEL_FILE)]
    evaluation = result.evaluation
    title = f"{result.classifier.config.arch} on {result.test_folder.name}: top-1 {evaluation.top1:.3f}"
    notes = []
    try:
        files.append(plot_confusion(evaluation.confusion, evaluation.classes, title, out / CONFUSION_FILE))
    except ImportError as exc:  # the report is still written; it says why the plot is missing
        notes.append(str(exc))
    files.append(out / REPORT_FILE)
    result.files = files
    report = result.to_dict()
    if notes:
        report["notes"] = notes
    write_json(report, out / REPORT_FILE)
    return files
