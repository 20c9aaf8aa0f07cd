"""The backbone registry, builders, surgery, weights, warm compiled models."""
