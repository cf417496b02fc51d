"""Hugging Face checkpoints <-> rao_jax ``Qwen3`` models, tensor by tensor.

One table (``tensor_map``) names every Hugging Face tensor of a config, the rao_jax parameter it
belongs to and its shape on both sides; loading and saving both walk that table, so they cannot
disagree. Hugging Face linear weights are ``[out, in]``; rao_jax keeps ``[in, ..., out]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rao_jax.agent.protocol import ChatTemplate, qwen3_template, sentencepiece_template
from rao_jax.checkpoint.safetensors_io import SafetensorsError, SafetensorsReader, TensorPlan, write_file
from rao_jax.errors import ConfigError
from rao_jax.models.config import ModelConfig
from rao_jax.models.layers import DType
from rao_jax.models.qwen3 import Qwen3

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 3 * 1024**3
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "tokenizer.model",
                   "chat_template.jinja", "generation_config.json")
# Buffers some older exports carry; they are recomputed, never loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    """A Hugging Face folder that cannot be loaded, or an export that cannot be written."""


@dataclasses.dataclass(frozen=True)
class HFTensor:
    """One Hugging Face tensor and where it lives in the rao_jax parameter state."""

    key: str                          # Hugging Face name
    path: tuple[str | int, ...]       # path in nnx.state(model, nnx.Param)
    hf_shape: tuple[int, ...]
    transposed: bool                  # a 2-D [out, in] linear weight (else: a reshape only)
    expert: int | None = None         # index into a stacked [experts, ...] parameter

    def to_jax(self, value: np.ndarray, jax_shape: tuple[int, ...]) -> np.ndarray:
        """The Hugging Face tensor in rao_jax layout (for experts: one slice of the stack)."""
        shape = jax_shape[1:] if self.expert is not None else jax_shape
        return (value.T if self.transposed else value).reshape(shape)

    def from_jax(self, value: np.ndarray) -> np.ndarray:
        if self.transposed:
            return np.ascontiguousarray(value.reshape(self.hf_shape[::-1]).T)
        return value.reshape(self.hf_shape)


def tensor_map(cfg: ModelConfig) -> list[HFTensor]:
    """Every Hugging Face tensor of ``cfg``, in the order Hugging Face lists them."""
    d, v = cfg.hidden_size, cfg.vocab_size
    hq, hk, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    out = [HFTensor("model.embed_tokens.weight", ("embed",), (v, d), False)]
    for i in range(cfg.num_hidden_layers):
        hf, jx = f"model.layers.{i}.", ("layers", i)
        attn, ja = hf + "self_attn.", jx + ("self_attn",)
        out += [
            HFTensor(attn + "q_proj.weight", ja + ("q_proj",), (hq * hd, d), True),
            HFTensor(attn + "k_proj.weight", ja + ("k_proj",), (hk * hd, d), True),
            HFTensor(attn + "v_proj.weight", ja + ("v_proj",), (hk * hd, d), True),
            HFTensor(attn + "o_proj.weight", ja + ("o_proj",), (d, hq * hd), True),
        ]
        if cfg.attention_bias:
            out += [
                HFTensor(attn + "q_proj.bias", ja + ("q_bias",), (hq * hd,), False),
                HFTensor(attn + "k_proj.bias", ja + ("k_bias",), (hk * hd,), False),
                HFTensor(attn + "v_proj.bias", ja + ("v_bias",), (hk * hd,), False),
                HFTensor(attn + "o_proj.bias", ja + ("o_bias",), (d,), False),
            ]
        out += [
            HFTensor(attn + "q_norm.weight", ja + ("q_norm", "weight"), (hd,), False),
            HFTensor(attn + "k_norm.weight", ja + ("k_norm", "weight"), (hd,), False),
        ]
        mlp, jm = hf + "mlp.", jx + ("mlp",)
        if cfg.layer_is_moe(i):
            f = cfg.moe_intermediate_size
            out.append(HFTensor(mlp + "gate.weight", jm + ("router",), (cfg.num_experts, d), True))
            for e in range(cfg.num_experts):
                ex = f"{mlp}experts.{e}."
                out += [
                    HFTensor(ex + "gate_proj.weight", jm + ("gate",), (f, d), True, e),
                    HFTensor(ex + "up_proj.weight", jm + ("up",), (f, d), True, e),
                    HFTensor(ex + "down_proj.weight", jm + ("down",), (d, f), True, e),
                ]
        else:
            f = cfg.intermediate_size
            out += [
                HFTensor(mlp + "gate_proj.weight", jm + ("gate",), (f, d), True),
                HFTensor(mlp + "up_proj.weight", jm + ("up",), (f, d), True),
                HFTensor(mlp + "down_proj.weight", jm + ("down",), (d, f), True),
            ]
        out += [
            HFTensor(hf + "input_layernorm.weight", jx + ("input_layernorm", "weight"), (d,), False),
            HFTensor(hf + "post_attention_layernorm.weight",
                     jx + ("post_attention_layernorm", "weight"), (d,), False),
        ]
    out.append(HFTensor("model.norm.weight", ("norm", "weight"), (d,), False))
    if not cfg.tie_word_embeddings:
        out.append(HFTensor("lm_head.weight", ("lm_head",), (v, d), True))
    return out


# ----------------------------------------------------------------------------------------------
# Loading


def load_pretrained(path: str | os.PathLike, *, dtype: DType = jnp.float32,
                    param_dtype: DType | None = None, remat: bool = False,
                    attn_impl: str = "xla", shardings=None) -> tuple[Qwen3, ModelConfig]:
    """Loads a local Hugging Face Qwen3 / Qwen3-MoE folder into a rao_jax model.

    Args:
        path: a folder with ``config.json`` and ``model.safetensors`` (or shards listed in
            ``model.safetensors.index.json``).
        dtype: compute dtype of the model.
        param_dtype: storage dtype of the weights; defaults to ``dtype``.
        remat: rematerialise decoder layers in the backward pass.
        attn_impl: the model's training attention (``Qwen3``'s ``attn_impl``).
        shardings: where each parameter goes (an ``nnx.Param`` state of ``NamedSharding``s, e.g.
            ``rao_jax.layout.LearnerInit.param_shardings``): every tensor is then placed shard by
            shard, so no device ever holds a whole tensor it only keeps a slice of, and a
            multi-host run loads the same way on every host. None: the default device.

    Raises:
        ConfigError: no or unusable ``config.json``.
        CheckpointError: a missing, unexpected, mis-shaped or unreadable tensor or file (named).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a directory")
    cfg = ModelConfig.from_json_file(folder / "config.json")
    param_dtype = param_dtype or dtype
    abstract = nnx.eval_shape(lambda: Qwen3(cfg, param_dtype=param_dtype, dtype=dtype, remat=remat,
                                            rngs=nnx.Rngs(0), attn_impl=attn_impl))
    graphdef, state = nnx.split(abstract)
    params = dict(nnx.to_flat_state(state))
    placement = dict(nnx.to_flat_state(shardings)) if shardings is not None else {}

    def place(path_, value: np.ndarray) -> jax.Array:
        sharding = placement.get(path_)
        if sharding is None:
            return jnp.asarray(value, dtype=param_dtype)
        return jax.make_array_from_callback(value.shape, sharding,
                                            lambda index: np.asarray(value[index]).astype(param_dtype))

    files = _weight_files(folder)
    expected = tensor_map(cfg)
    _check_keys(folder, files, expected, cfg)

    readers: dict[str, SafetensorsReader] = {}
    try:
        stacks: dict[tuple, np.ndarray] = {}
        loaded: dict[tuple, jax.Array] = {}
        for spec in expected:
            file = files[spec.key]
            reader = readers.get(file)
            if reader is None:
                reader = readers[file] = _open(folder / file)
            info = reader.tensors[spec.key]
            if info.shape != spec.hf_shape:
                raise CheckpointError(f"tensor {spec.key!r} in {folder / file} has shape "
                                      f"{info.shape}, but config.json implies {spec.hf_shape}")
            jax_shape = tuple(params[spec.path].shape)
            value = spec.to_jax(reader.read(spec.key), jax_shape)
            if spec.expert is None:
                loaded[spec.path] = place(spec.path, value)
                continue
            stack = stacks.get(spec.path)
            if stack is None:
                stack = stacks[spec.path] = np.empty(jax_shape, value.dtype)
            stack[spec.expert] = value
            if spec.expert == jax_shape[0] - 1:
                loaded[spec.path] = place(spec.path, stacks.pop(spec.path))
    finally:
        for reader in readers.values():
            reader.close()

    for path_, variable in params.items():
        variable.set_value(loaded[path_])
    return nnx.merge(graphdef, state), cfg


