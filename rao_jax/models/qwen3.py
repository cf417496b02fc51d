"""Qwen3 and Qwen3-MoE decoders in flax.nnx, configured from a Hugging Face ``config.json``.

``model(tokens)`` is the training forward: float32 logits for every position. ``model.forward``
also returns the final hidden states (for chunked log-prob computation that never materialises a
``[tokens, vocab]`` tensor) and the MoE load-balancing loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from rao_jax.models.attention import Attention, attention_mask
from rao_jax.models.attention_kernels import ATTN_IMPLS, training_attention
from rao_jax.models.config import ModelConfig
from rao_jax.models.layers import DType, RMSNorm, SwiGLU, init_param
from rao_jax.models.moe import MoEBlock, RouterStats, load_balancing_loss


@dataclasses.dataclass(frozen=True)
class ForwardOutput:
    hidden: Float[Array, "b t d"]     # after the final norm, in the compute dtype
    aux_loss: Float[Array, ""]        # MoE load-balancing loss (0 for dense models), not yet scaled


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, param_dtype: DType, dtype: DType,
                 rngs: nnx.Rngs, attn_impl: str = "xla"):
        self.attn_impl = attn_impl
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.self_attn = Attention(cfg, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps,
                                                param_dtype=param_dtype)
        self.is_moe = cfg.layer_is_moe(layer)
        if self.is_moe:
            self.mlp = MoEBlock(cfg, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        else:
            self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, param_dtype=param_dtype,
                              dtype=dtype, rngs=rngs)
        self.num_experts = cfg.num_experts

    def __call__(self, x, positions, mask, token_mask,
                 segment_ids=None) -> tuple[Array, RouterStats | None]:
        """``mask``: the dense mask (``attn_impl="xla"``); ``segment_ids``: for the kernels."""
        dtype, impl = self.self_attn.dtype, self.attn_impl
        return self.block(x, positions, token_mask, lambda q, k, v: training_attention(
            q, k, v, impl=impl, dtype=dtype, mask=mask, segment_ids=segment_ids))

    def block(self, x: Float[Array, "b t d"], positions: Int[Array, "b t"], token_mask: Array,
              attend: Callable[[Array, Array, Array], Array],
              keep: Int[Array, " n"] | None = None) -> tuple[Array, RouterStats | None]:
        """The layer with attention supplied by ``attend(q, k, v) -> [b, t, hq, hd]``.

        The training forward attends over the row itself; the sampler attends over its paged cache
        (and writes k / v there inside ``attend``). Everything else is shared.

        ``keep``: only these token indices go on past attention (``attend`` then returns
        ``[b, n, hq, hd]`` for them, from every token's q / k / v) and the layer returns ``[b, n, d]``:
        the sampler's last layer, where only each row's last token needs a hidden state.
        """
        q, k, v = self.self_attn.project_qkv(self.input_layernorm(x), positions)
        if keep is not None:
            x, token_mask = x[:, keep], token_mask[:, keep]
        x = x + self.self_attn.output(attend(q, k, v))
        h = self.post_attention_layernorm(x)
        if self.is_moe:
            y, stats = self.mlp(h, token_mask)
            return x + y, stats
        return x + self.mlp(h), None


class Qwen3(nnx.Module):
    """A Qwen3 (dense) or Qwen3-MoE causal language model.

    Args:
        cfg: shape and numerics, usually ``ModelConfig.from_json_file(".../config.json")``.
        param_dtype: storage dtype of the weights (float32 master weights for training).
        dtype: compute dtype of matmuls (bfloat16 on TPU, float32 in tests). Norms, softmax,
            RoPE and logits are always float32.
        remat: recompute each decoder layer's activations in the backward pass.
        attn_impl: training attention, ``"xla"`` (pure jnp, every backend), ``"splash"`` (Pallas
            TPU kernel) or ``"cudnn"`` (cuDNN flash attention on GPU); see ``attention_kernels``.
            The sampler's paged attention has its own switch.
    """

    def __init__(self, cfg: ModelConfig, *, param_dtype: DType = jnp.float32,
                 dtype: DType = jnp.float32, remat: bool = False, rngs: nnx.Rngs,
                 attn_impl: str = "xla"):
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        self.cfg = cfg
        self.attn_impl = attn_impl
        self.dtype = dtype
        self.remat = remat
        self.embed = init_param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"),
                                param_dtype)
        self.layers = nnx.List([
            DecoderLayer(cfg, i, param_dtype=param_dtype, dtype=dtype, rngs=rngs, attn_impl=attn_impl)
            for i in range(cfg.num_hidden_layers)
        ])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.lm_head = None if cfg.tie_word_embeddings else init_param(
            rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), param_dtype)

    def forward(self, tokens: Int[Array, "b t"], positions: Int[Array, "b t"] | None = None,
                segment_ids: Int[Array, "b t"] | None = None,
                token_mask: Array | None = None) -> ForwardOutput:
        """Hidden states after the final norm, and the MoE load-balancing loss.

        Args:
            tokens: token ids.
            positions: RoPE positions; by default the index within each segment.
            segment_ids: sequences packed into one row carry different ids and never attend to
                each other; by default the whole row is one sequence.
            token_mask: 1 for real tokens, 0 for padding; only weighs the MoE balancing loss.
        """
        kernel_segments = segment_ids  # None (one sequence per row) lets the kernels skip segment masking
        if segment_ids is None:
            segment_ids = jnp.zeros_like(tokens)
        if positions is None:
            positions = positions_from_segments(segment_ids)
        if token_mask is None:
            token_mask = jnp.ones(tokens.shape, jnp.float32)
        mask = attention_mask(segment_ids) if self.attn_impl == "xla" else None
        x = self.embed_tokens(tokens)
        stats = None
        for layer in self.layers:
            if self.remat:
                x, layer_stats = _remat_layer(layer, x, positions, mask, token_mask, kernel_segments)
            else:
                x, layer_stats = layer(x, positions, mask, token_mask, kernel_segments)
            if layer_stats is not None:
                stats = layer_stats if stats is None else stats + layer_stats
        aux = load_balancing_loss(stats) if stats is not None else jnp.zeros((), jnp.float32)
        return ForwardOutput(hidden=self.norm(x), aux_loss=aux)

    def embed_tokens(self, tokens: Int[Array, "*shape"]) -> Float[Array, "*shape d"]:
        return jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype)

    def logits(self, hidden: Float[Array, "... d"]) -> Float[Array, "... v"]:
        """Float32 logits of hidden states (the tied embedding or the separate lm_head)."""
        if self.lm_head is None:
            w = self.embed[...].astype(self.dtype)
            return jnp.einsum("...d,vd->...v", hidden.astype(self.dtype), w,
                              preferred_element_type=jnp.float32)
        return jnp.einsum("...d,dv->...v", hidden.astype(self.dtype),
                          self.lm_head[...].astype(self.dtype), preferred_element_type=jnp.float32)

    def __call__(self, tokens: Int[Array, "b t"], positions: Int[Array, "b t"] | None = None,
                 segment_ids: Int[Array, "b t"] | None = None) -> Float[Array, "b t v"]:
        return self.logits(self.forward(tokens, positions, segment_ids).hidden)


@nnx.remat
def _remat_layer(layer: DecoderLayer, x, positions, mask, token_mask, segment_ids):
    return layer(x, positions, mask, token_mask, segment_ids)


def positions_from_segments(segment_ids: Int[Array, "b t"]) -> Int[Array, "b t"]:
    """Index of each token within its run of equal segment ids (positions restart per segment)."""
    t = segment_ids.shape[1]
    idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), segment_ids.shape)
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], dtype=bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
        axis=1)
    start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return idx - start_idx
