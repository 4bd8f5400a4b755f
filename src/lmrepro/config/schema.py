"""Typed schema of one profile of params.yaml (plain frozen dataclasses).

Cross-field rules live in ``check``; every rejection names the dotted key and what is allowed.
Each paper's own section is typed by its package (``lmrepro.papers.<paper>.config.SCHEMA``) and attached to
:class:`Config` by the loader; this module imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .layers import parse_layer_token
from .schema_tools import ConfigError, bounded, require


@dataclass(frozen=True, kw_only=True)
class HFSourceConfig:
    """A Hub dataset streamed with ``datasets`` (paper profile)."""

    path: str
    name: str | None = None
    split: str = "train"
    text_field: str = "text"
    data_files: str | None = None
    max_documents: int | None = bounded(None, min=2)
    revision: str | None = bounded(None, doc="Hub commit id to read; null: the default branch's commit at the "
                                             "first run, recorded in data/corpus/manifest.json")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    source: str = bounded("stdlib", choices=("stdlib", "hf"))
    val_fraction: float = bounded(0.05, min=1e-4, max=0.5)
    seed: int = bounded(0, min=0)
    max_documents: int | None = bounded(None, min=2, doc="cap on stdlib files (smoke)")
    max_bytes_per_document: int | None = bounded(None, min=1)
    shard_tokens: int = bounded(2**24, min=1024)
    hf: HFSourceConfig | None = None

    def check(self, path: str) -> None:
        require(self.source != "hf" or self.hf is not None, f"{path}.hf",
                "source is 'hf', so data.hf (path, split, text_field, ...) must be given")


@dataclass(frozen=True, kw_only=True)
class TokenizerConfig:
    vocab_size: int = bounded(min=258, max=2**20)
    min_frequency: int = bounded(2, min=1)
    train_max_documents: int | None = bounded(None, min=1, doc="documents used to learn merges")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Llama-style decoder with a per-layer mixer pattern (see :mod:`lmrepro.config.layers`).

    ``mixer`` is the layer type everywhere; with ``full_attention_every = k`` the last layer of every
    group of k is full attention instead (NoPE there when ``full_attention_rope`` is false).
    """

    hidden_size: int = bounded(min=8)
    num_layers: int = bounded(min=1)
    num_heads: int = bounded(min=1)
    num_kv_heads: int | None = bounded(None, min=1)
    intermediate_size: int = bounded(min=8)
    max_seq_len: int = bounded(min=8)
    rope_theta: float = bounded(10000.0, min=1.0)
    norm_eps: float = bounded(1e-5, min=0.0, max=0.1)
    tie_embeddings: bool = False
    init_std: float = bounded(0.02, min=0.0, max=1.0)
    mixer: str = "full"
    full_attention_every: int | None = bounded(None, min=1)
    full_attention_rope: bool = True
    conv_kernel: int = bounded(4, min=1, max=16)
    ssm_state_size: int = bounded(32, min=1)
    ssm_expand: int = bounded(2, min=1)
    ssm_head_dim: int = bounded(32, min=1)
    gdn_expand_v: int = bounded(1, min=1)

    def check(self, path: str) -> None:
        try:
            mixer, window, _ = parse_layer_token(self.mixer)
        except ValueError as err:
            raise ConfigError(f"{path}.mixer: {err}") from None
        require(window is None or window <= self.max_seq_len, f"{path}.mixer",
                f"window {window} is larger than max_seq_len {self.max_seq_len}")
        require(self.full_attention_every is None or self.full_attention_every <= self.num_layers,
                f"{path}.full_attention_every",
                f"{self.full_attention_every} exceeds num_layers {self.num_layers}: no layer would be full attention")
        require(mixer != "mamba2" or (self.ssm_expand * self.hidden_size) % self.ssm_head_dim == 0,
                f"{path}.ssm_head_dim",
                f"{self.ssm_head_dim} must divide ssm_expand·hidden_size = {self.ssm_expand * self.hidden_size}")
        require(self.hidden_size % self.num_heads == 0, f"{path}.num_heads",
                f"{self.num_heads} heads do not divide hidden_size {self.hidden_size}")
        head_dim = self.hidden_size // self.num_heads
        require(head_dim % 2 == 0, f"{path}.num_heads",
                f"head dim hidden_size/num_heads = {head_dim} must be even for RoPE")
        kv = self.num_kv_heads or self.num_heads
        require(self.num_heads % kv == 0, f"{path}.num_kv_heads",
                f"{kv} kv heads must divide num_heads {self.num_heads}")


