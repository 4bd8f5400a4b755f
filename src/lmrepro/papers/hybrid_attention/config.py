"""Schema of the ``hybrid_attention`` section of a profile (paper 1: efficient attention in hybrids).

Windows are fractions of the training context (the paper's 128/512/2048 of 16K are 1/128, 1/32, 1/8),
the LongPPL truncation and block are fractions of the document length, token budgets are per size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config.schema_tools import ConfigError, bounded, require
from ...data.retrieval_mix import MIX_KINDS

# The paper's seven architectures plus its proposal; every one is a layer-wise hybrid except "full".
ARCHITECTURES = ("full", "swa-small", "swa-mid", "swa-large", "lightning", "mamba2", "gdn", "swa-small-nope")


def check_arch(arch: str) -> str:
    """``arch`` itself, if it is one of ARCHITECTURES (a notebook parameter like ``swa-small-foo`` would
    otherwise train swa-small under a new name)."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"arch: {arch!r} is not an architecture; choose one of {list(ARCHITECTURES)}")
    return arch


@dataclass(frozen=True, kw_only=True)
class HybridSize:
    hidden_size: int = bounded(min=8)
    num_layers: int = bounded(min=1)
    num_heads: int = bounded(min=1)
    num_kv_heads: int | None = bounded(None, min=1)
    intermediate_size: int = bounded(min=8)
    max_tokens: int = bounded(min=1, doc="pretraining token budget of this size")


@dataclass(frozen=True, kw_only=True)
class LongPPLConfig:
    documents: int = bounded(min=1, doc="validation documents (windows of seq_len tokens) scored")
    truncation_fraction: float = bounded(0.125, min=1e-4, max=1.0, doc="K / document length (paper 4096/32K)")
    block_fraction: float = bounded(0.03125, min=1e-4, max=1.0, doc="block / document length (paper 1024/32K)")
    lsd_threshold: float = 2.0
    lcl_threshold: float = -2.0


@dataclass(frozen=True, kw_only=True)
class RestrictionConfig:
    architectures: list[str] = bounded(["swa-mid", "lightning"], choices=ARCHITECTURES)
    windows: list[int] = bounded([8, 32, 128], min=1)
    sinks: int = bounded(4, min=0)


