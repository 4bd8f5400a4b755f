"""Layer patterns → :class:`LayerSpec` tuples (token grammar in :mod:`lmrepro.config.layers`).

The functions live in :mod:`lmrepro.models.spec` (``LMSpec.from_config`` needs them); this module keeps
their historical import path.
"""

from __future__ import annotations

from .spec import layer_spec, layers_from_config, layers_from_pattern

__all__ = ["layer_spec", "layers_from_config", "layers_from_pattern"]
