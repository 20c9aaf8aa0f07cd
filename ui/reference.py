"""The reference study's published figures (DenseNet121, ImageNet weights, MIT 8-scene at 256 px).

The study picked its models on MIT_split's test folder, which it called validation; SceneLab keeps a
separate validation split, so compare our test accuracy with its "validation" figures.
"""

from __future__ import annotations

STUDY = "the study (DenseNet121, ImageNet, MIT_split at 256 px)"

FINETUNE = {"train_accuracy": 0.966, "val_accuracy": 0.917}

# blocks removed -> (backbone parameters, accuracy)
TRUNCATION = {
    0: (7.0e6, 0.954),
    1: (4.9e6, 0.941),
    2: (1.4e6, 0.825),
    3: (0.38e6, 0.52),
}
TRUNCATION_LABELS = {0: "full", 1: "−1 block", 2: "−2 blocks", 3: "−3 blocks"}

SMALL_DATA = {"images": 400, "per_class": 50, "accuracy": 0.845}

AUGMENTATION_BEST = {"setting": "horizontal flip + zoom 0.2", "accuracy": 0.895}

REGULARISATION_BEST = {"setting": "dropout 0.5", "dropout": 0.5, "accuracy": 0.915}
