"""Schema of the ``lora_alpha`` section of a profile (paper 3: the scaling factor α of LoRA).

The base model is our foundation baseline (``base``, smoke/laptop) or any HF causal LM (``hf_model``, paper).
Two tasks, both with fixed train/validation splits: ``domain`` (language modeling on a held-out domain:
package READMEs on the laptop, an HF text dataset at paper scale) and ``reasoning`` (supervised fine-tuning:
the synthetic arithmetic task on the laptop, an HF SFT dataset at paper scale). The sweeps, methods and
mechanisms are the paper's and fixed (dvc.yaml iterates over the tasks); a profile sets the scale.

Learning rates are ``sweep.base_lr`` times multipliers (base_lr: the full fine-tuning optimum that the
``full_ft`` stage pre-registers, unless a profile sets it), α is r times multipliers (s = α/r = the multiplier),
so the grid is the same at every rank and "raise α by m" and "raise the learning rate by m" meet at the same
grid points (equal effective first step under Adam: ΔW ∝ s·η).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config.schema_tools import bounded, require

TASKS = ("domain", "reasoning")
#: The methods compared at their best settings (claim 6); "full" is full fine-tuning.
METHODS = ("lora_2r", "lora_16", "rslora", "loraplus", "lora_alpha_rank", "lora_alpha_layerwise", "full")
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True, kw_only=True)
class HFModelConfig:
    """Any HF causal LM (paper profile), loaded with ``lmrepro.lora.hf_models.load_causal_lm``."""

    name: str = field(metadata={"doc": "Hub id or local folder, e.g. meta-llama/Llama-3.2-1B"})
    dtype: str = bounded("float32", choices=("float32", "bfloat16", "float16"),
                         doc="weights dtype (float32 + bf16 autocast keeps AdamW exact)")
    revision: str | None = None
    trust_remote_code: bool = False


@dataclass(frozen=True, kw_only=True)
class HFTextConfig:
    """An HF text dataset streamed with ``datasets`` (paper profile's held-out domain)."""

    path: str
    name: str | None = None
    split: str = "train"
    text_field: str = "text"
    data_files: str | None = None
    revision: str | None = bounded(None, doc="Hub commit id; null: the default branch's commit at the run, "
                                             "recorded in the task summary")
    max_documents: int = bounded(min=2, doc="documents read (both splits)")


@dataclass(frozen=True, kw_only=True)
class HFSFTConfig:
    """An HF SFT dataset (``lmrepro.lora.hf_models.hf_sft_dataset``): either prompt/response fields or a chat."""

    path: str
    name: str | None = None
    split: str = "train"
    data_files: str | None = None
    revision: str | None = None
    prompt_field: str | None = None
    response_field: str | None = None
    messages_field: str | None = None
    max_examples: int = bounded(min=2, doc="examples read (train + validation)")
    val_examples: int = bounded(min=1, doc="the last val_examples read are the validation split")

    def check(self, path: str) -> None:
        pair = self.prompt_field is not None and self.response_field is not None
        require(pair != (self.messages_field is not None) and (pair or not (self.prompt_field or self.response_field)),
                f"{path}.messages_field", "give either prompt_field and response_field, or messages_field")
        require(self.val_examples < self.max_examples, f"{path}.val_examples",
                f"{self.val_examples} must be less than max_examples {self.max_examples}")


@dataclass(frozen=True, kw_only=True)
class DomainTaskConfig:
    """Language modeling on a held-out domain: windows of seq_len + 1 tokens, every token supervised."""

    source: str = bounded("package-docs", choices=("package-docs", "hf"))
    seq_len: int = bounded(128, min=8)
    max_documents: int | None = bounded(None, min=2, doc="package-docs: documents in the corpus (None: all)")
    min_chars: int = bounded(500, min=1, doc="package-docs: shortest description kept")
    val_fraction: float = bounded(0.1, min=1e-3, max=0.5)
    train_windows: int | None = bounded(None, min=1, doc="cap on training windows (None: all)")
    val_windows: int = bounded(32, min=2, doc="validation windows (half select hyperparameters, half report)")
    hf: HFTextConfig | None = None

    def check(self, path: str) -> None:
        require(self.source != "hf" or self.hf is not None, f"{path}.hf",
                "source is 'hf', so hf (path, split, text_field, ...) must be given")


@dataclass(frozen=True, kw_only=True)
class ReasoningTaskConfig:
    """SFT with the loss on the response tokens only; exact-match accuracy on the synthetic task."""

    source: str = bounded("synthetic", choices=("synthetic", "hf"))
    n_train: int = bounded(2000, min=8)
    n_val: int = bounded(128, min=4, doc="validation problems (half select hyperparameters, half report)")
    steps: list[int] = bounded([2, 3], min=1, max=8, doc="operations per problem")
    max_operand: int = bounded(20, min=2)
    max_multiplier: int = bounded(9, min=2)
    max_len: int = bounded(96, min=8, doc="longest prompt + response in tokens")
    accuracy_examples: int = bounded(64, min=0, doc="report-half problems scored by greedy exact match (0: none)")
    hf: HFSFTConfig | None = None

    def check(self, path: str) -> None:
        require(self.source != "hf" or self.hf is not None, f"{path}.hf",
                "source is 'hf', so hf (path, fields, max_examples, val_examples) must be given")
        require(self.source != "hf" or self.accuracy_examples == 0, f"{path}.accuracy_examples",
                "exact-match accuracy needs the synthetic task's answers; set 0 for an hf dataset")


@dataclass(frozen=True, kw_only=True)
class TasksConfig:
    domain: DomainTaskConfig = field(default_factory=DomainTaskConfig)
    reasoning: ReasoningTaskConfig = field(default_factory=ReasoningTaskConfig)


@dataclass(frozen=True, kw_only=True)
class LoraTrainConfig:
    """One fine-tuning run (every sweep point and method): AdamW, warmup + schedule, clipping."""

    steps: dict[str, int] = field(metadata={"doc": "optimizer steps of one run, per task (domain, reasoning)"})
    batch_size: int = bounded(8, min=1)
    micro_batch_size: int | None = bounded(None, min=1, doc="gradient accumulation chunk (None: whole batch)")
    schedule: str = bounded("cosine", choices=("cosine", "wsd", "constant"))
    warmup_fraction: float = bounded(0.1, min=0.0, max=0.5)
    min_lr_ratio: float = bounded(0.1, min=0.0, max=1.0)
    weight_decay: float = bounded(0.0, min=0.0)
    grad_clip: float | None = bounded(1.0, min=0.0)
    eval_points: int | None = bounded(5, min=1, doc="learning-curve points of the method runs (validation loss "
                                      "every steps/eval_points steps; None: final only)")
    precision: str = bounded("auto", choices=("auto", "fp32", "bf16"), doc="auto: bf16 autocast on CUDA")
    save_every_steps: int | None = bounded(None, min=1, doc="resumable checkpoint of each run (LoRA and full "
                                           "fine-tuning) every this many steps, in data/checkpoints/lora_alpha/ "
                                           "(None: none; a stopped run starts again)")

    def check(self, path: str) -> None:
        require(set(self.steps) == set(TASKS), f"{path}.steps", f"give the steps of each task {list(TASKS)}, "
                f"got {sorted(self.steps)}")
        for task, n in self.steps.items():
            require(n >= 1, f"{path}.steps.{task}", f"{n} is below the minimum 1")
        require(self.micro_batch_size is None or self.batch_size % self.micro_batch_size == 0,
                f"{path}.micro_batch_size", f"{self.micro_batch_size} must divide batch_size {self.batch_size}")


@dataclass(frozen=True, kw_only=True)
class FullFTConfig:
    """The full-fine-tuning learning-rate sweep that runs before the LoRA sweep (stage ``full_ft``): its optimum on
    the selection half is the sweep's pre-registered ``base_lr`` (the paper's small, full-fine-tuning-style
    learning rate), measured rather than typed in."""
    lrs: list[float] = bounded(min=1e-8, max=1.0, doc="learning rates tried (the grid grows past an edge optimum)")
    max_extensions: int = bounded(2, min=0, doc="points added beyond the grid's edge while the optimum sits there")

    def check(self, path: str) -> None:
        require(len(self.lrs) >= 3 and self.lrs == sorted(set(self.lrs)), f"{path}.lrs",
                f"must be strictly increasing with at least 3 values (an interior optimum), got {self.lrs}")


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """α multiplier × learning rate at several ranks (claims 1, 4)."""
    ranks: list[int] = bounded(min=1)
    alpha_multipliers: list[float] = bounded(min=1e-3, doc="α = r·m, i.e. s = α/r = m")
    base_lr: float | None = bounded(None, min=1e-7, max=1.0, doc="the small, full-fine-tuning-style learning "
                                    "rate; None: pre-registered by the full_ft stage (its optimum)")
    lr_multipliers: list[float] = bounded(min=1e-3, doc="learning rates base_lr·m")
    cross_ranks: list[int] | None = bounded(None, min=1, doc="ranks with the full α × lr cross product (None: "
                                            "every rank); every rank runs both axes from the base point")
    max_extensions: int = bounded(2, min=0, doc="α multipliers added beyond the grid's edge (at base_lr, per "
                                  "rank) while the rank's optimum sits on it")
    optimum_seeds: list[int] = bounded([], min=0, doc="extra seeds of the best α at base_lr and its two grid "
                                       "neighbours, at every rank: α*'s bootstrap and the seed noise behind "
                                       "the margins")

    def rank_grid(self) -> list[tuple[int, float, float]]:
        """Every (rank, α multiplier, lr multiplier) of the sweep, in run order: at every rank the α axis at
        base_lr and the lr axis at α = r; at ``cross_ranks`` every combination."""
        cross = set(self.ranks if self.cross_ranks is None else self.cross_ranks)
        grid = []
        for r in self.ranks:
            for m in self.lr_multipliers:
                alphas = self.alpha_multipliers if (r in cross or m == 1.0) else [1.0]
                grid += [(r, a, m) for a in alphas]
        return grid

    def check(self, path: str) -> None:
        # Two ranks make a fit, three α values an interior optimum, two learning rates an axis.
        for key, least in (("ranks", 2), ("alpha_multipliers", 3), ("lr_multipliers", 2)):
            values = getattr(self, key)
            require(len(values) >= least and values == sorted(set(values)), f"{path}.{key}",
                    f"must be strictly increasing with at least {least} values, got {values}")
        for key in ("alpha_multipliers", "lr_multipliers"):
            require(1.0 in getattr(self, key), f"{path}.{key}", "must contain 1 (the base point α = r, base_lr)")
        require(self.base_lr is None or self.base_lr * max(self.lr_multipliers) <= 1.0, f"{path}.lr_multipliers",
                f"base_lr·{max(self.lr_multipliers)} exceeds a learning rate of 1")
        if self.cross_ranks is not None:
            extra = sorted(set(self.cross_ranks) - set(self.ranks))
            require(not extra, f"{path}.cross_ranks", f"{extra} are not in ranks {self.ranks}")


#: Methods tuned over a learning-rate grid (the LoRA-α rules tune a multiplier of α at the sweep's base_lr).
LR_TUNED = ("lora_2r", "lora_16", "rslora", "loraplus", "full")


@dataclass(frozen=True, kw_only=True)
class MethodsConfig:
    """Every method at its best setting (claims 5, 6), each with its own small tuning grid.

    LoRA, rsLoRA, LoRA+ and full fine-tuning tune the learning rate over ``lrs[method]`` (a grid centred where
    the method works: s differs between them, LoRA+ moves B 16× faster); LoRA-α keeps the sweep's small
    base_lr and tunes only a narrow multiplier of its α (``alpha_multipliers``), the paper's recipe.
    """

    names: list[str] = bounded(list(METHODS), choices=METHODS)
    ranks: list[int] = bounded(min=1)
    lrs: dict[str, list[float]] = field(metadata={"doc": f"learning rates tried per method of {list(LR_TUNED)}"})
    alpha_multipliers: list[float] = bounded([0.5, 1.0, 2.0], min=1e-3, doc="LoRA-α: α·m around the proposal")
    fixed_alpha: float = bounded(16.0, min=1e-3, doc="the 'lora_16' baseline (s = 16/r)")
    rslora_alpha: float = bounded(16.0, min=1e-3, doc="rsLoRA α (s = α/√r)")
    loraplus_ratio: float = bounded(16.0, min=1.0, doc="LoRA+ η_B / η_A (α = 2r)")
    rank_rule_C: float | None = bounded(None, min=1e-3, doc="LoRA-α rank rule α = C·√r; None: the C fitted "
                                        "by this task's sweep at base_lr (our calibration)")
    layerwise_batches: int = bounded(2, min=1, doc="training batches the layer-wise curvatures are measured on")

    def check(self, path: str) -> None:
        require(len(self.names) == len(set(self.names)), f"{path}.names", "list each method once")
        for key in ("ranks", "alpha_multipliers"):
            values = getattr(self, key)
            require(len(values) >= 1 and values == sorted(set(values)), f"{path}.{key}",
                    f"must be strictly increasing and non-empty, got {values}")
        needed = [m for m in self.names if m in LR_TUNED]
        missing = [m for m in needed if m not in self.lrs]
        require(not missing, f"{path}.lrs", f"give the learning rates of {missing}")
        extra = sorted(set(self.lrs) - set(LR_TUNED))
        require(not extra, f"{path}.lrs.{extra[0] if extra else ''}",
                f"is not a learning-rate-tuned method; choose from {list(LR_TUNED)}")
        for method, values in self.lrs.items():
            require(len(values) >= 1 and values == sorted(set(values)) and all(0 < v <= 1 for v in values),
                    f"{path}.lrs.{method}", f"must be strictly increasing learning rates in (0, 1], got {values}")


@dataclass(frozen=True, kw_only=True)
class SignalDriftConfig:
    rank: int = bounded(4, min=1)
    alpha_multipliers: list[float] = bounded([1.0, 4.0, 16.0, 64.0], min=1e-3)
    lr_multipliers: list[float] = bounded([1.0, 4.0, 16.0, 64.0], min=1e-3)
    steps: int = bounded(40, min=2)
    skip_steps: int = bounded(1, min=0, doc="first steps left out of the per-run mean (B = 0 at step 1: D = 0)")

    def check(self, path: str) -> None:
        for key in ("alpha_multipliers", "lr_multipliers"):
            values = getattr(self, key)
            require(len(values) >= 2 and values == sorted(set(values)) and 1.0 in values, f"{path}.{key}",
                    f"must be strictly increasing, contain 1 and have >= 2 values (a slope), got {values}")
        require(self.skip_steps < self.steps, f"{path}.skip_steps", f"{self.skip_steps} leaves no step of {self.steps}")


@dataclass(frozen=True, kw_only=True)
class CurvatureConfig:
    ranks: list[int] = bounded([2, 8], min=1)
    alpha_rule: str = bounded("2r", choices=("2r", "r"), doc="the standard α the LoRA curvature is measured at")
    at_fractions: list[float] = bounded([0.0, 0.5, 1.0], min=0.0, max=1.0,
                                        doc="measure at these fractions of the training steps (0: init)")
    steps: int = bounded(40, min=1, doc="training steps (base_lr·lr_multiplier, the standard α)")
    lr_multiplier: float = bounded(16.0, min=1e-3, doc="of mechanisms.base_lr: a LoRA-style learning rate")
    batch_size: int = bounded(4, min=1, doc="sequences in the fixed curvature batch")
    iters: int = bounded(30, min=2, doc="Hessian-vector products per Lanczos run (at most)")
    tol: float = bounded(1e-3, min=1e-8, max=0.5)

    def check(self, path: str) -> None:
        require(self.at_fractions == sorted(set(self.at_fractions)) and len(self.at_fractions) >= 1,
                f"{path}.at_fractions", "must be strictly increasing and non-empty")


@dataclass(frozen=True, kw_only=True)
class MLPConfig:
    """The 5-layer synthetic MLP (claim 7): lr ×lr_multiplier versus α ×alpha_multiplier, several seeds."""

    seeds: list[int] = bounded([0, 1, 2], min=0)
    lr_multiplier: float = bounded(128.0, min=1.0)
    alpha_multiplier: float = bounded(256.0, min=1.0)
    base_lr: float = bounded(1e-3, min=1e-7, max=1.0)
    base_alpha: float = bounded(8.0, min=1e-3)
    r: int = bounded(4, min=1)
    steps: int = bounded(200, min=1)
    width: int = bounded(64, min=2)
    diverge_factor: float = bounded(10.0, min=1.0001)

    def check(self, path: str) -> None:
        require(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), f"{path}.seeds",
                "give at least one seed, each once")


