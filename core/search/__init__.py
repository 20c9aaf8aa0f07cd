"""Hyperparameter search with Optuna: the study's task 5, re-run on validation accuracy.

A *study* lives in an Optuna storage (``storage``); any number of processes on any number of machines
can work on one study at the same time (``workers``), each asking the storage for the next trial. A trial
samples a run config from the search space (``space``), trains it through the run cache (``objective``),
reports each epoch's validation accuracy for pruning (``samplers``), and returns the final validation
accuracy; test accuracy, run id and seconds are kept as trial user attributes, selection never looks at
test. ``study`` creates, joins and runs a study; ``summaries`` reads one; ``processes`` starts and stops
the app's background workers.
"""
