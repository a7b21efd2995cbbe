"""2D proposals on consecutive slices -> 3D proposals (tracklets), as the paper's Sec. III-B.2."""
