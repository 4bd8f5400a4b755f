"""Both cores: independent training runs one after another (one or two torch threads) against the same runs in
two worker processes of one thread each (lmrepro.pool) — the measurement behind running a stage's independent
runs in workers on CPU. ``speedup_vs_*``: steady-state training tokens/s of both workers together over the
serial rate; the wall times also count each worker's start-up (~3 s). Shapes: the laptop profile's largest
hybrid-attention size, and its LoRA-α base model (the baseline) at its pretraining shape and at the LoRA domain
task's (sequences of 128).

Prints one JSON object. Usage: python benchmarks/pool_cpu.py [--runs 4] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from lmrepro.bench import tokens_per_second
from lmrepro.config import load_config
from lmrepro.models import DecoderLM, LMSpec
from lmrepro.papers.hybrid_attention.runs import arch_spec
from lmrepro.pool import run_jobs


def one_run(spec: LMSpec, batch: int, seq_len: int, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    return tokens_per_second(DecoderLM(spec), spec.vocab_size, batch, seq_len, steps)


def compare(spec: LMSpec, batch: int, seq_len: int, runs: int, steps: int) -> dict:
    out = {"parameters": DecoderLM(spec).num_parameters(), "batch": batch, "seq_len": seq_len, "runs": runs,
           "steps": steps}
    rates = {}
    for name, workers, threads in (("serial_1_thread", 1, 1), ("serial_2_threads", 1, 2),
                                   ("workers_2x1_thread", 2, 1)):
        start = time.perf_counter()
        per_run = run_jobs(one_run, list(range(runs)), (spec, batch, seq_len, steps), workers=workers,
                           threads=threads)
        out[f"{name}_wall_s"] = round(time.perf_counter() - start, 2)  # with worker start-up (~3 s each)
        # Steady state: the runs' median-step rates; in workers `workers` runs go on at once.
        rates[name] = workers * sum(per_run) / len(per_run)
        out[f"{name}_tokens_per_s"] = round(rates[name], 1)
    out["speedup_vs_2_threads"] = round(rates["workers_2x1_thread"] / rates["serial_2_threads"], 3)
    out["speedup_vs_1_thread"] = round(rates["workers_2x1_thread"] / rates["serial_1_thread"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    cfg = load_config(profile="laptop")
    h = cfg.hybrid_attention
    largest = max(h.sizes, key=lambda s: h.sizes[s].hidden_size)
    baseline = LMSpec.from_config(cfg.model, cfg.tokenizer.vocab_size)
    print(json.dumps({
        "cores": len(os.sched_getaffinity(0)),
        "hybrid_attention_largest": compare(arch_spec(cfg, "full", largest), h.batch_size, h.seq_len,
                                            args.runs, args.steps),
        "baseline_model": compare(baseline, cfg.train.micro_batch_size, cfg.train.seq_len, args.runs, args.steps),
        "baseline_model_lora_shape": compare(baseline, cfg.lora_alpha.train.batch_size,
                                             cfg.lora_alpha.tasks.domain.seq_len, args.runs, args.steps),
    }, indent=2))


if __name__ == "__main__":
    main()
