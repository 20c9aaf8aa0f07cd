"""Activations, CAM methods, projections, pictures."""
