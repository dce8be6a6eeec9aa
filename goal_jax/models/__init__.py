"""CLIP model, attention kernels, checkpoint conversion and long-context position tables."""
