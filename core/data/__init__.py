"""Dataset folders, decoding, splits, archives, the bundled copy, fingerprints, augmentation."""
