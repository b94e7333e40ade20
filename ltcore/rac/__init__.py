"""Retrieval Augmented Classification (Long et al., CVPR 2022).

* :mod:`ltcore.rac.model` -- eq. 5's fusion, the retrieval module and the two-branch model (Sections 3.3-3.4);
* :mod:`ltcore.rac.image_encoders` -- the frozen image encoder E and its preprocessing (Section 3.4, Table 4);
* :mod:`ltcore.rac.text_encoders` -- the text encoder T (Sections 3.3-3.4, Fig. 4);
* :mod:`ltcore.rac.weights` -- where E's and T's pretrained weights come from (bundled, local files, the Hub);
* :mod:`ltcore.rac.embeddings` -- E's keys of a whole dataset, cached on disk;
* :mod:`ltcore.rac.index` -- the HNSW / exact vector index over the training set;
* :mod:`ltcore.rac.classifier` -- the model with the shared trainer's hooks, and T's centred head;
* :mod:`ltcore.rac.train` -- the training recipe (Table 3's rows);
* :mod:`ltcore.rac.retrieval_eval` -- retrieval accuracy (Table 4);
* :mod:`ltcore.rac.claims` -- the methods of RAC's claims on one paired run (notebook 08; :mod:`ltcore.claims`).
"""
from ltcore.rac.model import fuse_logits

__all__ = ["fuse_logits"]
