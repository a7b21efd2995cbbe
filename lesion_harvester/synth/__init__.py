"""Synthetic CT benchmark with complete ground truth, written in the DeepLesion layout."""
