"""embedder-export: list backbones, list cut layers, export to a model repository."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from embedder.core import cli
from embedder.core.errors import EmbedderError
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


def _verdict(variant) -> str:
    """A variant in a few characters: its gate's verdict and weakest cosine (or, with no gate,
    its cosine to fp32 on the sample inputs)."""
    if variant is None:
        return "-"
    if not variant.gate:
        return f"cos {variant.cosine_to_fp32_min:.4f}"
    verdict = "ok" if variant.gate["passed"] else "FAILED"
    return f"{verdict} {variant.gate['cosine_min']:.4f}"


def result_row(result: ExportResult, detail: bool = False) -> dict[str, object]:
    """One line of the export table (100 columns wide); `detail`: everything, for --detail."""
    m = result.manifest
    row = {
        "name": m.name,
        "dim": m.dim,
        "layer": m.layer if not m.layer_outputs else f"{len(m.layer_outputs)} cut points",
        "parity": f"{m.parity_max_abs_diff:.1e}",
        "fp16": _verdict(m.variants.get("fp16")),
        "int8": _verdict(m.variants.get("int8")),
        "export s": f"{m.export_seconds:.0f}",
    }
    if not detail:
        return row
    return row | {
        "modality": m.modality,
        "layers": [o.layer for o in m.layer_outputs] or [m.layer],
        "size MB": round(result.size_bytes / 1e6, 1),
        "source": f"{m.source.package} {m.source.version}".strip(),
        "variants": {k: {"cosine_to_fp32_min": v.cosine_to_fp32_min, "gate": v.gate_summary(),
                         "recipe": v.recipe} for k, v in m.variants.items()},
    }  # fmt: skip


def _config(args: argparse.Namespace, name: str) -> ExportConfig:
    variants = tuple(v for v in args.variants.split(",") if v)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:  # before the fp32 export and its checks, not after
        raise ExportError(f"--variants {unknown[0]!r}: choose from {', '.join(VARIANTS)}")
    return ExportConfig(
        name=name,
        repo=Path(args.repo),
        version=args.version,
        layer=getattr(args, "layer", None),
        layers=tuple(v for v in (args.layers or "").split(",") if v),
        output_name=getattr(args, "name", None),
        variants=variants,
        overwrite=args.overwrite,
    )


def report(args: argparse.Namespace, results: list[ExportResult]) -> None:
    """The export table (100 columns), or every figure with --detail / --json."""
    rows = [result_row(r, args.detail or args.json) for r in results]
    if args.json:
        cli.print_json(rows)
    elif args.detail:
        for row in rows:
            print("\n".join(f"{k:>10}: {v}" for k, v in row.items()), end="\n\n")
    else:
        print(format_table(rows))


def cmd_list(args: argparse.Namespace) -> None:
    rows = []
    for name in list_backbones():
        cfg = get_pretrained_cfg(name)
        package = f"{cfg.weights.package}=={cfg.weights.version}" if cfg.weights else "-"
        rows.append({"name": name, "modality": cfg.modality,
                     "default": "yes" if cfg.default else "", "weights": package,
                     "description": cfg.description})  # fmt: skip
    if args.json:
        cli.print_json(rows)
        return
    print(format_table(rows))
    print("\nAlso: torchvision:<arch> and timm:<arch> (need those libraries and internet).")


def cmd_layers(args: argparse.Namespace) -> None:
    backbone, cfg = resolve(args.backbone)
    auto = cut_layers(ExportConfig(args.backbone, layers=("auto",)), backbone, cfg)
    rows = [{"layer": layer, "default": layer == backbone.default_layer, "auto": layer in auto}
            for layer in backbone.layers()]  # fmt: skip
    if args.json:
        cli.print_json(rows)
        return
    for r in rows:
        notes = [n for n, on in (("default", r["default"]), ("--layers auto", r["auto"])) if on]
        print(r["layer"] + (f"   ({', '.join(notes)})" if notes else ""))


def cmd_export(args: argparse.Namespace) -> None:
    report(args, [export_backbone(_config(args, args.backbone))])


def export_defaults(config: ExportConfig, names: list[str] | None = None) -> list[ExportResult]:
    """Export the default backbones (or `names`) with `config`'s settings."""
    results = []
    for name in names or list_backbones(defaults_only=True):
        print(f"exporting {name} ...", file=sys.stderr, flush=True)
        results.append(export_backbone(replace(config, name=name)))
    return results


def cmd_defaults(args: argparse.Namespace) -> None:
    report(args, export_defaults(_config(args, "")))


def cmd_hf(args: argparse.Namespace) -> None:
    backbone, cfg = hf_encoder_cfg(args.directory, args.name, args.max_length)
    report(args, [export_backbone(_config(args, args.name), backbone, cfg)])


