"""Paper 1 — Rethinking the Role of Efficient Attention in Hybrid Architectures (arXiv 2606.15378).

``config`` (its params section), ``runs`` (architectures × sizes → specs and training runs), ``evaluate``
(LongPPL key tokens, checkpoints, restriction, RULER, probes, laziness), ``report`` (claim metrics) and
``artifacts`` (every file name this paper writes and reads).
"""
