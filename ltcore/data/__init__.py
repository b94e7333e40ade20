"""Long-tailed datasets: construction, real-dataset loaders and the named registry.

Taught in notebook 01.
"""
from ltcore.data.datasets import OPEN_LABEL, ArrayDataset, LTSplits, RandomCropFlip, class_counts_of, evaluation_view
from ltcore.data.longtail import (PermutedSplit, imbalance_summary, longtail_counts, longtail_indices,
                                   permuted_longtail_split)
from ltcore.data.registry import DATASETS, build_dataset

__all__ = [
    "OPEN_LABEL", "ArrayDataset", "LTSplits", "RandomCropFlip", "class_counts_of", "evaluation_view",
    "PermutedSplit", "imbalance_summary", "longtail_counts", "longtail_indices", "permuted_longtail_split",
    "DATASETS", "build_dataset",
]
