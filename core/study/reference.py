"""The reference study's published figures: DenseNet121 with ImageNet weights, MIT 8-scene at 256 px.

The study picked its models on MIT_split's test folder, which it called validation; SceneLab keeps a
separate validation split, so its figures compare with our *test* accuracy. These are data about the
study, read by the Study page, ``python -m core reproduce`` and the task pages.
"""

from __future__ import annotations

STUDY = "the study (DenseNet121, ImageNet, MIT_split at 256 px)"
STUDY_MODEL = "DenseNet121, ImageNet weights, MIT 8-scene at 256 px"
SELECTION_NOTE = "the study selected on its test folder"

FINETUNE = {"train_accuracy": 0.966, "val_accuracy": 0.917}

#: blocks removed -> (backbone parameters, accuracy); the uncut network after 50 epochs (0.9542 after 300)
TRUNCATION = {0: (7.0e6, 0.9318), 1: (4.9e6, 0.941), 2: (1.5e6, 0.825), 3: (0.38e6, 0.52)}
TRUNCATION_300_EPOCHS = 0.9542
#: with a Dense(1024) head: blocks removed -> (backbone + head parameters, accuracy)
TRUNCATION_DENSE = {1: (4.9e6, 0.9393), 2: (1.5e6, 0.832), 3: (0.52e6, 0.601)}
TRUNCATION_LABELS = {0: "no blocks removed", 1: "−1 block", 2: "−2 blocks", 3: "−3 blocks"}

SMALL_DATA = {"images": 400, "per_class": 50, "accuracy": 0.845}

AUGMENTATION_BEST = {
    "setting": "horizontal flip + zoom 0.2",
    "hflip": True,
    "zoom": 0.2,
    "accuracy": 0.895,
    "summary_table": 0.881,
}
#: the study's augmentation grid: seven on/off factors (2^7 = 128 combinations, of which it ran a sample)
AUGMENTATION_GRID = {
    "rotation": 20.0,
    "width_shift": 0.2,
    "height_shift": 0.2,
    "shear": 0.2,
    "zoom": 0.2,
    "hflip": True,
    "vflip": True,
}

REGULARISATION_BEST = {"setting": "dropout 0.5 with early stopping and reduce-LR", "dropout": 0.5, "accuracy": 0.915}

SWEEP = {"method": "random search (W&B sweep)", "trials": 30, "best_accuracy": 0.9518, "model": STUDY_MODEL}
#: the top trials the study reported: (optimizer, accuracy)
TOP_TRIALS: list[tuple[str, float]] = [
    ("Nadam", 0.952),
    ("Adamax", 0.947),
    ("Adagrad", 0.942),
    ("SGD", 0.938),
    ("Adadelta", 0.931),
    ("Adam", 0.925),
    ("RMSprop", 0.880),
    ("Nadam", 0.874),
]
