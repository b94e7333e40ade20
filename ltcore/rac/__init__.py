"""Retrieval Augmented Classification (Long et al., CVPR 2022).

* :mod:`ltcore.rac.model` -- eq. 5's fusion, the retrieval module and the two-branch model (Sections 3.3-3.4);
* :mod:`ltcore.rac.encoders` -- the frozen image encoder E and the text encoder T;
* :mod:`ltcore.rac.index` -- the HNSW / exact vector index over the training set;
* :mod:`ltcore.rac.train` -- the training recipe (Table 3's rows);
* :mod:`ltcore.rac.retrieval_eval` -- retrieval accuracy (Table 4).
"""
from ltcore.rac.model import fuse_logits

__all__ = ["fuse_logits"]
