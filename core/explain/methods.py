"""The explanation and projection methods by name, importable without TensorFlow (the CLI's choices)."""

from __future__ import annotations

EXPLAIN_METHODS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM", "occlusion": "Occlusion"}
PROJECTION_METHODS = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