def _open(file: Path) -> SafetensorsReader:
    try:
        return SafetensorsReader(file)
    except SafetensorsError as e:
        raise CheckpointError(str(e)) from None


def _weight_files(folder: Path) -> dict[str, str]:
    """Maps each tensor key to the file that holds it."""
    index = folder / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"cannot read the weight map of {index}: {e!r}") from None
        for file in sorted(set(weight_map.values())):
            if not (folder / file).is_file():
                raise CheckpointError(f"{index} lists {file}, which does not exist in {folder}")
        return dict(weight_map)
    single = folder / SINGLE_FILE
    if not single.exists():
        raise CheckpointError(f"{folder} has neither {SINGLE_FILE} nor {INDEX_FILE}")
    with _open(single) as reader:
        return {key: SINGLE_FILE for key in reader.tensors}


def _check_keys(folder: Path, files: dict[str, str], expected: list[HFTensor], cfg: ModelConfig) -> None:
    wanted = {spec.key for spec in expected}
    missing = [spec.key for spec in expected if spec.key not in files]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{folder}: missing tensor {missing[0]!r}{more} required by config.json")
    # With an index, a key may be listed but absent from its file: check the files' own headers.
    by_file: dict[str, list[str]] = {}
    for key in wanted:
        by_file.setdefault(files[key], []).append(key)
    for file, keys in sorted(by_file.items()):
        with _open(folder / file) as reader:
            absent = sorted(set(keys) - set(reader.tensors))
        if absent:
            raise CheckpointError(f"{folder / file}: missing tensor {absent[0]!r}, which the index "
                                  "places in this file")
    unexpected = sorted(
        key for key in files
        if key not in wanted and not key.endswith(_IGNORED_SUFFIXES)
        and not (cfg.tie_word_embeddings and key == "lm_head.weight"))
    if unexpected:
        raise CheckpointError(f"{folder}: unexpected tensor {unexpected[0]!r} "
                              f"({len(unexpected)} in all) that a {cfg.model_type} model with this "
                              "config.json does not have")


