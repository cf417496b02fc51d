"""Turn a training checkpoint into a Hugging Face folder.

    python -m rao_jax.export_hf --checkpoint runs/demo/checkpoints --out exported/ [--step N]

The result loads with ``transformers.AutoModelForCausalLM.from_pretrained(out)`` and
``AutoTokenizer.from_pretrained(out)`` as-is: the tokenizer gives the run's token ids (checked before
anything is written), ``apply_chat_template`` lays prompts out as the run did, and
``generation_config.json`` stops at the end of a turn (and at ``</python>`` when it is one token).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import jax.numpy as jnp

from rao_jax.agent.protocol import qwen3_template, sentencepiece_template
from rao_jax.checkpoint.hf import DEFAULT_MAX_SHARD_BYTES, CheckpointError, save_pretrained
from rao_jax.checkpoint.orbax_io import CheckpointNotFoundError, restore_model
from rao_jax.errors import ConfigError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}


def parse_size(text: str) -> int:
    """``"3GB"`` -> 3_000_000_000; ``"512MiB"`` -> 536_870_912; a bare number is bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 3GB, 512MiB, 1000000)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rao_jax.export_hf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory of a training run")
    p.add_argument("--step", type=int, default=None, help="step to export (default: latest)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="dtype of the saved weights (default: bfloat16)")
    p.add_argument("--tokenizer-dir", default=None,
                   help="the run's tokenizer: a folder holding tokenizer.model (sentencepiece) or tokenizer.json "
                        "(default: the run's own, found next to --checkpoint)")
    p.add_argument("--template", default=None, choices=["sentencepiece", "qwen3"],
                   help="the run's chat layout (default: the run's config.json, else by tokenizer kind)")
    p.add_argument("--max-shard-size", type=parse_size, default=DEFAULT_MAX_SHARD_BYTES,
                   help="split weights into shards above this size (default: 3GiB)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p


def run_tokenizer(checkpoint: Path, tokenizer_dir: str | None, template: str | None):
    """(tokenizer folder, chat template) of the run whose checkpoints are in ``checkpoint``: its
    ``config.json`` names a tokenizer path and template; a trained one is ``tokenizer.model`` beside it."""
    run = checkpoint.parent
    saved = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    tok = saved.get("tokenizer", {})
    template = template or tok.get("template")
    if tokenizer_dir is None:
        if tok.get("path"):
            path = Path(tok["path"])
            tokenizer_dir = str(path if path.is_dir() else path.parent)
        elif (run / "tokenizer.model").is_file():
            tokenizer_dir = str(run)
    if tokenizer_dir is not None and not Path(tokenizer_dir).is_dir():
        raise ValueError(f"tokenizer folder {tokenizer_dir} does not exist")
    if tokenizer_dir is None:
        print("export_hf: warning: no tokenizer found next to the checkpoint; exporting the weights only "
              "(pass --tokenizer-dir)", file=sys.stderr)
    chat = {"sentencepiece": sentencepiece_template, "qwen3": qwen3_template}.get(template or "")
    return tokenizer_dir, chat() if chat else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        tokenizer_dir, template = run_tokenizer(Path(args.checkpoint), args.tokenizer_dir, args.template)
        model, cfg, restored = restore_model(args.checkpoint, args.step, dtype=jnp.float32)
        out = save_pretrained(model, cfg, args.out, dtype=args.dtype, tokenizer_dir=tokenizer_dir,
                              chat_template=template, max_shard_bytes=args.max_shard_size, overwrite=args.overwrite)
    except (CheckpointNotFoundError, CheckpointError, ConfigError, ValueError) as e:
        print(f"export_hf: error: {e}", file=sys.stderr)
        return 2
    print(f"exported step {restored.step} of {args.checkpoint} ({cfg.model_type}, "
          f"{cfg.num_hidden_layers} layers) to {out} as {args.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
