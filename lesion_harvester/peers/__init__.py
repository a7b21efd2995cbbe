"""Peer detectors from the ecosystem, trained on the same label sets as the LPG (the paper's Table III)."""
