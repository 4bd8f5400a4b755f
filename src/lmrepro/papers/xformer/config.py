"""Schema of the ``xformer`` section of a profile (paper 2: variable-width transformers, the "><former").

A profile sets the sizes (baseline width h, depth L, heads, token budget), the width recipe (bottleneck
ratio and position, rounding) and the training settings shared by every run. The variants are the paper's
and fixed (``variants``, the foreach list of pipelines/xformer/dvc.yaml): ``baseline`` and ``x`` at every
size and every token fraction, the other shapes and residual rules at ``ablation_size`` only, the
``seeded_variants`` once per seed at ``ablation_size``, and ``bottleneck`` (X shapes with other bottleneck
locations and widths, :class:`BottleneckSweep`) at the smallest size. :meth:`XformerConfig.runs` lists them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ...config.schema_tools import bounded, require

#: Training groups (one DVC stage each): baseline and x at every size, the rest at ``ablation_size``.
VARIANTS = ("baseline", "x", "diamond", "increasing", "decreasing", "zero", "learned", "bottleneck")
#: Width shape of each variant (None: constant width h) and its residual rule (lmrepro.models.varwidth).
VARIANT_SHAPE = {"baseline": None, "x": "x", "diamond": "diamond", "increasing": "increasing",
                 "decreasing": "decreasing", "zero": "x", "learned": "x", "bottleneck": "x"}
VARIANT_EXPANSION = {v: v if v in ("zero", "learned") else "carry" for v in VARIANTS}
#: Variants trained at every size and token fraction (the others only at ``ablation_size``, ``bottleneck``
#: at the smallest size).
SCALED_VARIANTS = ("baseline", "x")
#: Variants that can be trained with several seeds (``seeded_variants``): one run per seed at the ablation size.
SEEDABLE = ("baseline", "x", "diamond", "increasing", "decreasing", "zero", "learned")

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def turning_layer(num_layers: int, fraction: float) -> int:
    """1-indexed narrowest layer l* = round(fraction·L), half up (the paper: 0.75·L)."""
    return int(math.floor(fraction * num_layers + 0.5))


@dataclass(frozen=True, kw_only=True)
class XformerSize:
    """One model size: the constant-width baseline's shape (h, L, heads); the X model of this size has the
    same L, heads, embedding width h and (matched) parameter count."""

    hidden_size: int = bounded(min=8, doc="baseline width h = embedding / LM-head width")
    num_layers: int = bounded(min=3, doc="blocks L (the X shape needs a turning layer in [2, L-1])")
    num_heads: int = bounded(min=1, doc="heads per block, constant across blocks (head dim w_l / heads)")
    max_tokens: int = bounded(min=1, doc="training tokens of every run of this size")
    lr: float | None = bounded(None, min=0.0, max=1.0, doc="peak learning rate (None: the section's lr)")


@dataclass(frozen=True, kw_only=True)
class BottleneckSweep:
    """X shapes (carry-forward) with the narrowest block at ``fractions`` × L and continuous width ``ratios`` × h,
    at the smallest size: every combination but the section's own recipe, which is the ``x`` run there."""

    fractions: list[float] = bounded([0.5, 0.75], min=0.01, max=0.99, doc="turning layers l* = round(f·L)")
    ratios: list[float] = bounded([0.3, 0.5], min=0.01, max=0.99, doc="continuous bottleneck widths / h")


@dataclass(frozen=True)
class Run:
    """One training run. ``name`` is its folder under the variant's (the size for the main run: first seed,
    full token budget, the section's bottleneck). ``bottleneck``: (fraction, ratio) of a ``bottleneck`` run."""

    variant: str
    size: str
    seed: int
    token_fraction: float
    name: str
    bottleneck: tuple[float, float] | None = None


@dataclass(frozen=True, kw_only=True)
class XformerAnalysisConfig:
    """Residual-stream and MLP analyses (largest size, baseline vs x)."""

    windows: int = bounded(8, min=1, doc="validation windows of seq_len tokens fed to the analyses")
    thresholds: list[float] = bounded([0.01, 0.03, 0.1, 0.3, 1.0], min=0.0,
                                      doc="|activation| thresholds of the MLP activation density")
    utilization_threshold: float | None = bounded(None, min=0.0,
                                                  doc="|a| above which a unit is active (None: the layer's RMS)")


