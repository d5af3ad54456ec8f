"""The main job, end to end on the embedded defaults.

Today: export every default backbone (fp32 + fp16 + int8) into a model repository and print
a table of them. Serving, batch export and heads join as they land.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="embedder-demo", description=__doc__)
    parser.add_argument("--repo", default="models", help="model repository (default: models)")
    args = parser.parse_args(argv)

    # export/ is the only package that imports torch; the demo is an orchestrator, not the server.
    from export.cli import format_table, result_row
    from export.pipeline import ExportConfig, export_backbone
    from export.registry import list_backbones

    rows = []
    for name in list_backbones(defaults_only=True):
        print(f"exporting {name} ...", file=sys.stderr, flush=True)
        config = ExportConfig(name, repo=Path(args.repo), variants=("fp16", "int8"), overwrite=True)
        rows.append(result_row(export_backbone(config)))
    print(f"\nModel repository: {Path(args.repo).resolve()}\n")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
