"""Paper 3 — The Hidden Power of Scaling Factor in LoRA Optimization, LoRA-α (arXiv 2606.12883).

``config`` (its params section), ``runs`` (tasks, base model, one fine-tuning run), ``evaluate`` (sweeps,
methods, mechanisms), ``report`` (claim metrics) and ``artifacts`` (every file name this paper writes and
reads).
"""
