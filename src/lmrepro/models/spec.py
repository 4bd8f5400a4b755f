"""Architecture spec of a decoder LM: the model's only input besides weights.

A :class:`LMSpec` is fully resolved (vocabulary, per-layer mixer), so the model holds no config logic.
Paper pipelines derive their variants with :func:`dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ModelConfig
from .varwidth import check_widths


@dataclass(frozen=True)
class LayerSpec:
    """One block: sequence mixer + SwiGLU MLP.

    mixer: name in ``lmrepro.models.MIXERS``: "attention", "lightning", "mamba2" or "gdn".
    window: attention only: sliding window W >= 1 (query sees itself and W−1 previous tokens);
        None = full causal.
    rope: attention only: rotary position encoding (False = NoPE).
    """

    mixer: str = "attention"
    window: int | None = None
    rope: bool = True

    def __post_init__(self):
        # window=0 would mask every key (NaN rows); a float/bool window is a caller's mistake.
        w = self.window
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
            raise ValueError(f"window: must be None or an int >= 1, got {w!r}")
        if self.mixer != "attention" and (w is not None or not self.rope):
            raise ValueError(f"window / rope apply to attention layers only, not to mixer {self.mixer!r}")

    @property
    def is_full_attention(self) -> bool:
        """A global (unwindowed) softmax-attention layer: the layers hybrids keep few of."""
        return self.mixer == "attention" and self.window is None

    @property
    def name(self) -> str:
        """Pattern token of this layer (see :mod:`lmrepro.models.hybrid`)."""
        if self.mixer != "attention":
            return self.mixer
        base = "full" if self.window is None else f"swa-{self.window}"
        return base if self.rope else base + "-nope"


@dataclass(frozen=True)
class LMSpec:
    """Resolved architecture.

    widths: per-block widths (w_1, .., w_L) of a variable-width ("><former") model; None = every block
        has width ``hidden_size``. With widths, ``hidden_size`` is the embedding / LM-head width h, each
        block has SwiGLU hidden 4·w_ℓ (``intermediate_size`` is then unused), head dim w_ℓ / num_heads and
        init std init_std·sqrt(h / w_ℓ); see :mod:`lmrepro.models.varwidth`.
    expansion: how a block wider than its predecessor is fed: "carry" (the paper's carry-forward),
        "zero" or "learned" (ablations; only with widths). Defined in :mod:`lmrepro.models.varwidth`.
    """

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
    # Efficient mixers (Mamba-2, Gated DeltaNet): short-conv kernel, SSM state/expansion, GDN value expansion.
    conv_kernel: int = 4
    ssm_state_size: int = 32
    ssm_expand: int = 2
    ssm_head_dim: int = 32
    gdn_expand_v: int = 1
    widths: tuple[int, ...] | None = None
    expansion: str = "carry"

    def __post_init__(self):
        # A list would make the frozen spec unhashable and let it be mutated in place.
        object.__setattr__(self, "layers", tuple(self.layers))
        if not self.layers:
            object.__setattr__(self, "layers", tuple(LayerSpec() for _ in range(self.num_layers)))
        if len(self.layers) != self.num_layers:
            raise ValueError(f"layers: {len(self.layers)} layer specs for num_layers={self.num_layers}")
        # JSON (spec.json, HF config.json) gives the widths back as a list; checked per layer.
        object.__setattr__(self, "widths", check_widths(self))
        # Specs are also built directly (tests, dataclasses.replace), bypassing ModelConfig.check:
        # with heads not dividing hidden_size, head_dim would silently round down. With widths, h is only
        # the embedding width and each block's width is checked above instead.
        if self.widths is None and self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads: {self.num_heads} heads do not divide hidden_size {self.hidden_size}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads: {self.num_kv_heads} kv heads must divide num_heads {self.num_heads}")

    @property
    def head_dim(self) -> int:
        """Head dim of a constant-width spec (per block: ``varwidth.block_spec(spec, i).head_dim``)."""
        return self.hidden_size // self.num_heads

    @classmethod
    def from_config(cls, model: ModelConfig, vocab_size: int, layers=None, widths=None,
                    expansion: str = "carry") -> "LMSpec":
        """Spec of ``model`` (its layer pattern unless ``layers`` is given; constant width unless ``widths``)."""
        from .hybrid import layers_from_config

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
            layers=tuple(layers or layers_from_config(model)),
            conv_kernel=model.conv_kernel,
            ssm_state_size=model.ssm_state_size,
            ssm_expand=model.ssm_expand,
            ssm_head_dim=model.ssm_head_dim,
            gdn_expand_v=model.gdn_expand_v,
            widths=widths,
            expansion=expansion,
        )
