"""transformers integration: ``AutoConfig`` / ``AutoModelForCausalLM`` for our decoder.

``LMReproForCausalLM.from_spec(spec)`` wraps a :class:`DecoderLM`; ``save_pretrained`` writes
``config.json`` + ``model.safetensors`` and ``AutoModelForCausalLM.from_pretrained`` reads them back.
Importing this module registers the classes (model_type ``"lmrepro"``).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .lm import DecoderLM
from .spec import LMSpec


class LMReproConfig(PretrainedConfig):
    model_type = "lmrepro"

    def __init__(self, spec: dict | None = None, **kwargs):
        self.spec = dict(spec or {})
        if self.spec:
            kwargs.setdefault("vocab_size", self.spec["vocab_size"])
            kwargs.setdefault("tie_word_embeddings", self.spec.get("tie_embeddings", False))
        super().__init__(**kwargs)

    @classmethod
    def from_spec(cls, spec: LMSpec, **kwargs) -> "LMReproConfig":
        return cls(spec=spec.to_dict(), **kwargs)

    def to_spec(self) -> LMSpec:
        return LMSpec.from_dict(self.spec)


class LMReproForCausalLM(PreTrainedModel):
    """HF wrapper: ``forward(input_ids, labels=None)`` → ``CausalLMOutput`` (labels shifted inside,
    -100 ignored, as in every HF causal LM)."""

    config_class = LMReproConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def __init__(self, config: LMReproConfig):
        super().__init__(config)
        self.model = DecoderLM(config.to_spec())
        if config.to_spec().tie_embeddings:
            self._tied_weights_keys = {"model.lm_head.weight": "model.embed_tokens.weight"}
        self.post_init()

    @classmethod
    def from_spec(cls, spec: LMSpec) -> "LMReproForCausalLM":
        return cls(LMReproConfig.from_spec(spec))

    @classmethod
    def from_model(cls, model: DecoderLM) -> "LMReproForCausalLM":
        wrapped = cls.from_spec(model.spec)
        wrapped.model.load_state_dict(model.state_dict())
        return wrapped

    def _init_weights(self, module: torch.nn.Module) -> None:
        # DecoderLM initialises itself; from_pretrained then overwrites with the saved weights.
        pass

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.model.lm_head

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **_) -> CausalLMOutput:
        logits = self.model(input_ids)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)


AutoConfig.register("lmrepro", LMReproConfig, exist_ok=True)
AutoModelForCausalLM.register(LMReproConfig, LMReproForCausalLM, exist_ok=True)