@dataclass(frozen=True, kw_only=True)
class RulerConfig:
    tasks: list[str] = bounded(["single_needle", "multikey", "multivalue", "multiquery", "kv_retrieval"],
                               choices=("single_needle", "multikey", "multivalue", "multiquery", "kv_retrieval"))
    length_multipliers: list[float] = bounded([1.0, 2.0], min=0.1, max=64.0)
    samples: int = bounded(20, min=1)
    value_digits: int = bounded(4, min=1, max=12)
    architectures: list[str] = bounded(list(ARCHITECTURES), choices=ARCHITECTURES)


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    samples: int = bounded(160, min=16)
    candidates: int = bounded(8, min=2)
    C: float = bounded(0.1, min=1e-6)
    test_fraction: float = bounded(0.2, min=0.05, max=0.5)

    def check(self, path: str) -> None:
        require(self.candidates <= 10, f"{path}.candidates",
                f"{self.candidates} > 10: candidates differ in one last digit")
        n_test = -(-self.samples * self.test_fraction // 1)
        require(n_test >= self.candidates and self.samples - n_test >= self.candidates, f"{path}.samples",
                f"{self.samples} samples × test_fraction {self.test_fraction} leaves a split smaller than the "
                f"{self.candidates} classes; use at least {int(-(-self.candidates // self.test_fraction))}")


@dataclass(frozen=True, kw_only=True)
class LazinessConfig:
    architectures: list[str] = bounded(["swa-small", "swa-mid", "swa-large", "lightning", "gdn"], choices=ARCHITECTURES)
    samples: int = bounded(16, min=1)
    last_positions: int = bounded(20, min=1)
    top_heads: int = bounded(4, min=1)


@dataclass(frozen=True, kw_only=True)
class RetrievalConfig:
    """Synthetic retrieval rows mixed into the pretraining stream (:mod:`lmrepro.data.retrieval_mix`), so
    long-range retrieval emerges within a small budget; values use ``ruler.value_digits`` digits and sit
    beyond the stacked receptive field of the smallest window (``runs.min_distance``)."""

    share: float = bounded(min=0.01, max=0.99, doc="synthetic rows per batch (exact: round(share × batch_size))")
    kinds: list[str] = bounded(["single_needle", "recall"], choices=MIX_KINDS)
    recall_pairs: int = bounded(2, min=1, doc="needles per multi-query recall row")
    answer_weight: float = bounded(1.0, min=1.0, doc="loss weight of every answer label (1: the plain LM loss)")


@dataclass(frozen=True, kw_only=True)
class HybridConfig:
    """Pretraining sweep (all of ARCHITECTURES × sizes, several token budgets each) and its evaluations.
    The architectures are the paper's and fixed (dvc.yaml iterates over them); a profile sets the scale."""

    architectures: list[str] = bounded(list(ARCHITECTURES), choices=ARCHITECTURES,
                                       doc="the pipeline's foreach list (pipelines/hybrid_attention/dvc.yaml)")
    seq_len: int = bounded(min=16, doc="training context")
    window_fractions: dict[str, float] = field(
        default_factory=lambda: {"small": 1 / 128, "mid": 1 / 32, "large": 1 / 8})
    full_attention_every: int = bounded(4, min=1, doc="the last layer of each group of k is full attention")
    tie_embeddings: bool = False
    sizes: dict[str, HybridSize]
    budget_fractions: list[float] = bounded([0.1, 0.25, 0.5, 1.0], min=1e-4, max=1.0,
                                            doc="checkpoints at these fractions of each size's max_tokens")
    batch_size: int = bounded(min=1)
    micro_batch_size: int = bounded(min=1)
    lr: float = bounded(min=0.0, max=1.0)
    warmup_fraction: float = bounded(0.05, min=0.0, max=0.5)
    eval_windows: int = bounded(32, min=1, doc="validation windows for the loss")
    seeds: list[int] = bounded([0], min=0, doc="every architecture and size is trained once per seed")
    retrieval: RetrievalConfig | None = None  # None: the plain source stream
    longppl: LongPPLConfig
    restriction: RestrictionConfig = field(default_factory=RestrictionConfig)
    ruler: RulerConfig = field(default_factory=RulerConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    laziness: LazinessConfig = field(default_factory=LazinessConfig)

    def window(self, arch: str) -> int | None:
        """Sliding window of ``arch`` in tokens (None for architectures without SWA layers)."""
        check_arch(arch)
        if not arch.startswith("swa-"):
            return None
        return round(self.window_fractions[arch.split("-")[1]] * self.seq_len)

    def check(self, path: str) -> None:
        require(set(self.window_fractions) == {"small", "mid", "large"}, f"{path}.window_fractions",
                f"give exactly the keys small, mid, large; got {sorted(self.window_fractions)}")
        for name, frac in self.window_fractions.items():
            require(0 < frac <= 1, f"{path}.window_fractions.{name}", f"{frac} must be in (0, 1]")
            # A window that rounds to 0 tokens is no window; it used to become a 1-token window silently.
            require(round(frac * self.seq_len) >= 1, f"{path}.window_fractions.{name}",
                    f"{frac} × seq_len {self.seq_len} rounds to {round(frac * self.seq_len)} tokens; "
                    f"use at least {0.5 / self.seq_len:.3g}")
        require(len(self.sizes) >= 1, f"{path}.sizes", "define at least one size")
        require(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), f"{path}.seeds",
                f"give at least one seed, none twice; got {self.seeds}")
        require(self.budget_fractions == sorted(set(self.budget_fractions)) and self.budget_fractions[-1] == 1.0,
                f"{path}.budget_fractions", "must be strictly increasing and end at 1.0")
        require(self.batch_size % self.micro_batch_size == 0, f"{path}.micro_batch_size",
                f"{self.micro_batch_size} must divide batch_size {self.batch_size}")
        for name, size in self.sizes.items():
            require(size.hidden_size % size.num_heads == 0 and (size.hidden_size // size.num_heads) % 2 == 0,
                    f"{path}.sizes.{name}.num_heads",
                    f"{size.num_heads} heads must divide hidden_size {size.hidden_size} into an even head dim")
            require(size.max_tokens >= self.batch_size * self.seq_len, f"{path}.sizes.{name}.max_tokens",
                    f"{size.max_tokens} is less than one step ({self.batch_size * self.seq_len} tokens)")

    def check_with(self, cfg, path: str) -> None:
        """Rules against the core sections (``cfg``: the whole Config)."""
        require(self.seq_len <= cfg.model.max_seq_len, f"{path}seq_len",
                f"{self.seq_len} exceeds model.max_seq_len {cfg.model.max_seq_len}: the LongPPL evaluator (the "
                f"foundation baseline) must accept the documents it scores")


# The loader (lmrepro.config.paper_schemas) finds the paper by its folder and types its section with SCHEMA.
SCHEMA = HybridConfig
ORDER = 1
