"""lmrepro: reproducible replications of three 2026 language-model papers.

Subpackages: ``config`` (params.yaml schema), ``data``, ``ops`` (sequence-mixing ops),
``models``, ``train``, ``eval``, ``analysis``, ``lora``.
"""

__version__ = "0.1.0"
