"""Model configuration read from (and written back to) a Hugging Face ``config.json``.

The checkpoint's own ``config.json`` is the single source of a model's shape: rao_jax keeps no
hard-coded presets for real models. ``ModelConfig`` holds the fields the forward pass needs, in
Hugging Face's names, and remembers the dictionary it came from so that an export changes only what
training changed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from rao_jax.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("qwen3", "qwen3_moe")
_ARCHITECTURES = {"qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a Qwen3 / Qwen3-MoE decoder, in Hugging Face field names."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 40960
    attention_bias: bool = False
    # Mixture of experts (model_type "qwen3_moe" only).
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    router_aux_loss_coef: float = 0.001
    # The dictionary this config was read from; kept so an export preserves fields rao_jax ignores.
    source: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check(self.model_type in SUPPORTED_MODEL_TYPES,
               f"unsupported model_type {self.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim"):
            _check(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        _check(self.head_dim % 2 == 0, f"head_dim must be even for RoPE, got {self.head_dim}")
        _check(self.num_attention_heads % self.num_key_value_heads == 0,
               f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
               f"num_key_value_heads ({self.num_key_value_heads})")
        if self.is_moe:
            _check(self.num_experts > 0, "qwen3_moe needs num_experts > 0")
            _check(0 < self.num_experts_per_tok <= self.num_experts,
                   f"num_experts_per_tok must be in [1, num_experts={self.num_experts}], "
                   f"got {self.num_experts_per_tok}")
            _check(self.moe_intermediate_size > 0, "qwen3_moe needs moe_intermediate_size > 0")
            _check(self.decoder_sparse_step > 0, "decoder_sparse_step must be positive")
        if self.has_dense_mlp_layers:
            _check(self.intermediate_size > 0, "intermediate_size must be positive")

    @property
    def is_moe(self) -> bool:
        return self.model_type == "qwen3_moe"

    def layer_is_moe(self, layer: int) -> bool:
        """Whether decoder layer ``layer`` uses the sparse MoE block (Hugging Face's rule)."""
        return (self.is_moe and layer not in self.mlp_only_layers
                and (layer + 1) % self.decoder_sparse_step == 0)

    @property
    def has_dense_mlp_layers(self) -> bool:
        return any(not self.layer_is_moe(i) for i in range(self.num_hidden_layers))

    @classmethod
    def from_hf_dict(cls, raw: Mapping[str, Any]) -> ModelConfig:
        """Builds a config from a parsed ``config.json``; raises ConfigError naming the bad field."""
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(f"unsupported model_type {model_type!r}; "
                              f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        rope = raw.get("rope_parameters") or {}
        scaling = raw.get("rope_scaling") or {}
        rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
        if rope_type != "default":
            raise ConfigError(f"unsupported rope type {rope_type!r}: only default RoPE is implemented")
        if raw.get("use_sliding_window"):
            raise ConfigError("use_sliding_window=true is not supported")
        if raw.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"unsupported hidden_act {raw['hidden_act']!r}; Qwen3 uses 'silu'")
        rope_theta = rope.get("rope_theta", raw.get("rope_theta", cls.rope_theta))

        def need(name: str) -> Any:
            if name not in raw:
                raise ConfigError(f"config.json lacks the required field {name!r}")
            return raw[name]

        heads = int(need("num_attention_heads"))
        hidden = int(need("hidden_size"))
        fields: dict[str, Any] = dict(
            model_type=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(raw.get("intermediate_size", 0)),
            num_hidden_layers=int(need("num_hidden_layers")),
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", cls.rms_norm_eps)),
            rope_theta=float(rope_theta),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            max_position_embeddings=int(raw.get("max_position_embeddings", cls.max_position_embeddings)),
            attention_bias=bool(raw.get("attention_bias", False)),
            source=dict(raw),
        )
        if model_type == "qwen3_moe":
            num_experts = raw.get("num_experts", raw.get("num_local_experts"))
            if num_experts is None:
                raise ConfigError("qwen3_moe config.json lacks num_experts / num_local_experts")
            fields.update(
                num_experts=int(num_experts),
                num_experts_per_tok=int(need("num_experts_per_tok")),
                moe_intermediate_size=int(need("moe_intermediate_size")),
                norm_topk_prob=bool(raw.get("norm_topk_prob", False)),
                decoder_sparse_step=int(raw.get("decoder_sparse_step", 1)),
                mlp_only_layers=tuple(int(i) for i in raw.get("mlp_only_layers") or ()),
                router_aux_loss_coef=float(raw.get("router_aux_loss_coef", cls.router_aux_loss_coef)),
            )
        return cls(**fields)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> ModelConfig:
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"no config.json at {os.fspath(path)}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read {os.fspath(path)}: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{os.fspath(path)} does not hold a JSON object")
        try:
            return cls.from_hf_dict(raw)
        except ConfigError as e:
            raise ConfigError(f"{os.fspath(path)}: {e}") from None

    def to_hf_dict(self, torch_dtype: str = "bfloat16") -> dict[str, Any]:
        """The ``config.json`` to export: the source dictionary with rao_jax's fields written over it.

        Both the older (``rope_theta``, ``num_experts``, ``torch_dtype``) and newer
        (``rope_parameters``, ``num_local_experts``, ``dtype``) spellings are written, so the folder
        loads under transformers 4.x and 5.x alike.
        """
        out = dict(self.source)
        out.update(
            architectures=[_ARCHITECTURES[self.model_type]],
            model_type=self.model_type,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            hidden_act="silu",
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=self.max_position_embeddings,
            attention_bias=self.attention_bias,
            torch_dtype=torch_dtype,
            dtype=torch_dtype,
        )
        out.pop("rope_scaling", None)
        if self.is_moe:
            out.update(
                num_experts=self.num_experts,
                num_local_experts=self.num_experts,
                num_experts_per_tok=self.num_experts_per_tok,
                moe_intermediate_size=self.moe_intermediate_size,
                norm_topk_prob=self.norm_topk_prob,
                decoder_sparse_step=self.decoder_sparse_step,
                mlp_only_layers=list(self.mlp_only_layers),
                router_aux_loss_coef=self.router_aux_loss_coef,
            )
        return out


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def tiny_config(model_type: str = "qwen3", **overrides: Any) -> ModelConfig:
    """A few-kilobyte model for tests and the CPU demo (never a stand-in for a real checkpoint)."""
    fields: dict[str, Any] = dict(
        model_type=model_type, vocab_size=128, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        rope_theta=10_000.0, max_position_embeddings=2048,
    )
    if model_type == "qwen3_moe":
        fields.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    fields.update(overrides)
    return ModelConfig(**fields)
