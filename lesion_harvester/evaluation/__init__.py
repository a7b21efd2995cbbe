"""Detection and harvest evaluation: P3D matching, FROC per volume, AP, recall at precision."""
