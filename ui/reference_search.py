"""The study's hyperparameter search (task 5), as it reported it.

A Weights & Biases random sweep of 30 trials over optimizer, learning rate, weight decay, momentum,
dropout, batch size and batch norm (DenseNet121, ImageNet weights, MIT 8-scene at 256 px). The study
selected on MIT_split's test folder, so these accuracies are test figures chosen on test.
"""

from __future__ import annotations

SWEEP = {
    "method": "random search (W&B sweep)",
    "trials": 30,
    "best_accuracy": 0.952,
    "model": "DenseNet121, ImageNet weights, MIT 8-scene at 256 px",
}

#: the top trials the study reported, best first: (optimizer, accuracy); Nadam twice (its best and its 8th)
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


def best_per_optimizer() -> list[tuple[str, float]]:
    """The study's best trial per optimizer (its top trials hold Nadam twice), best first."""
    seen: dict[str, float] = {}
    for optimizer, accuracy in TOP_TRIALS:
        seen.setdefault(optimizer, accuracy)
    return list(seen.items())


LABEL = "the study: best trial per optimizer (selected on test)"