def cmd_onnx(args: argparse.Namespace) -> None:
    preprocess = ImagePreprocess(size=(args.size, args.size), resize_shorter=args.resize or
                                 args.size, mean=tuple(args.mean), std=tuple(args.std))  # fmt: skip
    if args.layer is not None and not args.name:
        raise ExportError("--name is needed to export a cut (the model's name in --repo)")
    backbone, cfg = onnx_file_cfg(args.file, args.name or Path(args.file).stem, args.input,
                                  args.layer, preprocess, args.pooling)  # fmt: skip
    if args.layer is None:
        print("\n".join(backbone.layers()))
        print("\npass one of these tensors as --layer to cut there", file=sys.stderr)
        return
    report(args, [export_backbone(_config(args, args.name), backbone, cfg)])


def _output_flags(p: argparse.ArgumentParser, one_model: bool = True,
                  name_required: bool = False) -> None:  # fmt: skip
    cli.add_repo(p)
    p.add_argument("--version", default="1", help="the version folder written")
    if one_model:
        p.add_argument("--layer", help="cut at this layer (default: the pooled penultimate "
                       "features; `embedder-export layers NAME` lists them)")  # fmt: skip
        p.add_argument(
            "--name",
            required=name_required,
            help="the model's name in the repository (default: the backbone's)",
        )
    p.add_argument("--layers", help="several cut points in one graph, one pooled output each: "
                   "comma-separated, or 'auto' (block ends spread over the depth); fp32; the "
                   "model is NAME_layers unless --name says otherwise")  # fmt: skip
    p.add_argument("--variants", default="", help="reduced-precision copies, comma-separated: "
                   f"{', '.join(VARIANTS)} (each measured by its fidelity gate)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
    p.add_argument("--detail", action="store_true", help="every figure, not the table")
    cli.add_json(p)


EXAMPLES = """\
  embedder-export list
  embedder-export layers mobilenet_v2
  embedder-export export mobilenet_v2 --variants fp16,int8
  embedder-export export mobilenet_v2 --layers auto          # -> models/mobilenet_v2_layers/1
  embedder-export defaults --variants fp16,int8 --json
  embedder-export hf ./my-encoder --name my_encoder --max-length 128
  embedder-export onnx classifier.onnx --input input_image              # lists its cut points
  embedder-export onnx classifier.onnx --input input_image --name my_vit \\
      --layer /backbone/layernorm/Add_1_output_0 --pooling cls+mean
"""


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("embedder-export", __doc__, EXAMPLES)
    sub = cli.subcommands(parser)
    p = cli.command(sub, "list", "registered backbones")
    cli.add_json(p)
    p.set_defaults(run=cmd_list)
    p = cli.command(sub, "layers", "layers a backbone can be cut at")
    p.add_argument("backbone", help="a registered backbone, torchvision:<arch> or timm:<arch>")
    cli.add_json(p)
    p.set_defaults(run=cmd_layers)
    p = cli.command(sub, "export", "export one backbone")
    p.add_argument("backbone", help="a registered backbone, torchvision:<arch> or timm:<arch>")
    _output_flags(p)
    p.set_defaults(run=cmd_export)
    p = cli.command(sub, "defaults", "export every default backbone and print a table")
    _output_flags(p, one_model=False)
    p.set_defaults(run=cmd_defaults)
    p = cli.command(sub, "hf", "export a local Hugging Face encoder directory")
    p.add_argument("directory", help="a folder with config.json, weights and tokenizer.json")
    p.add_argument("--max-length", type=int, default=256, help="tokens kept per text")
    _output_flags(p, name_required=True)
    p.set_defaults(run=cmd_hf)
    p = cli.command(sub, "onnx", "cut the head off an ONNX image model (no --layer: list)")
    p.add_argument("file", help="the .onnx file")
    p.add_argument("--input", required=True, help="graph input taking normalised NCHW floats")
    p.add_argument("--size", type=int, default=224, help="the square crop fed to the graph")
    p.add_argument("--resize", type=int, help="shorter side before the centre crop (default: "
                   "--size)")  # fmt: skip
    p.add_argument("--mean", type=float, nargs=3, default=(0.485, 0.456, 0.406),
                   help="per-channel mean on 0..1 pixels")  # fmt: skip
    p.add_argument("--std", type=float, nargs=3, default=(0.229, 0.224, 0.225),
                   help="per-channel standard deviation on 0..1 pixels")  # fmt: skip
    p.add_argument("--pooling", default="cls", choices=("cls", "mean", "cls+mean"),
                   help="token outputs (N, T, C): how they are pooled")  # fmt: skip
    _output_flags(p, name_required=False)
    p.set_defaults(run=cmd_onnx)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ExportError, EmbedderError, OSError) as exc:
        print(f"embedder-export: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
