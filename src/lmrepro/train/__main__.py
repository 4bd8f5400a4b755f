"""Command line: train one run of a profile, e.g. on 2 CPU processes::

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no -m lmrepro.train --profile smoke --run baseline

(or ``torchrun --nproc_per_node 2 -m lmrepro.train --profile smoke``; torchrun takes an abbreviated
``--run`` for its own ``--run-path``, so with torchrun keep the default run name). Without CUDA the
processes train on CPU with gloo. ``accelerate launch --cpu --num_processes 2`` starts only *one*
process unless an mpirun hostfile is given; the log line "training ... on N processes" says how many.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import load_config
from ..models import LMSpec
from ..paths import project_paths
from .trainer import Trainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lmrepro.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=None, help="params.yaml (default: found from the working directory)")
    parser.add_argument("--profile", default=None, help="smoke | laptop | paper (default: params.yaml's profile)")
    parser.add_argument("--run", default="baseline", help="run name: outputs in data/models/<run>")
    parser.add_argument("--root", default=None, help="project root holding data/ (default: params.yaml's folder)")
    parser.add_argument("--until-step", type=int, default=None, help="stop early after this many steps")
    parser.add_argument("--log", default=None, help="CSV of per-step metrics")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    cfg = load_config(args.params, args.profile)
    # The root is the folder of the params.yaml actually used (not a search from the working directory).
    paths = project_paths(args.root if args.root else (Path(args.params).resolve().parent if args.params else None))
    spec = LMSpec.from_config(cfg.model, vocab_size=cfg.tokenizer.vocab_size)
    trainer = Trainer(spec, cfg.train, paths.tokens("train"), paths.model(args.run), paths.checkpoints(args.run),
                      val_dir=paths.tokens("validation"), log_path=args.log, run_config=cfg,
                      live_dir=paths.live("foundation") / args.run)
    result = trainer.fit(until_step=args.until_step)
    if trainer.accelerator.is_main_process:
        loss = result.rows[-1]["loss"] if result.rows else float("nan")
        if result.completed:
            print(f"trained {result.step} steps; final loss {loss:.4f}; weights in {result.final_dir}")
        else:
            print(f"stopped after step {result.step} of {cfg.train.max_steps}; last logged loss {loss:.4f}; "
                  f"resumable checkpoint in {trainer.ckpt_dir}")


if __name__ == "__main__":
    main()
