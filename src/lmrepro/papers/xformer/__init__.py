"""Paper 2 — Variable-Width Transformers, the "><former" (arXiv 2606.18246).

``config`` (its params section), ``runs`` (variants × sizes → widths, specs, training runs), ``evaluate``
(losses, accounting, residual analyses), ``report`` (claim metrics) and ``artifacts`` (every file name this
paper writes and reads).
"""
