"""``ovdet embed``: precompute class-name embeddings to a safetensors file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ovdet.cli import options as opt
from ovdet.cli.options import UsageError

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
    opt.add_model(p, help="model YAML whose text encoder to use (default: open_clip ViT-B-32 openai)", required=False)
    p.add_argument("--template", action="append", help="prompt template with {} (repeatable; averaged)")
    opt.add_device(p)
    opt.add_text_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ovdet.config import TextConfig, load_model_config
    from ovdet.text import EmbeddingCache, build_text_encoder, save_embeddings, validate_class_names

    opt.check_device(args.device)
    names = validate_class_names(opt.read_classes(args.classes))
    if args.model and not Path(args.model).is_file():
        raise UsageError(f"--model {args.model}: model config not found")
    base = load_model_config(args.model).text if args.model else TextConfig()
    text_cfg = opt.text_config(base, args.text_model, args.text_weights, args.template)
    encoder = build_text_encoder(text_cfg, device=args.device if args.device != "auto" else "cpu")
    emb = EmbeddingCache(None).get_or_encode(encoder, names, text_cfg.templates)
    save_embeddings(args.output, names, emb, encoder.id, text_cfg.templates)
    print(f"{len(names)} embeddings of dim {emb.shape[1]} from {encoder.id} -> {args.output}")
    return 0
