"""A small real model's transformer block, served as an inference server runs it: the products the
resident job (resident.py, whose docstring is the contract) asks the device for, and what each is to
the host oracle.

Shapes: Qwen2.5-0.5B, one decoder block of its 24 (config.json of Qwen/Qwen2.5-0.5B on the Hugging
Face hub: hidden_size 896, intermediate_size 4864, num_attention_heads 14, num_key_value_heads 2,
so head_dim 64; q, k and v projections with bias, o, gate, up and down without; RMSNorm, a SiLU-gated
MLP, softmax in float32). The forward is transformers' eager Qwen2 attention and MLP, less the rotary
embedding (no product): F.linear with and without bias, torch.matmul for the scores Q K^T over a KV
cache whose two heads are repeated for the 14 query heads (repeat_kv), and torch.bmm for the
probabilities times the values. A session is a static batch of sequences, as `generate` serves
them: one prefill of its prompts, then one decode step per token, the cache growing by one each.

The weights are drawn once from the job's seed with a trained model's statistics (operands.py:
N(0, 0.02^2), Qwen2's own initializer_range) and rounded into each served format, so every weight
matrix keeps its shape and values for the job's whole life while each step's activations are new:
hidden states with outlier feature channels for the residual stream, and from there what the block
itself computes (RMSNorm's output, attention's, the gated MLP's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from chipaudit.checks.integrity.gemm import to_host
from chipaudit.checks.integrity.operands import NORM_GAIN_STD, REALISTIC
from chipaudit.oracle.formats import NumberFormat

HIDDEN = 896
INTERMEDIATE = 4864
HEADS = 14
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
RMS_EPS = 1e-6  # Qwen2.5's rms_norm_eps


@dataclass(frozen=True)
class Layer:
    """A linear layer, y = x W^T (+ b): W is (n, k) as nn.Linear stores it."""

    name: str
    k: int
    n: int
    bias: bool

    @property
    def call(self) -> str:
        return "F.linear(x, weight, bias)" if self.bias else "F.linear(x, weight)"


LAYERS: tuple[Layer, ...] = (
    Layer("self_attn.q_proj", HIDDEN, HEADS * HEAD_DIM, True),
    Layer("self_attn.k_proj", HIDDEN, KV_HEADS * HEAD_DIM, True),
    Layer("self_attn.v_proj", HIDDEN, KV_HEADS * HEAD_DIM, True),
    Layer("self_attn.o_proj", HEADS * HEAD_DIM, HIDDEN, False),
    Layer("mlp.gate_proj", HIDDEN, INTERMEDIATE, False),
    Layer("mlp.up_proj", HIDDEN, INTERMEDIATE, False),
    Layer("mlp.down_proj", INTERMEDIATE, HIDDEN, False),
)
LAYER = {layer.name: layer for layer in LAYERS}
SCORES = "self_attn.scores"  # torch.matmul(q, k^T) over the cache
VALUES = "self_attn.values"  # torch.bmm(probabilities, v)
CALLS = {SCORES: "torch.matmul(q, k.transpose(2, 3))", VALUES: "torch.bmm(p, v)",
         **{layer.name: layer.call for layer in LAYERS}}
SOURCE = ("Qwen2.5-0.5B (Hugging Face config.json): hidden 896, intermediate 4864, 14 query heads and 2 "
          "key-value heads of 64; one decoder block")


@dataclass
class Weights:
    """The model's values in float64: per layer W^T (k, n) and its bias, and the two RMSNorm gains."""

    w_t: dict[str, np.ndarray]
    bias: dict[str, np.ndarray]
    gains: tuple[np.ndarray, np.ndarray]

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Weights:
        trained = REALISTIC["trained_weights"].values
        w_t = {layer.name: trained(rng, (layer.k, layer.n), 0) for layer in LAYERS}
        bias = {layer.name: trained(rng, (layer.n,), 0) for layer in LAYERS if layer.bias}
        gains = (1.0 + NORM_GAIN_STD * rng.standard_normal(HIDDEN), 1.0 + NORM_GAIN_STD * rng.standard_normal(HIDDEN))
        return cls(w_t, bias, gains)


@dataclass
class HostLayer:
    """A layer as the oracle sees it: B = [W^T; b] (k (+1), n) in float32, which holds every value of the
    served formats exactly, and B's column norms, fixed for the job's life (oracle.OperandNorms)."""

    b: np.ndarray
    col_norm: np.ndarray


