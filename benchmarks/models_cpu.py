"""Training throughput (forward + backward + AdamW step) of each architecture at laptop size on CPU,
and our full-attention model side by side with transformers' LlamaForCausalLM of the same configuration.

Prints one JSON object. Usage: python benchmarks/models_cpu.py [--steps 5] [--seq-len 256] [--batch 16]
"""

from __future__ import annotations

import argparse
import json

import torch

from lmrepro.bench import tokens_per_second
from lmrepro.config import load_config
from lmrepro.config.layers import hybrid_pattern
from lmrepro.models import DecoderLM, LMSpec
from lmrepro.models.hybrid import layers_from_pattern


def llama_twin(spec: LMSpec):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
                      intermediate_size=spec.intermediate_size,
                      num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                      num_key_value_heads=spec.num_kv_heads, max_position_embeddings=spec.max_seq_len,
                      rms_norm_eps=spec.norm_eps, rope_theta=spec.rope_theta, tie_word_embeddings=False,
                      attention_bias=False, mlp_bias=False)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    args = parser.parse_args()
    cfg = load_config(profile="laptop")
    seq_len = args.seq_len or cfg.train.seq_len
    batch = args.batch or cfg.train.micro_batch_size
    base = LMSpec.from_config(cfg.model, cfg.tokenizer.vocab_size)
    window = max(1, seq_len // 8)
    archs = {"full": "full", f"swa-{window}": f"swa-{window}", "lightning": "lightning", "mamba2": "mamba2",
             "gdn": "gdn"}
    result = {"seq_len": seq_len, "batch": batch, "threads": torch.get_num_threads(), "architectures": {}}
    for name, mixer in archs.items():
        every = None if mixer == "full" else 4
        layers = layers_from_pattern(hybrid_pattern(base.num_layers, mixer, every))
        torch.manual_seed(0)
        model = DecoderLM(LMSpec(**{**base.__dict__, "layers": layers}))
        result["architectures"][name] = {
            "parameters": model.num_parameters(),
            "tokens_per_s": round(tokens_per_second(model, base.vocab_size, batch, seq_len, args.steps), 1),
        }
    torch.manual_seed(0)
    ours = tokens_per_second(DecoderLM(base), base.vocab_size, batch, seq_len, args.steps)
    theirs = tokens_per_second(llama_twin(base), base.vocab_size, batch, seq_len, args.steps, hf=True)
    result["full_vs_llama"] = {"lmrepro_tokens_per_s": round(ours, 1), "llama_tokens_per_s": round(theirs, 1),
                               "ratio": round(ours / theirs, 3)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