@dataclass(frozen=True, kw_only=True)
class XformerConfig:
    """Equal-parameter sweep: baseline vs X at every size, the shapes and residual-rule ablations at one size."""

    variants: list[str] = bounded(list(VARIANTS), choices=VARIANTS,
                                  doc="the pipeline's foreach list (pipelines/xformer/dvc.yaml)")
    seq_len: int = bounded(min=8, doc="training and evaluation context")
    sizes: dict[str, XformerSize]
    ablation_size: str = field(metadata={"doc": "size of the shape and residual-rule ablations"})
    bottleneck_ratio: float = bounded(0.3, min=0.01, max=0.99, doc="continuous minimum width / h (paper 0.3)")
    bottleneck_fraction: float = bounded(0.75, min=0.01, max=0.99, doc="turning layer l* = round(f·L) (paper 0.75)")
    quantize: int = bounded(32, min=1, doc="widths are multiples of this (paper 32)")
    rematch: bool = bounded(True, doc="after rounding, move single blocks by ±quantize to re-match parameters")
    match_tolerance: float = bounded(0.02, min=0.0, max=0.5,
                                     doc="allowed |relative deviation| of a run's matched parameter budget")
    batch_size: int = bounded(min=1, doc="sequences per optimizer step")
    micro_batch_size: int = bounded(min=1)
    lr: float = bounded(min=0.0, max=1.0, doc="peak learning rate (μP: of the base width; blocks of width w train "
                        "their matrices at lr·mup_base_width / w)")
    mup_base_width: int | None = bounded(None, min=8, doc="None: standard parametrization; a width h0: μP relative to "
                                         "it (lmrepro.models.LMSpec.mup_base_width), so one lr serves every size")
    warmup_fraction: float = bounded(0.05, min=0.0, max=0.5)
    precision: str = bounded("auto", choices=("auto", "fp32", "bf16"))
    seeds: list[int] = bounded([0], min=0, doc="the first seeds every run (init and data order); each further "
                               "seed trains ``seeded_variants`` once more at ablation_size (seed noise)")
    seeded_variants: list[str] = bounded(["baseline", "x"], choices=SEEDABLE,
                                         doc="variants trained with every seed at ablation_size")
    token_fractions: list[float] = bounded([1.0], min=0.01, max=1.0,
                                           doc="token budgets of baseline and x at every size, as fractions of the "
                                               "size's max_tokens (1.0 among them): compute varies at fixed size")
    bottleneck_sweep: BottleneckSweep = field(default_factory=BottleneckSweep)
    eval_windows: int = bounded(32, min=1, doc="validation windows for the loss of every run")
    analysis: XformerAnalysisConfig = field(default_factory=XformerAnalysisConfig)

    @property
    def seed(self) -> int:
        """The main seed: every run has it, the seeded variants' extra runs the others."""
        return self.seeds[0]

    def runs(self) -> list[Run]:
        """Every run of every variant, in variant order."""
        return [r for v in VARIANTS for r in self.variant_runs(v)]

    def variant_runs(self, variant: str) -> list[Run]:
        """The runs of one variant (one DVC stage): the main run of each of its sizes, then the shorter token
        budgets (scaled variants), the extra seeds (seeded variants), or the bottleneck grid."""
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r} is unknown; choose one of {list(VARIANTS)}")
        if variant == "bottleneck":
            size = self.smallest_size()
            return [Run(variant, size, self.seed, 1.0, f"{size}-l{f:g}-r{r:g}", (f, r))
                    for f in self.bottleneck_sweep.fractions for r in self.bottleneck_sweep.ratios
                    if not self.is_recipe(f, r)]
        sizes = list(self.sizes) if variant in SCALED_VARIANTS else [self.ablation_size]
        out = [Run(variant, s, self.seed, 1.0, s) for s in sizes]
        if variant in SCALED_VARIANTS:
            out += [Run(variant, s, self.seed, f, f"{s}-tokens{f:g}") for s in sizes
                    for f in self.token_fractions if f != 1.0]
        if variant in self.seeded_variants:
            out += [Run(variant, self.ablation_size, seed, 1.0, f"{self.ablation_size}-seed{seed}")
                    for seed in self.seeds[1:]]
        return out

    def is_recipe(self, fraction: float, ratio: float) -> bool:
        """Whether (turning-layer fraction, bottleneck ratio) is the section's own X recipe."""
        return math.isclose(fraction, self.bottleneck_fraction) and math.isclose(ratio, self.bottleneck_ratio)

    def smallest_size(self) -> str:
        """The size with the fewest baseline block parameters (h²·L; ties: the first listed)."""
        return min(self.sizes, key=lambda s: (self.sizes[s].num_layers * self.sizes[s].hidden_size ** 2,
                                              list(self.sizes).index(s)))

    def lr_of(self, size: str) -> float:
        s = self.sizes[size]
        return self.lr if s.lr is None else s.lr

    def check(self, path: str) -> None:
        require(len(self.sizes) >= 2, f"{path}.sizes",
                f"define at least two sizes (the loss-matched power-law fits need two points), got {len(self.sizes)}")
        require(self.ablation_size in self.sizes, f"{path}.ablation_size",
                f"{self.ablation_size!r} is not one of the sizes {sorted(self.sizes)}")
        require(self.batch_size % self.micro_batch_size == 0, f"{path}.micro_batch_size",
                f"{self.micro_batch_size} must divide batch_size {self.batch_size}")
        require(not self.analysis.thresholds or self.analysis.thresholds == sorted(set(self.analysis.thresholds)),
                f"{path}.analysis.thresholds", "must be strictly increasing")
        require(len(self.analysis.thresholds) >= 1, f"{path}.analysis.thresholds", "give at least one threshold")
        require(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), f"{path}.seeds",
                f"give at least one seed, none twice; got {self.seeds}")
        require({"baseline", "x"} <= set(self.seeded_variants), f"{path}.seeded_variants",
                f"must include baseline and x (the seed noise of the X − baseline gap); got {self.seeded_variants}")
        require(1.0 in self.token_fractions and len(set(self.token_fractions)) == len(self.token_fractions),
                f"{path}.token_fractions", f"must hold 1.0 (the main runs) and no fraction twice; got "
                f"{self.token_fractions}")
        for name, s in self.sizes.items():
            key = f"{path}.sizes.{name}"
            require(bool(_NAME.match(str(name))), key, "size names may use letters, digits, '_', '.', '-' only "
                    "(they name folders)")
            # Every width is a multiple of quantize; heads must divide it into an even head dim (RoPE).
            require(self.quantize % (2 * s.num_heads) == 0, f"{path}.quantize",
                    f"{self.quantize} must be a multiple of 2·num_heads = {2 * s.num_heads} (size {name}) so every "
                    "block width splits into num_heads heads of even dim")
            require(s.hidden_size % self.quantize == 0, f"{key}.hidden_size",
                    f"{s.hidden_size} must be a multiple of quantize {self.quantize} (the baseline is one schedule)")
            lstar = turning_layer(s.num_layers, self.bottleneck_fraction)
            require(2 <= lstar <= s.num_layers - 1, f"{path}.bottleneck_fraction",
                    f"turning layer round({self.bottleneck_fraction}·{s.num_layers}) = {lstar} must be in "
                    f"[2, {s.num_layers - 1}] for size {name}")
            require(self.bottleneck_ratio * s.hidden_size >= self.quantize / 2, f"{path}.bottleneck_ratio",
                    f"the bottleneck {self.bottleneck_ratio}·{s.hidden_size} rounds to width 0 with quantize "
                    f"{self.quantize} (size {name}); use a smaller quantize or a larger ratio")
            require(s.max_tokens >= self.batch_size * self.seq_len, f"{key}.max_tokens",
                    f"{s.max_tokens} is less than one step ({self.batch_size * self.seq_len} tokens)")
        sweep = self.bottleneck_sweep
        require(any(self.is_recipe(f, r) for f in sweep.fractions for r in sweep.ratios),
                f"{path}.bottleneck_sweep", f"the grid {sweep.fractions} × {sweep.ratios} must contain the recipe "
                f"(bottleneck_fraction {self.bottleneck_fraction}, bottleneck_ratio {self.bottleneck_ratio}): the "
                "x run at the smallest size is that point")
        small = self.sizes.get(self.smallest_size()) if self.sizes else None
        if small is not None:
            layers = [turning_layer(small.num_layers, f) for f in sweep.fractions]
            require(len(set(layers)) == len(layers) and all(2 <= t <= small.num_layers - 1 for t in layers),
                    f"{path}.bottleneck_sweep.fractions", f"turning layers {layers} at the smallest size "
                    f"({small.num_layers} layers) must differ and lie in [2, {small.num_layers - 1}]")
            require(min(sweep.ratios) * small.hidden_size >= self.quantize / 2, f"{path}.bottleneck_sweep.ratios",
                    f"{min(sweep.ratios)}·{small.hidden_size} rounds to width 0 with quantize {self.quantize}")


# The loader (lmrepro.config.paper_schemas) finds the paper by its folder and types its section with SCHEMA.
SCHEMA = XformerConfig
ORDER = 2