class Replica:
    """The model in one format: its weights on the device and, apart from them, on the host."""

    def __init__(self, weights: Weights, fmt: NumberFormat, device: str):
        self.fmt, self.device = fmt, device
        self.weight: dict[str, torch.Tensor] = {}
        self.bias: dict[str, torch.Tensor] = {}
        self.host: dict[str, HostLayer] = {}
        for layer in LAYERS:
            w_t = fmt.quantize(weights.w_t[layer.name])
            self.weight[layer.name] = self._upload(np.ascontiguousarray(w_t.T))
            rows = [w_t]
            if layer.bias:
                b = fmt.quantize(weights.bias[layer.name])
                self.bias[layer.name] = self._upload(b)
                rows.append(b[None, :])
            host = np.concatenate(rows).astype(np.float32)
            self.host[layer.name] = HostLayer(host, np.sqrt(np.einsum("ij,ij->j", host, host, dtype=np.float64)))
        self.gains = tuple(self._upload(fmt.quantize(g)) for g in weights.gains)

    def _upload(self, values: np.ndarray) -> torch.Tensor:
        return self.fmt.host_buffer(values).to(self.device).to(self.fmt.torch_dtype)

    def upload(self, values: np.ndarray) -> torch.Tensor:
        return self._upload(self.fmt.quantize(values))


@dataclass
class Product:
    """One product the device made, as the oracle takes it: A (batch, m, k), C (batch, m, n) as the device
    held them (float32 holds every served format), and B for the products whose second operand is not a
    fixed weight (attention's, over the cache)."""

    name: str
    a: np.ndarray
    c: np.ndarray
    b: np.ndarray | None = None


def _host(t: torch.Tensor) -> np.ndarray:
    """A copy on the host that nothing the device does later can change."""
    return np.array(to_host(t), dtype=np.float32)


@dataclass
class Session:
    """A static batch of sequences with its KV cache (batch, KV_HEADS, tokens, HEAD_DIM)."""

    batch: int
    prompt: int
    decode_steps: int
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    steps: int = 0

    @property
    def done(self) -> bool:
        return self.steps > self.decode_steps

    @property
    def tokens(self) -> int:
        """The tokens per sequence of the next step: its prompt first, then one at a time."""
        return self.prompt if self.steps == 0 else 1


def _rms_norm(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Qwen2RMSNorm: in float32, back to the model's format, times the gain."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + RMS_EPS)
    return gain * x32.to(x.dtype)


def forward(replica: Replica, session: Session, hidden: torch.Tensor, record: Callable[[Product], None]) -> None:
    """One serving step of the block over `hidden` (batch, tokens, HIDDEN), every product handed to
    `record` with its operands as the device had them. The cache grows by the step's tokens."""

    def linear(name: str, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, replica.weight[name], replica.bias.get(name))
        record(Product(name, _host(x).reshape(1, -1, x.shape[-1]), _host(y).reshape(1, -1, y.shape[-1])))
        return y

    batch, tokens, _ = hidden.shape
    x = _rms_norm(hidden, replica.gains[0])
    q = linear("self_attn.q_proj", x).view(batch, tokens, HEADS, HEAD_DIM).transpose(1, 2)
    k = linear("self_attn.k_proj", x).view(batch, tokens, KV_HEADS, HEAD_DIM).transpose(1, 2)
    v = linear("self_attn.v_proj", x).view(batch, tokens, KV_HEADS, HEAD_DIM).transpose(1, 2)
    session.keys = k if session.keys is None else torch.cat([session.keys, k], dim=2)
    session.values = v if session.values is None else torch.cat([session.values, v], dim=2)
    keys = session.keys.repeat_interleave(HEADS // KV_HEADS, dim=1)  # repeat_kv
    values = session.values.repeat_interleave(HEADS // KV_HEADS, dim=1)
    context = keys.shape[2]
    scores = torch.matmul(q, keys.transpose(2, 3))
    flat = batch * HEADS
    record(Product(SCORES, _host(q).reshape(flat, tokens, HEAD_DIM), _host(scores).reshape(flat, tokens, context),
                   _host(keys.transpose(2, 3)).reshape(flat, HEAD_DIM, context)))
    scores = scores * (1.0 / math.sqrt(HEAD_DIM))
    if tokens > 1:  # causal within the prompt; a decode step's one token sees the whole cache
        seen = torch.arange(context, device=hidden.device)[None, :] <= \
            torch.arange(tokens, device=hidden.device)[:, None] + (context - tokens)
        scores = scores.masked_fill(~seen, float("-inf"))
    p = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype).reshape(flat, tokens, context)
    v_flat = values.reshape(flat, context, HEAD_DIM)
    out = torch.bmm(p, v_flat)
    record(Product(VALUES, _host(p), _host(out), _host(v_flat)))
    attended = out.view(batch, HEADS, tokens, HEAD_DIM).transpose(1, 2).reshape(batch, tokens, HIDDEN)
    hidden = hidden + linear("self_attn.o_proj", attended)
    x = _rms_norm(hidden, replica.gains[1])
    gated = F.silu(linear("mlp.gate_proj", x)) * linear("mlp.up_proj", x)
    linear("mlp.down_proj", gated)
    session.steps += 1