# accelerate's tracker names (accelerate.utils.LoggerType, less "all": a run names what it sends data to).
TRACKERS = ("dvclive", "tensorboard", "wandb", "mlflow", "aim", "comet_ml", "clearml", "swanlab", "trackio")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    seq_len: int = bounded(min=2)
    batch_size: int = bounded(min=1, doc="global sequences per optimizer step")
    micro_batch_size: int = bounded(min=1, doc="sequences per forward pass per process")
    max_tokens: int = bounded(min=1, doc="token budget of the run")
    lr: float = bounded(min=0.0, max=1.0)
    min_lr_ratio: float = bounded(0.1, min=0.0, max=1.0)
    schedule: str = bounded("cosine", choices=("cosine", "wsd", "constant"))
    warmup_fraction: float = bounded(0.05, min=0.0, max=0.5)
    decay_fraction: float = bounded(0.2, min=0.0, max=1.0, doc="wsd: final fraction spent decaying")
    weight_decay: float = bounded(0.1, min=0.0)
    betas: list[float] = bounded([0.9, 0.95], min=0.0, max=0.9999)
    eps: float = bounded(1e-8, min=0.0)
    grad_clip: float | None = bounded(1.0, min=0.0)
    checkpoint_tokens: list[int] = bounded([], min=1, doc="token budgets at which weights are kept")
    save_every_steps: int = bounded(50, min=1, doc="resumable checkpoint period")
    keep_checkpoints: int = bounded(2, min=1)
    log_every_steps: int = bounded(1, min=1)
    eval_every_steps: int | None = bounded(None, min=1)
    eval_windows: int = bounded(8, min=1)
    precision: str = bounded("auto", choices=("auto", "fp32", "bf16"))
    seed: int = bounded(0, min=0)
    # Memory at paper scale; neither changes the function trained (tests/test_loss_memory.py).
    loss_chunk_tokens: int = bounded(0, min=0, doc="cross-entropy over this many positions at a time, the full "
                                                   "fp32 logits never held (0: all at once)")
    activation_checkpointing: bool = False
    progress_every_steps: int = bounded(0, min=0, doc="period of the progress line (tokens/s, loss, ETA) and of "
                                                      "the live per-step CSV; 0: every 5% of the run")
    trackers: list[str] = bounded([], choices=TRACKERS,
                                  doc="accelerate trackers that receive every logged row while the run trains "
                                      "(dvclive: live/<paper>/<run>/, which `dvc exp show` reads; tensorboard "
                                      "writes there too; the others to their own services)")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def max_steps(self) -> int:
        return self.max_tokens // self.tokens_per_step

    def check(self, path: str) -> None:
        require(len(self.betas) == 2, f"{path}.betas", f"give two numbers [beta1, beta2], got {self.betas}")
        require(self.batch_size % self.micro_batch_size == 0, f"{path}.micro_batch_size",
                f"{self.micro_batch_size} must divide batch_size {self.batch_size}")
        require(self.max_steps >= 1, f"{path}.max_tokens",
                f"{self.max_tokens} is less than one step of batch_size*seq_len = {self.tokens_per_step} tokens")
        for t in self.checkpoint_tokens:
            require(t <= self.max_tokens, f"{path}.checkpoint_tokens",
                    f"budget {t} exceeds max_tokens {self.max_tokens}")
        require(self.checkpoint_tokens == sorted(set(self.checkpoint_tokens)), f"{path}.checkpoint_tokens",
                "budgets must be strictly increasing")
        # wsd's warmup and final decay must not overlap (lr_multiplier would jump mid-run).
        require(self.schedule != "wsd" or self.warmup_fraction + self.decay_fraction <= 1.0,
                f"{path}.decay_fraction",
                f"wsd needs warmup_fraction + decay_fraction <= 1, got {self.warmup_fraction} + {self.decay_fraction}")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    seq_len: int = bounded(min=2)
    batch_size: int = bounded(8, min=1)
    max_windows: int | None = bounded(None, min=1, doc="validation windows scored (None = all)")


@dataclass(frozen=True, kw_only=True)
class LaunchConfig:
    """How many processes train each run of a training stage (not what they compute: the global batch, the
    schedule and the precision are the run's, so a run gives the same numbers on any count, to float rounding)."""

    processes: int | None = bounded(None, min=1, doc="processes per run on each machine: null = every visible CUDA "
                                    "GPU (1 on a machine without CUDA); above 1 each run trains under `accelerate "
                                    "launch` (DDP)")
    machines: int | None = bounded(None, min=1, doc="machines that train each run together: null = what the "
                                   "scheduler says (LMREPRO_MACHINES, SkyPilot's SKYPILOT_NUM_NODES; else 1); above 1 "
                                   "every machine runs the same stages and each run's processes join one group "
                                   "(lmrepro.launch: rank and address from the environment)")
    strategy: str = bounded("ddp", choices=("ddp", "fsdp"),
                            doc="how a run's processes hold the model: ddp (each a full copy), fsdp (each a shard "
                                "of weights, gradients and AdamW moments: the largest sizes; one machine; the "
                                "Trainer's runs, the LoRA-α runs stay ddp)")


@dataclass(frozen=True, kw_only=True)
class Config:
    """One resolved profile. ``profile`` is the name it was resolved from.

    ``papers`` maps each paper's name to its validated section; ``cfg.<paper>`` reads it
    (``cfg.hybrid_attention``), so paper code never needs the core to know the paper schemas.
    """

    profile: str
    data: DataConfig
    tokenizer: TokenizerConfig
    model: ModelConfig
    train: TrainConfig
    eval: EvalConfig
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    papers: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str):
        # Only called for names that are not fields: a paper's section, by its name.
        papers = self.__dict__.get("papers") or {}
        if name in papers:
            return papers[name]
        raise AttributeError(f"Config has no field or paper section {name!r}; papers: {sorted(papers)}")

    def check(self, where: str) -> None:
        """Cross-section rules; ``where`` prefixes the dotted keys (e.g. ``"profiles/smoke.yaml: "``)."""
        require(self.train.seq_len <= self.model.max_seq_len, f"{where}train.seq_len",
                f"{self.train.seq_len} exceeds model.max_seq_len {self.model.max_seq_len}")
        require(self.eval.seq_len <= self.model.max_seq_len, f"{where}eval.seq_len",
                f"{self.eval.seq_len} exceeds model.max_seq_len {self.model.max_seq_len}")
        for name, section in self.papers.items():  # a paper's rules that involve the core sections
            if hasattr(section, "check_with"):
                section.check_with(self, f"{where}{name}.")
