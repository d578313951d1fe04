"""The Mu2 model: ``Mu2Config`` and ``Mu2ForConditionalGeneration`` (ViT3D → μ²Tokenizer → causal LM)."""

from engine.model.config import Mu2Config
from engine.model.modeling import Mu2ForConditionalGeneration, Mu2Model

__all__ = ["Mu2Config", "Mu2ForConditionalGeneration", "Mu2Model"]
