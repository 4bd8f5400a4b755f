"""Fine-tuning data as tensors, for a project (``tokenizers``) or an HF tokenizer.

Two shapes, both in the label convention of :mod:`lmrepro.lora.finetune` (``labels`` aligned with
``input_ids``, -100 where a token is not supervised):

* language modeling: :func:`windows_from_texts` tiles a stream of documents into [N, seq_len + 1] windows and
  :func:`lm_tensors` supervises every token of them;
* supervised fine-tuning: :func:`encode_examples` encodes (prompt, target) examples with the loss on the
  target and EOS only (:func:`lmrepro.data.reasoning.pack_sft`).

:func:`interleaved_halves` cuts a validation split in two halves that both sample all of it. Nothing here
reads a params section.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .reasoning import Example, pack_sft

# lmrepro.lora.finetune (encode_prompt, tokenizer_eos) is imported inside the functions: it imports this
# package's reasoning module and the training loop, which the data layer must not load at import.


def _encode_text(tokenizer, text: str) -> list[int]:
    if hasattr(tokenizer, "eos_token_id"):  # transformers tokenizer
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return tokenizer.encode(text, add_special_tokens=False).ids


def _pad_id(tokenizer) -> int:
    if hasattr(tokenizer, "eos_token_id"):
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    from .reasoning import pad_id

    return pad_id(tokenizer)


def windows_from_texts(tokenizer, texts, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """[N, seq_len + 1] windows tiling the stream of documents, each followed by EOS (as the pretraining
    shards and :func:`lmrepro.data.domains.domain_windows` do), for a project or an HF tokenizer."""
    from ..lora.finetune import tokenizer_eos

    eos, stream = tokenizer_eos(tokenizer), []
    for text in texts:
        stream += _encode_text(tokenizer, text) + [eos]
        if max_windows is not None and len(stream) > max_windows * seq_len:
            break
    n = (len(stream) - 1) // seq_len
    n = n if max_windows is None else min(n, max_windows)
    if n < 1:
        raise ValueError(f"{len(stream)} tokens give no window of {seq_len + 1}; "
                         "use more documents or a shorter seq_len")
    return torch.tensor(stream[: n * seq_len + 1], dtype=torch.long).unfold(0, seq_len + 1, seq_len).contiguous()


def encode_examples(examples: Sequence[Example], tokenizer, max_len: int) -> dict[str, torch.Tensor]:
    """SFT tensors (input_ids, labels, lengths; see :func:`lmrepro.data.reasoning.pack_sft`) for a project or an HF
    tokenizer: the prompt as :func:`~lmrepro.lora.finetune.encode_prompt` encodes it for generation, then the
    target and EOS."""
    from ..lora.finetune import encode_prompt, tokenizer_eos

    eos = tokenizer_eos(tokenizer)
    pairs = [(encode_prompt(tokenizer, e.prompt), _encode_text(tokenizer, e.target) + [eos]) for e in examples]
    return pack_sft(pairs, _pad_id(tokenizer), max_len)


def interleaved_halves(data: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Interleaved halves (even rows: select, odd rows: report): both sample the whole validation split."""
    return {k: v[0::2] for k, v in data.items()}, {k: v[1::2] for k, v in data.items()}


def lm_tensors(windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Language-modeling tensors of windows [N, T + 1]: every token after the first is supervised."""
    return {"input_ids": windows, "labels": windows.clone()}
