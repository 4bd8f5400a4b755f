"""Architecture spec of a decoder LM: the model's only input besides weights.

A :class:`LMSpec` is fully resolved (vocabulary, per-layer mixer), so the model holds no config logic.
Paper pipelines derive their variants with :func:`dataclasses.replace`. Layer tokens ("full", "swa-64-nope",
"gdn", ...) are read and written only through :mod:`lmrepro.config.layers`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from numbers import Integral, Real

from ..config import ModelConfig
from ..config.layers import hybrid_pattern, parse_layer_token, render_layer_token

#: How a block wider than its predecessor is fed (see :mod:`lmrepro.models.varwidth`).
EXPANSIONS = ("carry", "zero", "learned")


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
        """Pattern token of this layer (grammar: :mod:`lmrepro.config.layers`)."""
        return render_layer_token(self.mixer, self.window, self.rope)

    @classmethod
    def from_token(cls, token: str) -> "LayerSpec":
        """The layer a pattern token names (ValueError naming the allowed tokens)."""
        mixer, window, rope = parse_layer_token(token)
        return cls(mixer=mixer, window=window, rope=rope)


def layer_spec(token: str) -> LayerSpec:
    return LayerSpec.from_token(token)


def layers_from_pattern(tokens: list[str]) -> tuple[LayerSpec, ...]:
    return tuple(layer_spec(t) for t in tokens)


def layers_from_config(model: ModelConfig) -> tuple[LayerSpec, ...]:
    return layers_from_pattern(hybrid_pattern(model.num_layers, model.mixer, model.full_attention_every,
                                              model.full_attention_rope))


@dataclass(frozen=True)
class LMSpec:
    """Resolved architecture.

    widths: per-block widths (w_1, .., w_L) of a variable-width ("><former") model; None = every block
        has width ``hidden_size``. With widths, ``hidden_size`` is the embedding / LM-head width h, each
        block has SwiGLU hidden 4·w_ℓ (``intermediate_size`` is then unused), head dim w_ℓ / num_heads and
        init std init_std·sqrt(h / w_ℓ); see :mod:`lmrepro.models.varwidth`.
    expansion: how a block wider than its predecessor is fed: "carry" (the paper's carry-forward),
        "zero" or "learned" (ablations; only with widths). Defined in :mod:`lmrepro.models.varwidth`;
        both are validated by :meth:`LMSpec.check_widths`.
    mup_base_width: None = standard parametrization; an int h0 = μP (maximal update parametrization, Yang et
        al., Tensor Programs V) relative to width h0, where it equals the standard one: a block of width w has
        hidden-matrix init std init_std·sqrt(h0 / w) and Adam learning rate lr·h0 / w
        (:meth:`DecoderLM.lr_multipliers`), attention scale sqrt(d0) / d (d0 = h0 / num_heads, d the block's
        head dim) instead of 1 / sqrt(d); the logits are multiplied by h0 / hidden_size; embeddings, LM head
        and norm gains keep init_std and lr.
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
    mup_base_width: int | None = None

    def __post_init__(self):
        # Zero or negative sizes used to build an empty model (vocabulary 0) or fail later with an IndexError.
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                     "max_seq_len", "conv_kernel", "ssm_state_size", "ssm_expand", "ssm_head_dim", "gdn_expand_v"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise ValueError(f"{name}: must be an int >= 1, got {value!r}")
        for name in ("rope_theta", "norm_eps", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < float("inf"):
                raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
        m = self.mup_base_width
        if m is not None and (isinstance(m, bool) or not isinstance(m, Integral) or m < self.num_heads):
            raise ValueError(f"mup_base_width: must be None (standard parametrization) or an int >= num_heads "
                             f"({self.num_heads}, one coordinate per head), got {m!r}")
        # A list would make the frozen spec unhashable and let it be mutated in place.
        object.__setattr__(self, "layers", tuple(self.layers))
        if not self.layers:
            object.__setattr__(self, "layers", tuple(LayerSpec() for _ in range(self.num_layers)))
        if len(self.layers) != self.num_layers:
            raise ValueError(f"layers: {len(self.layers)} layer specs for num_layers={self.num_layers}")
        if m is not None and any(layer.mixer != "attention" for layer in self.layers):
            # The scaling rules above are derived for softmax attention + MLP blocks only; other mixers would
            # silently keep their standard scales.
            raise ValueError("mup_base_width: μP is defined for attention layers only; this spec has mixers "
                             f"{sorted({layer.mixer for layer in self.layers})}")
        # JSON (spec.json, HF config.json) gives the widths back as a list; checked per layer.
        object.__setattr__(self, "widths", self.check_widths())
        # Specs are also built directly (tests, dataclasses.replace), bypassing ModelConfig.check:
        # with heads not dividing hidden_size, head_dim would silently round down. With widths, h is only
        # the embedding width and each block's width is checked above instead.
        if self.widths is None and self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads: {self.num_heads} heads do not divide hidden_size {self.hidden_size}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads: {self.num_kv_heads} kv heads must divide num_heads {self.num_heads}")

    def check_widths(self) -> tuple[int, ...] | None:
        """Validate ``widths`` / ``expansion`` against the rest of the spec; return widths as a tuple.

        Raises ValueError naming the field and, for a bad width, the 0-indexed layer.
        """
        spec = self
        if spec.expansion not in EXPANSIONS:
            raise ValueError(f"expansion: {spec.expansion!r} is not allowed; choose one of {list(EXPANSIONS)}")
        if spec.widths is None:
            if spec.expansion != "carry":
                # The rule only matters where widths change; accepting it here would silently ignore it.
                raise ValueError(
                    f"expansion={spec.expansion!r} needs widths (it says how a wider block is fed); pass "
                    f"widths=(hidden_size,)*num_layers for a constant-width model with this rule, or keep 'carry'"
                )
            return None
        if isinstance(spec.widths, (str, bytes)) or not hasattr(spec.widths, "__len__"):
            raise ValueError(f"widths: must be None or a sequence of num_layers ints, got {spec.widths!r}")
        widths = tuple(spec.widths)
        if len(widths) != spec.num_layers:
            raise ValueError(f"widths: {len(widths)} widths for num_layers={spec.num_layers}")
        for i, w in enumerate(widths):
            if isinstance(w, bool) or not isinstance(w, Integral) or w < 1:
                raise ValueError(f"widths[{i}] (layer {i}): must be an int >= 1, got {w!r}")
            if w % spec.num_heads:
                raise ValueError(
                    f"widths[{i}] (layer {i}): width {w} is not divisible by num_heads={spec.num_heads} "
                    "(head count is constant per block, head dim = width / num_heads)"
                )
            layer = spec.layers[i]
            if layer.mixer == "attention" and layer.rope and (w // spec.num_heads) % 2:
                raise ValueError(
                    f"widths[{i}] (layer {i}): head dim {w}/{spec.num_heads} = {w // spec.num_heads} must be "
                    "even for RoPE; choose widths that are multiples of 2·num_heads"
                )
            if layer.mixer == "mamba2" and (spec.ssm_expand * w) % spec.ssm_head_dim:
                raise ValueError(
                    f"widths[{i}] (layer {i}): ssm_head_dim={spec.ssm_head_dim} must divide "
                    f"ssm_expand·width = {spec.ssm_expand * w} for the mamba2 mixer"
                )
        return tuple(int(w) for w in widths)

    @property
    def head_dim(self) -> int:
        """Head dim of a constant-width spec (per block: ``varwidth.block_spec(spec, i).head_dim``)."""
        return self.hidden_size // self.num_heads

    def attention_scale(self) -> float | None:
        """Softmax scale of this (constant-width or block) spec's attention: None (the op's 1/sqrt(d)) in the
        standard parametrization; μP: sqrt(d0) / d, i.e. 1/d up to the constant that makes it 1/sqrt(d) at
        the base width."""
        if self.mup_base_width is None:
            return None
        return math.sqrt(self.mup_base_width / self.num_heads) / self.head_dim

    def to_dict(self) -> dict:
        """Plain dict (spec.json, HF config.json, run fingerprints); ``mup_base_width`` only when set, so files
        and fingerprints of standard-parametrization models stay those written before μP existed."""
        data = dataclasses.asdict(self)
        if data["mup_base_width"] is None:
            del data["mup_base_width"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "LMSpec":
        """Inverse of :meth:`to_dict` (layers given as dicts)."""
        data = dict(data)
        data["layers"] = tuple(LayerSpec(**layer) for layer in data.get("layers", ()))
        return cls(**data)

    @classmethod
    def from_config(cls, model: ModelConfig, vocab_size: int, layers=None, widths=None,
                    expansion: str = "carry", mup_base_width: int | None = None) -> "LMSpec":
        """Spec of ``model`` (its layer pattern unless ``layers`` is given; constant width unless ``widths``)."""
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
            mup_base_width=mup_base_width,
        )
