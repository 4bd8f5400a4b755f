"""Command line: train one run of a profile, e.g. on 2 CPU processes::

    accelerate launch --cpu --num_processes 2 -m lmrepro.train --profile smoke --run baseline
"""

from __future__ import annotations

import argparse
import logging

from ..config import load_config
from ..models import LMSpec
from ..paths import project_paths
from .trainer import Trainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lmrepro.train", description=__doc__)
    parser.add_argument("--params", default=None, help="params.yaml (default: found from the working directory)")
    parser.add_argument("--profile", default=None, help="smoke | laptop | paper (default: params.yaml's profile)")
    parser.add_argument("--run", default="baseline", help="run name: outputs in data/models/<run>")
    parser.add_argument("--root", default=None, help="project root holding data/ (default: params.yaml's folder)")
    parser.add_argument("--until-step", type=int, default=None, help="stop early after this many steps")
    parser.add_argument("--log", default=None, help="CSV of per-step metrics")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    cfg = load_config(args.params, args.profile)
    paths = project_paths(args.root)
    spec = LMSpec.from_config(cfg.model, vocab_size=cfg.tokenizer.vocab_size)
    trainer = Trainer(spec, cfg.train, paths.tokens("train"), paths.model(args.run), paths.checkpoints(args.run),
                      val_dir=paths.tokens("validation"), log_path=args.log, run_config=cfg)
    result = trainer.fit(until_step=args.until_step)
    if trainer.accelerator.is_main_process:
        print(f"trained {result.rows[-1]['step'] if result.rows else 0} steps; final loss "
              f"{result.rows[-1]['loss'] if result.rows else float('nan'):.4f}; weights in {result.final_dir}")


if __name__ == "__main__":
    main()
