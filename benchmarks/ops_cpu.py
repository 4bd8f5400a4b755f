"""CPU benchmark of the linear ops: chunked vs naive recurrence, forward + backward.

    PYTHONPATH=src python benchmarks/ops_cpu.py [--lengths 512 2048] [--repeats 3] [--threads N]

Prints one JSON object: per op and T the median fwd+bwd seconds of each path and the speedup
(B=1, H=4, K=V=64, chunk 64, float32). Target: chunked >= 5x faster than naive at T=2048.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from lmrepro.ops import (
    chunked_gated_delta_rule,
    chunked_lightning_attention,
    chunked_mamba2_ssd,
    lightning_decay_rates,
    naive_gated_delta_rule,
    naive_lightning_attention,
    naive_mamba2_ssd,
)

B, H, D = 1, 4, 64


def inputs(op: str, t: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    if op == "lightning_attention":
        return dict(q=r(B, t, H, D), k=r(B, t, H, D), v=r(B, t, H, D), decay=lightning_decay_rates(H, 0, 4))
    if op == "mamba2_ssd":
        return dict(x=r(B, t, H, D), dt=F.softplus(r(B, t, H)), A=-torch.rand(H, generator=gen),
                    B=r(B, t, 1, D), C=r(B, t, 1, D), D=r(H))
    return dict(q=r(B, t, H, D), k=F.normalize(r(B, t, H, D), dim=-1), v=r(B, t, H, D),
                g=F.logsigmoid(r(B, t, H) + 3), beta=torch.sigmoid(r(B, t, H)))


PATHS = {
    "lightning_attention": (naive_lightning_attention, chunked_lightning_attention),
    "mamba2_ssd": (naive_mamba2_ssd, chunked_mamba2_ssd),
    "gated_delta_rule": (naive_gated_delta_rule, chunked_gated_delta_rule),
}


def fwd_bwd_seconds(fn, args: dict, repeats: int, **kw) -> float:
    times = []
    for i in range(repeats + 1):  # first run is a warm-up
        leaves = {k: v.clone().requires_grad_(k != "decay") for k, v in args.items()}
        t0 = time.perf_counter()
        o, _ = fn(**leaves, **kw)
        o.sum().backward()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = {
        "config": {"B": B, "H": H, "K": D, "V": D, "chunk_size": 64, "dtype": "float32",
                   "threads": torch.get_num_threads(), "torch": torch.__version__,
                   "machine": platform.processor() or platform.machine(), "repeats": a.repeats},
        "results": [],
    }
    for op, (naive, chunked) in PATHS.items():
        for t in a.lengths:
            args = inputs(op, t)
            tn = fwd_bwd_seconds(naive, args, a.repeats)
            tc = fwd_bwd_seconds(chunked, args, a.repeats, chunk_size=64)
            out["results"].append({"op": op, "T": t, "naive_fwd_bwd_s": round(tn, 4),
                                   "chunked_fwd_bwd_s": round(tc, 4), "speedup": round(tn / tc, 1)})
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
