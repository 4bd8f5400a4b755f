"""Per-paper sections of a profile: ``hybrid_attention``, ``xformer``, ``lora_alpha``.

Each paper's schema lives in its own module (config/hybrid.py, config/xformer.py, config/lora.py) so a
change to one paper's settings never touches another's; claims criteria share :class:`ClaimConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema_tools import bounded


@dataclass(frozen=True, kw_only=True)
class ClaimConfig:
    """A claim's criterion, fixed before the run: the claim holds when ``<metric> <op> <threshold>``
    with room ``margin`` (inside the margin the verdict is "inconclusive"); see lmrepro.analysis.claims."""

    statement: str
    metric: str
    op: str = bounded(choices=(">", ">=", "<", "<="))
    threshold: float
    margin: float = bounded(0.0, min=0.0)

    def to_claim(self):
        from ..analysis.claims import Claim

        return Claim(self.statement, self.metric, self.op, self.threshold, self.margin)
