"""The Mu2 model: ``Mu2Config`` and ``Mu2ForConditionalGeneration`` (ViT3D → μ²Tokenizer → causal LM)."""

from transformers import AutoConfig

from engine.model.config import Mu2Config
from engine.model.modeling import Mu2ForConditionalGeneration, Mu2Model

# Registered so that transformers' Auto* classes (e.g. AutoTokenizer reading config.json) know model_type
# "mu2" without any remote code.
AutoConfig.register("mu2", Mu2Config, exist_ok=True)

__all__ = ["Mu2Config", "Mu2ForConditionalGeneration", "Mu2Model"]
