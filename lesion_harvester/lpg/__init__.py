"""Lesion proposal generator (LPG): multi-slice CenterNet (MSCN) on a MULAN-style 2.5D DenseNet."""
