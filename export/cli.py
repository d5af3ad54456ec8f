"""embedder-export: list backbones, list cut layers, export to a model repository."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from embedder.core.manifest import ImagePreprocess

from .errors import ExportError
from .generic import hf_encoder_cfg, onnx_file_cfg
from .pipeline import ExportConfig, ExportResult, cut_layers, export_backbone
from .registry import get_pretrained_cfg, list_backbones, resolve
from .variants import VARIANTS


def format_table(rows: list[dict[str, object]]) -> str:
    if not rows:
        return "(nothing)"
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    line = "  ".join(c.ljust(widths[c]) for c in cols)
    body = ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join([line, "  ".join("-" * widths[c] for c in cols), *body])


def result_row(result: ExportResult) -> dict[str, object]:
    m = result.manifest
    variants = "; ".join(f"{k} cos {v.cosine_to_fp32_min:.4f}, {v.gate_summary()}"
                         for k, v in m.variants.items())  # fmt: skip
    return {
        "name": m.name,
        "modality": m.modality,
        "dim": m.dim,
        "layer": m.layer,
        "parity": f"{m.parity_max_abs_diff:.1e}",
        "size MB": f"{result.size_bytes / 1e6:.1f}",
        "export s": m.export_seconds,
        "variants": variants or "-",
        "source": f"{m.source.package} {m.source.version}".strip(),
    }


def _config(args: argparse.Namespace, name: str) -> ExportConfig:
    return ExportConfig(
        name=name,
        repo=Path(args.repo),
        version=args.version,
        layer=args.layer,
        layers=tuple(v for v in (args.layers or "").split(",") if v),
        output_name=args.name,
        variants=tuple(v for v in args.variants.split(",") if v),
        overwrite=args.overwrite,
    )


def cmd_list(args: argparse.Namespace) -> None:
    rows = []
    for name in list_backbones():
        cfg = get_pretrained_cfg(name)
        package = f"{cfg.weights.package}=={cfg.weights.version}" if cfg.weights else "-"
        rows.append(
            {
                "name": name,
                "modality": cfg.modality,
                "default": "yes" if cfg.default else "",
                "weights": package,
                "description": cfg.description,
            }
        )
    print(format_table(rows))
    print("\nAlso: torchvision:<arch> and timm:<arch> (need those libraries and internet).")


def cmd_layers(args: argparse.Namespace) -> None:
    backbone, cfg = resolve(args.backbone)
    auto = cut_layers(ExportConfig(args.backbone, layers=("auto",)), backbone, cfg)
    for layer in backbone.layers():
        notes = [n for n, on in (("default", layer == backbone.default_layer),
                                 ("--layers auto", layer in auto)) if on]  # fmt: skip
        print(layer + (f"   ({', '.join(notes)})" if notes else ""))


def cmd_export(args: argparse.Namespace) -> None:
    print(format_table([result_row(export_backbone(_config(args, args.backbone)))]))


def export_defaults(config: ExportConfig) -> str:
    """Export every default backbone with `config`'s settings; the table of them."""
    rows = []
    for name in list_backbones(defaults_only=True):
        print(f"exporting {name} ...", file=sys.stderr, flush=True)
        rows.append(result_row(export_backbone(replace(config, name=name))))
    return format_table(rows)


def cmd_defaults(args: argparse.Namespace) -> None:
    print(export_defaults(_config(args, "")))


def cmd_hf(args: argparse.Namespace) -> None:
    backbone, cfg = hf_encoder_cfg(args.directory, args.name, args.max_length)
    print(format_table([result_row(export_backbone(_config(args, args.name), backbone, cfg))]))


def cmd_onnx(args: argparse.Namespace) -> None:
    preprocess = ImagePreprocess(
        size=(args.size, args.size),
        resize_shorter=args.resize or args.size,
        mean=tuple(args.mean),
        std=tuple(args.std),
    )
    backbone, cfg = onnx_file_cfg(
        args.file, args.name, args.input, args.layer, preprocess, args.pooling
    )
    if args.layer is None:
        print("\n".join(backbone.layers()))
        print("\npass one of these tensors as --layer to cut there", file=sys.stderr)
        return
    print(format_table([result_row(export_backbone(_config(args, args.name), backbone, cfg))]))


def _output_flags(p: argparse.ArgumentParser, name_required: bool = False) -> None:
    p.add_argument("--repo", default="models", help="model repository folder (default: models)")
    p.add_argument("--version", default="1", help="version folder name (default: 1)")
    p.add_argument("--layer", help="cut at this layer instead of the pooled penultimate features")
    p.add_argument("--layers",
                   help="several cut points in one graph, one pooled output each, comma-separated, "
                   "or 'auto' (block ends spread over the depth); fp32; the model is NAME_layers "
                   "unless --name says otherwise")  # fmt: skip
    p.add_argument("--name", required=name_required, help="model name in the repository")
    p.add_argument("--variants", default="", help=f"comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedder-export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered backbones").set_defaults(run=cmd_list)
    p = sub.add_parser("layers", help="layers a backbone can be cut at")
    p.add_argument("backbone")
    p.set_defaults(run=cmd_layers)
    p = sub.add_parser("export", help="export one backbone")
    p.add_argument("backbone", help="registered name, torchvision:<arch> or timm:<arch>")
    _output_flags(p)
    p.set_defaults(run=cmd_export)
    p = sub.add_parser("defaults", help="export every default backbone and print a table")
    _output_flags(p)
    p.set_defaults(run=cmd_defaults, name=None)
    p = sub.add_parser("hf", help="export a local Hugging Face encoder directory")
    p.add_argument("directory")
    p.add_argument("--max-length", type=int, default=256)
    _output_flags(p, name_required=True)
    p.set_defaults(run=cmd_hf)
    p = sub.add_parser("onnx", help="cut the head off an ONNX image model (no --layer: list)")
    p.add_argument("file")
    p.add_argument("--input", required=True, help="graph input taking normalised NCHW floats")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--resize", type=int, help="shorter side before the centre crop")
    p.add_argument("--mean", type=float, nargs=3, default=(0.485, 0.456, 0.406))
    p.add_argument("--std", type=float, nargs=3, default=(0.229, 0.224, 0.225))
    p.add_argument("--pooling", default="cls", choices=("cls", "mean", "cls+mean"))
    _output_flags(p, name_required=True)
    p.set_defaults(run=cmd_onnx)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ExportError, OSError) as exc:
        print(f"embedder-export: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
