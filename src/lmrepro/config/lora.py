"""Schema of the ``lora_alpha`` section of a profile (filled in by the lora_alpha pipeline)."""

from __future__ import annotations

from dataclasses import dataclass, field



@dataclass(frozen=True, kw_only=True)
class LoraAlphaConfig:
    """Filled in by the pipeline."""
