"""Lesion proposal classifier (LPC): multi-view ResNet-18s that re-score 3D proposals."""
