"""Run ids, features, the training paths, fit loops, metrics, saving runs, measured speed."""