@dataclass(frozen=True, kw_only=True)
class MechanismsConfig:
    """Signal/drift, curvature (our reconstructions) and the synthetic MLP, on one task."""

    task: str = bounded("domain", choices=TASKS)
    base_lr: float = bounded(3e-4, min=1e-7, max=1.0, doc="the learning rate the signal/drift axes and the "
                             "curvature runs start from: fixed, not pre-registered, since claims 2 and 3 read "
                             "directions along the axes, not optima")
    signal_drift: SignalDriftConfig = field(default_factory=SignalDriftConfig)
    curvature: CurvatureConfig = field(default_factory=CurvatureConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)


@dataclass(frozen=True, kw_only=True)
class LoraAlphaConfig:
    """The LoRA-α study: base model, tasks, the α × lr sweep, the methods, the mechanisms."""

    task_names: list[str] = bounded(list(TASKS), choices=TASKS,
                                    doc="the pipeline's foreach list (pipelines/lora_alpha/dvc.yaml)")
    base: str = bounded("baseline", doc="smoke/laptop: run name of our pretrained model in data/models/<base>/final")
    hf_model: HFModelConfig | None = field(default=None, metadata={"doc": "paper: an HF causal LM instead of base"})
    target_modules: list[str] = bounded(list(DEFAULT_TARGETS), doc="linear layers PEFT adapts (its matching)")
    seed: int = bounded(0, min=0, doc="adapter init and data order of every run")
    threads: int | None = bounded(1, min=1, doc="torch CPU threads (None: torch's default). One by default: "
                                  "the laptop model's matrices are small, and two threads on a busy 2-core "
                                  "machine run ~10x slower than one")
    tasks: TasksConfig = field(default_factory=TasksConfig)
    train: LoraTrainConfig
    full_ft: FullFTConfig
    sweep: SweepConfig
    methods: MethodsConfig
    mechanisms: MechanismsConfig = field(default_factory=MechanismsConfig)

    def check(self, path: str) -> None:
        require(len(self.target_modules) >= 1, f"{path}.target_modules", "name at least one linear layer")


# The loader (lmrepro.config.paper_schemas) finds the paper by its folder and types its section with SCHEMA.
SCHEMA = LoraAlphaConfig
ORDER = 3
