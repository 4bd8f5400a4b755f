"""The foundation pipeline's pretraining run (stage foundation-pretrain), as a function a launch can call."""

from __future__ import annotations

from ..config import Config
from ..models import LMSpec
from ..paths import Paths, shown
from .trainer import Trainer, TrainResult

PAPER = "foundation"


def train_run(cfg: Config, paths: Paths, run: str) -> TrainResult:
    """Train (or resume, or find finished) the foundation model ``run``: weights in data/models/<run>,
    checkpoints in data/checkpoints/<run>, the per-step log and provenance under results/foundation/."""
    results = paths.results(PAPER)
    spec = LMSpec.from_config(cfg.model, vocab_size=cfg.tokenizer.vocab_size)
    trainer = Trainer(spec, cfg.train, paths.tokens("train"), paths.model(run), paths.checkpoints(run),
                      val_dir=paths.tokens("validation"), log_path=results / "train_log.csv",
                      provenance_path=results / "provenance" / f"pretrain_{run}.json", run_config=cfg,
                      live_dir=paths.live(PAPER) / run)
    if trainer.accelerator.is_main_process:
        print(f"{cfg.train.max_steps} steps of {cfg.train.tokens_per_step} tokens; checkpoints in "
              f"{shown(trainer.ckpt_dir)}")
    return trainer.fit()
