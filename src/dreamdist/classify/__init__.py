"""The classifier proxy (paper section 4.4): train an image classifier on an ImageFolder, test it on another.

``classify(train_dir, test_dir, ClassifyConfig(...))`` does both and returns a ``ClassifyResult``;
``train_classifier`` and ``evaluate`` are the two halves; ``load_classifier`` reopens a saved model.
"""

from dreamdist.classify.config import ClassifyConfig
from dreamdist.classify.folders import ClassFolders, load_class_folders
from dreamdist.classify.models import ARCHS, build_model
from dreamdist.classify.outputs import load_classifier, save_classifier
from dreamdist.classify.run import ClassifyResult, classify
from dreamdist.classify.train import Classifier, Evaluation, evaluate, predict_logits, train_classifier

__all__ = [
    "ARCHS",
    "ClassFolders",
    "Classifier",
    "ClassifyConfig",
    "ClassifyResult",
    "Evaluation",
    "build_model",
    "classify",
    "evaluate",
    "load_class_folders",
    "load_classifier",
    "predict_logits",
    "save_classifier",
    "train_classifier",
]
