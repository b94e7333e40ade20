"""Inflated Episodic Memory with Region Self-Attention (Zhu & Yang, CVPR 2020).

* :mod:`ltcore.iem.memory` -- the per-class key-value banks (Section 3.1, eq. 1-5);
* :mod:`ltcore.iem.rsa` -- region self-attention over multi-scale regions (Section 3.2, eq. 6-13);
* :mod:`ltcore.iem.model` -- the IEM classifier: backbone, RSA, head, a global and a local memory (Section 3.3);
* :mod:`ltcore.iem.plots` -- figures of the region partition and the attention.
"""
