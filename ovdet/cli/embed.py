"""``ovdet embed``: precompute class-name embeddings to a safetensors file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ovdet.cli import options as opt

if TYPE_CHECKING:  # pragma: no cover
    from ovdet.config import TextConfig

HELP = "precompute class-name embeddings to a safetensors file"


def register(sub: argparse._SubParsersAction) -> None:
    p = opt.command(sub, "embed", HELP)
    opt.add_vocabulary(
        p,
        classes_help="comma-separated names, coco / lvis / objects365, or a .txt file",
        embeddings_help=None,
        required=True,
    )
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    opt.add_model(
        p,
        help="the model whose text encoder to use: an ovdet checkpoint folder, model YAML or pretrained name "
        "(default: open_clip ViT-B-32 openai)",
        required=False,
    )
    p.add_argument("--template", action="append", help="prompt template with {} (repeatable; averaged)")
    opt.add_device(p)
    opt.add_text_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ovdet.config import TextConfig
    from ovdet.text import EmbeddingCache, build_text_encoder, save_embeddings, text_encoder_id, validate_class_names
    from ovdet.text.builtin import encode_names

    opt.check_device(args.device)
    names = validate_class_names(opt.read_classes(args.classes))
    base = model_text_config(args.model) if args.model else TextConfig()
    text_cfg = opt.text_config(base, args.text_model, args.text_weights, args.template, args.text_family)
    device = args.device if args.device != "auto" else "cpu"
    eid = text_encoder_id(text_cfg)  # the shipped CLIP tables answer their names in their space, offline
    emb = encode_names(
        EmbeddingCache(None), eid, text_cfg.templates, names, lambda: build_text_encoder(text_cfg, device)
    )
    save_embeddings(args.output, names, emb, eid, text_cfg.templates)
    print(f"{len(names)} embeddings of dim {emb.shape[1]} from {eid} -> {args.output}")
    return 0


def model_text_config(model: str) -> TextConfig:
    """The text encoder config of what ``--model`` names, as the other commands resolve it
    (:func:`~ovdet.cli.options.check_model_spec`, then :func:`~ovdet.api.load_detector`'s order: a
    checkpoint folder, a model YAML, a pretrained name), read from the config alone (no weights).

    Raises:
        UsageError: ``model`` names nothing usable (see :func:`~ovdet.cli.options.check_model_spec`).
    """
    from ovdet.checkpoint import read_checkpoint_meta
    from ovdet.config import load_model_config
    from ovdet.weights import fetch_pretrained

    opt.check_model_spec(model)
    path = Path(model)
    if path.is_dir():
        return read_checkpoint_meta(path)[1].text
    if path.suffix in {".yaml", ".yml"}:
        return load_model_config(path).text
    return read_checkpoint_meta(fetch_pretrained(model))[1].text
