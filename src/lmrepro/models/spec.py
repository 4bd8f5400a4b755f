"""Architecture spec of a decoder LM: the model's only input besides weights.

A :class:`LMSpec` is fully resolved (vocabulary, per-layer mixer), so the model holds no config logic.
Paper pipelines derive their variants with :func:`dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ModelConfig


@dataclass(frozen=True)
class LayerSpec:
    """One block: sequence mixer + SwiGLU MLP.

    mixer: name in ``lmrepro.models.mixers.MIXERS`` ("attention" for now).
    window: sliding window W (query sees itself and W−1 previous tokens); None = full causal.
    rope: rotary position encoding on this layer's attention (False = NoPE).
    """

    mixer: str = "attention"
    window: int | None = None
    rope: bool = True


@dataclass(frozen=True)
class LMSpec:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_seq_len: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02
    layers: tuple[LayerSpec, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if not self.layers:
            object.__setattr__(self, "layers", tuple(LayerSpec() for _ in range(self.num_layers)))
        if len(self.layers) != self.num_layers:
            raise ValueError(f"layers: {len(self.layers)} layer specs for num_layers={self.num_layers}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_config(cls, model: ModelConfig, vocab_size: int, layers=None) -> "LMSpec":
        return cls(
            vocab_size=vocab_size,
            hidden_size=model.hidden_size,
            num_layers=model.num_layers,
            num_heads=model.num_heads,
            num_kv_heads=model.num_kv_heads or model.num_heads,
            intermediate_size=model.intermediate_size,
            max_seq_len=model.max_seq_len,
            rope_theta=model.rope_theta,
            norm_eps=model.norm_eps,
            tie_embeddings=model.tie_embeddings,
            init_std=model.init_std,
            layers=tuple(layers or ()),
        )
