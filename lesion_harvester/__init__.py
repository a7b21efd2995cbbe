"""Lesion Harvester: complete the missing lesion annotations of large CT datasets.

An implementation of Cai et al., "Lesion Harvester: Iteratively Mining Unlabeled Lesions and
Hard-Negative Examples at Scale", IEEE TMI 2020. The package folders follow the pipeline:

- ``io``: every reader and writer (DeepLesion PNG + DL_info.csv, NIfTI, DICOM, annotation pickles)
- ``geometry``: pure box and preprocessing functions (no I/O, no config)
- ``synth``: a synthetic CT benchmark with complete ground truth
- ``evaluation``: pseudo-3D (P3D) matching, FROC, AP and recall at precision
- ``report``: plots and image montages
- ``cli``: the ``lesion-harvester`` command
"""

__version__ = "0.1.0"
