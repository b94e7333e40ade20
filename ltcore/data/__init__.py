"""Long-tailed datasets: construction, real-dataset loaders and the named registry.

Taught in notebook 01.
"""
from ltcore.data.datasets import OPEN_LABEL, ArrayDataset, LTSplits, RandomCropFlip, class_counts_of, evaluation_view
from ltcore.data.longtail import imbalance_summary, longtail_counts, longtail_indices
from ltcore.data.registry import DATASETS, build_dataset

__all__ = [
    "OPEN_LABEL", "ArrayDataset", "LTSplits", "RandomCropFlip", "class_counts_of", "evaluation_view",
    "imbalance_summary", "longtail_counts", "longtail_indices",
    "DATASETS", "build_dataset",
]
