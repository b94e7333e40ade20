"""Inflated Episodic Memory with Region Self-Attention (Zhu & Yang, CVPR 2020).

* :mod:`ltcore.iem.memory` -- the per-class key-value banks: read (eq. 1-2), write (eq. 3-4), train (Section 3.1);
* :mod:`ltcore.iem.memory_reference` -- the same banks item by item in plain Python, to read top to bottom;
* :mod:`ltcore.iem.memory_storage` -- the memory's slots: pool, growth, age order, exact-key index, saved state;
* :mod:`ltcore.iem.memory_search` -- the batched nearest-slot search behind ``read`` and ``read_all``;
* :mod:`ltcore.iem.memory_adam` -- the memory's lazy Adam (Section 4.2);
* :mod:`ltcore.iem.rsa` -- region self-attention over multi-scale regions (Section 3.2, eq. 6-13);
* :mod:`ltcore.iem.model` -- the IEM classifier: backbone, RSA, head, a global and a local memory (Section 3.3);
* :mod:`ltcore.iem.train` -- the training recipe and the open-set scoring (Tables 4-5);
* :mod:`ltcore.iem.plots` -- figures of the region partition and the attention;
* :mod:`ltcore.iem.claims` -- the methods of IEM's claims on one paired run (notebook 08; :mod:`ltcore.claims`).
"""
