"""Shapes of the real models the workload profiles imitate, with where each shape comes from.

Only shapes: weights are random (never zeros), since speed does not depend on what a model learnt.
Data, not code: add a model here and the workload checks and requirements accept its name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LlmShape:
    name: str
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    layers: int
    vocab: int
    tied_embeddings: bool
    source: str

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def layer_params(self) -> int:
        """Weights of one decoder layer: q, k, v, o projections and the SwiGLU MLP (norms are negligible)."""
        kv = self.kv_heads * self.head_dim
        return self.hidden * (2 * self.hidden + 2 * kv) + 3 * self.hidden * self.intermediate

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * self.layer_params + embeddings


# Llama-family decoders (RMSNorm, grouped-query attention, SwiGLU MLP), from each model's published
# config.json on Hugging Face.
LLMS: dict[str, LlmShape] = {m.name: m for m in (
    LlmShape("qwen2.5-0.5b", 896, 14, 2, 4864, 24, 151936, True, "Qwen/Qwen2.5-0.5B config.json"),
    LlmShape("llama-3.2-1b", 2048, 32, 8, 8192, 16, 128256, True, "meta-llama/Llama-3.2-1B config.json"),
    LlmShape("llama-3-8b", 4096, 32, 8, 14336, 32, 128256, False, "meta-llama/Meta-Llama-3-8B config.json"),
    LlmShape("llama-2-13b", 5120, 40, 40, 13824, 40, 32000, False, "meta-llama/Llama-2-13b-hf config.json"),
    LlmShape("llama-3-70b", 8192, 64, 8, 28672, 80, 128256, False, "meta-llama/Meta-Llama-3-70B config.json"),
)}


@dataclass(frozen=True)
class CnnShape:
    name: str
    block: str  # "basic" (two 3x3 convolutions) or "bottleneck" (1x1, 3x3, 1x1)
    stages: tuple[int, int, int, int]  # blocks per stage
    gmacs: float  # multiply-accumulates of one forward pass of one 224x224 image, in billions
    source: str


# He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, table 1 (layer counts and the
# forward cost of 1.8 and 3.8 billion multiply-adds; torchvision measures 4.1 for its ResNet-50).
CNNS: dict[str, CnnShape] = {m.name: m for m in (
    CnnShape("resnet-18", "basic", (2, 2, 2, 2), 1.8, "He et al. 2016, table 1"),
    CnnShape("resnet-50", "bottleneck", (3, 4, 6, 3), 4.1, "He et al. 2016, table 1; torchvision ResNet-50"),
)}

IMAGE_SIZE = 224
CLASSES = 1000
