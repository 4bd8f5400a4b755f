"""Paper-profile inputs: any HF causal LM (Llama-3 class) and an HF SFT dataset (Tulu 3 / OpenThoughts style).

The batches have the layout of :func:`lmrepro.data.reasoning.encode_sft` (input_ids, labels with -100
on prompt and padding, lengths), so :func:`lmrepro.lora.finetune.finetune` trains an HF model with
exactly the loop used for our own models. Both loaders work offline on local folders and files,
which is how they are tested (a tiny Llama saved to disk, a JSONL dataset).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..data.corpus import DataError
from ..data.reasoning import pack_sft
from .finetune import encode_prompt, tokenizer_eos

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOO_LONG = ("skip", "truncate", "error")


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be a torch.dtype, 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_causal_lm(name_or_path: str, dtype: str | torch.dtype = "float32", device: str | None = None,
                   revision: str | None = None, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) from a Hub id or a local folder via ``AutoModelForCausalLM`` / ``AutoTokenizer``.

    Our own ``lmrepro`` model type is registered first, so folders written by
    ``LMReproForCausalLM.save_pretrained`` load too. A tokenizer without a pad token gets EOS as pad
    (padding is masked out of the labels anyway). The model is returned in train mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..models import hf as _register  # noqa: F401  (registers model_type "lmrepro")

    torch_dtype = _resolve_dtype(dtype)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer of {name_or_path!r} has no eos token; SFT targets could not end")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype, revision=revision,
                                                 trust_remote_code=trust_remote_code)
    if device is not None:
        model = model.to(device)
    model.train()
    return model, tokenizer


def _split_messages(messages: Any, tokenizer) -> tuple[str, str] | None:
    """(prompt text, response text) of a chat: the response is the last assistant turn."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m and "content" in m
                                                 for m in messages):
        raise DataError("messages must be a list of {'role', 'content'} dicts")
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or last == 0:
        return None
    context = messages[:last]
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
    else:  # no template (base models): a plain, documented transcript format
        prompt = "".join(f"{m['role']}: {m['content']}\n" for m in context) + "assistant:"
    response = messages[last]["content"]
    return prompt, (response if getattr(tokenizer, "chat_template", None) else " " + response)


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    # A chat template already writes the special tokens (BOS, headers) into the text.
    if getattr(tokenizer, "chat_template", None):
        return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return encode_prompt(tokenizer, prompt)


def _check_fields(prompt_field, response_field, messages_field) -> None:
    pair = prompt_field is not None and response_field is not None
    if pair == (messages_field is not None) or (not pair and (prompt_field or response_field)):
        raise ValueError("give either prompt_field and response_field, or messages_field (not both); got "
                         f"prompt_field={prompt_field!r}, response_field={response_field!r}, "
                         f"messages_field={messages_field!r}")


def hf_sft_dataset(path: str, tokenizer, max_len: int, name: str | None = None, split: str = "train",
                   prompt_field: str | None = None, response_field: str | None = None,
                   messages_field: str | None = None, data_files: Any = None,
                   max_examples: int | None = None, too_long: str = "skip",
                   revision: str | None = None) -> dict[str, torch.Tensor]:
    """SFT batch tensors from an HF dataset (streamed: only the rows used are read).

    Either ``prompt_field`` + ``response_field`` (texts, concatenated as they are) or
    ``messages_field`` (a chat; the last assistant turn is the response, the turns before it the
    prompt, rendered with the tokenizer's chat template when it has one). The prompt gets the
    tokenizer's own special tokens (e.g. BOS), the response EOS. Examples longer than ``max_len``:
    ``too_long`` = "skip" (default), "truncate" (cut the response) or "error". At most
    ``max_examples`` examples are kept. Returns input_ids [N, T], labels [N, T] (-100 on prompt and
    padding), lengths [N], as :func:`lmrepro.data.reasoning.encode_sft`.
    """
    import datasets  # lazy: slow to import, paper profile only

    _check_fields(prompt_field, response_field, messages_field)
    if too_long not in TOO_LONG:
        raise ValueError(f"too_long must be one of {list(TOO_LONG)}, got {too_long!r}")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
        raise ValueError(f"max_len must be an integer >= 2, got {max_len!r}")
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int)
                                     or max_examples < 1):
        raise ValueError(f"max_examples must be a positive integer or None, got {max_examples!r}")
    eos = tokenizer_eos(tokenizer)
    ds = datasets.load_dataset(path, name, split=split, data_files=data_files, streaming=True, revision=revision)
    needed = [messages_field] if messages_field else [prompt_field, response_field]
    pairs: list[tuple[list[int], list[int]]] = []
    skipped = 0
    for index, row in enumerate(ds):
        missing = [f for f in needed if f not in row]
        if missing:
            raise DataError(f"dataset {path!r} has no column {missing[0]!r}; available columns: {sorted(row)}")
        texts = _split_messages(row[messages_field], tokenizer) if messages_field else (row[prompt_field],
                                                                                          row[response_field])
        if texts is None or not all(isinstance(t, str) for t in texts) or not texts[1]:
            skipped += 1  # no assistant turn, or no response text: nothing to supervise
            continue
        prompt = _prompt_ids(tokenizer, texts[0])
        response = list(tokenizer(texts[1], add_special_tokens=False)["input_ids"]) + [eos]
        if len(prompt) + len(response) > max_len:
            if too_long == "error":
                raise DataError(f"row {index} of {path!r} has {len(prompt)} prompt + {len(response)} response "
                                f"tokens > max_len={max_len}; raise max_len or use too_long='skip'/'truncate'")
            if too_long == "skip" or len(prompt) >= max_len - 1:
                skipped += 1
                continue
            response = response[: max_len - len(prompt)]
        pairs.append((prompt, response))
        if max_examples is not None and len(pairs) == max_examples:
            break
    if skipped:
        log.info("hf_sft_dataset(%s): skipped %d rows (too long or without a response)", path, skipped)
    if not pairs:
        raise DataError(f"dataset {path!r} split {split!r} gave no usable example ({skipped} skipped); "
                        "check the field names and max_len")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return pack_sft(pairs, pad, max_len)