# ----------------------------------------------------------------------------------------------
# Saving


def save_pretrained(model: Qwen3, cfg: ModelConfig, out_dir: str | os.PathLike, *,
                    dtype: str = "bfloat16", tokenizer_dir: str | os.PathLike | None = None,
                    chat_template: ChatTemplate | None = None,
                    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, overwrite: bool = False) -> Path:
    """Writes a folder that ``transformers.AutoModelForCausalLM.from_pretrained`` loads as-is.

    Tensors stream one at a time from the device to disk. Everything is written into a temporary
    sibling folder that is renamed into place at the end, so a failure never leaves a half-written
    ``out_dir``.

    Args:
        model: the model to export.
        cfg: its config; fields rao_jax does not use are copied from ``cfg.source``.
        out_dir: destination; must not exist or be empty unless ``overwrite``.
        dtype: ``"bfloat16"``, ``"float16"`` or ``"float32"`` for the saved weights.
        tokenizer_dir: the run's tokenizer: a folder holding a sentencepiece ``tokenizer.model`` (converted
            to ``tokenizer.json``) or a Hugging Face ``tokenizer.json`` (copied with its companions); the
            export gets a tokenizer config, the chat template and a generation config
            (``rao_jax.checkpoint.hf_tokenizer``) and is refused if its tokenizer.json does not give the
            run's token ids. A folder with only vocab.json / merges.txt is copied as it is.
        chat_template: the run's chat layout (default: ``sentencepiece_template()`` for a sentencepiece
            model, ``qwen3_template()`` for a tokenizer.json).
        max_shard_bytes: above this, weights are split into shards with an index file.
        overwrite: replace an existing non-empty ``out_dir``.
    """
    np_dtype = {"bfloat16": jnp.bfloat16, "float16": np.float16, "float32": np.float32}.get(dtype)
    if np_dtype is None:
        raise CheckpointError(f"unsupported export dtype {dtype!r}; use bfloat16, float16 or float32")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{out} is not empty; pass overwrite=True to replace it")
    tokenizer_files = _tokenizer_files(tokenizer_dir) if tokenizer_dir is not None else []
    params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        plans = [_plan(spec, params, np.dtype(np_dtype)) for spec in tensor_map(cfg)]
        shards = list(_split(plans, max_shard_bytes))
        total = 0
        if len(shards) == 1:
            total += write_file(tmp / SINGLE_FILE, shards[0], {"format": "pt"})
        else:
            weight_map = {}
            for k, shard in enumerate(shards, start=1):
                name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
                total += write_file(tmp / name, shard, {"format": "pt"})
                weight_map.update({plan.name: name for plan in shard})
            _write_json(tmp / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
        if tokenizer_dir is not None:
            _export_tokenizer(Path(tokenizer_dir), tokenizer_files, chat_template, tmp, cfg)
        _write_json(tmp / "config.json", cfg.to_hf_dict(torch_dtype=dtype))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _plan(spec: HFTensor, params: dict, dtype: np.dtype) -> TensorPlan:
    variable = params[spec.path]

    def produce() -> np.ndarray:
        value = variable[...] if spec.expert is None else variable[...][spec.expert]
        value = value.astype(dtype)
        if not value.is_fully_addressable:   # split over several hosts: every process gathers it
            from jax.experimental import multihost_utils

            return spec.from_jax(np.asarray(multihost_utils.process_allgather(value, tiled=True)))
        return spec.from_jax(np.asarray(jax.device_get(value)))

    return TensorPlan(spec.key, dtype, spec.hf_shape, produce)


def _split(plans: list[TensorPlan], max_bytes: int) -> Iterator[list[TensorPlan]]:
    shard: list[TensorPlan] = []
    size = 0
    for plan in plans:
        if shard and size + plan.nbytes > max_bytes:
            yield shard
            shard, size = [], 0
        shard.append(plan)
        size += plan.nbytes
    yield shard


def _export_tokenizer(folder: Path, files: list[Path], template: ChatTemplate | None, tmp: Path,
                      cfg: ModelConfig) -> None:
    from rao_jax.checkpoint.hf_tokenizer import check_round_trip, write_tokenizer_files
    from rao_jax.data.tokenizer import load_tokenizer

    names = {f.name for f in files}
    if "tokenizer.json" not in names and "tokenizer.model" not in names:
        for file in files:   # vocab.json / merges.txt only: nothing to convert or check
            shutil.copy2(file, tmp / file.name)
        return
    if template is None:
        template = qwen3_template() if "tokenizer.json" in names else sentencepiece_template()
    try:
        tokenizer = load_tokenizer(folder / ("tokenizer.json" if "tokenizer.json" in names else "tokenizer.model"))
        write_tokenizer_files(tmp, tokenizer, template, source_dir=folder, max_length=cfg.max_position_embeddings)
        check_round_trip(tmp, tokenizer)
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"tokenizer export refused: {err}") from None


def _tokenizer_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"tokenizer_dir {folder} is not a directory")
    found = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not any(f.name in ("tokenizer.json", "tokenizer.model", "vocab.json") for f in found):
        raise CheckpointError(f"tokenizer_dir {folder} holds no tokenizer.json, tokenizer.model "
                              "or vocab.json")
    return found


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Moves ``tmp`` to ``out``; an existing ``out`` is moved aside first and deleted after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["CheckpointError", "ConfigError", "HFTensor", "load_pretrained", "save_pretrained",
           "tensor_map"]
