"""A mixed-length text load on embedder-serve: short sentences and whole BBC News articles at
once, against the same load on another checkout of the code (alternating rounds, one sitting:
this checkout first in odd rounds, the baseline first in even ones).

    python bench/mixed_bench.py --repo models --baseline /tmp/base --rounds 3

Closed loop over gRPC: `--short-clients` callers each send one tweet-length sentence (an
article's first sentence, cut to 25 words) per request, `--long-clients` callers one whole
article (the model truncates it to its max_length), for `--seconds` per round. Prints per side
and round, in the order run: short and long texts/s, their p50 / p99 latency, and all texts/s;
then the medians, and the ratio of this checkout's all texts/s to the baseline's in each round
with their median (`--baseline`: a folder with this repository's layout, e.g. `git worktree
add /tmp/base <commit>`; its server runs on the same models).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedder.client import AsyncEmbedderClient, embed_request  # noqa: E402
from embedder.serving.launch import ServeProcess  # noqa: E402
from protos.embedder.v1 import embedder_pb2 as pb  # noqa: E402


def texts() -> tuple[list[str], list[str]]:
    from heads.datasets import bbc_news

    articles = bbc_news()[0]
    short = [" ".join(a.split(".")[0].split()[:25]) for a in articles]
    return short, articles


def start(source: Path, repo: Path, port: int) -> ServeProcess:
    flags = ["--repo", str(repo), "--address", f"127.0.0.1:{port}", "--log-level", "WARNING"]
    return ServeProcess(flags, env={**os.environ, "PYTHONPATH": str(source)}, cwd=source)


async def _caller(client, model: str, pool: list[str], seed: int, end: float) -> list[float]:
    rng, latencies = np.random.default_rng(seed), []
    while time.perf_counter() < end:
        text = pool[int(rng.integers(len(pool)))]
        t = time.perf_counter()
        await client.embed(embed_request(model, [pb.Item(text=text)]))
        latencies.append(time.perf_counter() - t)
    return latencies


async def load(target: str, model: str, args, short: list[str], long: list[str]) -> dict:
    async with AsyncEmbedderClient(target) as client:
        await client.embed(embed_request(model, [pb.Item(text=long[0])]))  # warm
        end = time.perf_counter() + args.seconds
        callers = [_caller(client, model, short, i, end) for i in range(args.short_clients)]
        callers += [_caller(client, model, long, 100 + i, end) for i in range(args.long_clients)]
        started = time.perf_counter()
        results = await asyncio.gather(*callers)
        wall = time.perf_counter() - started
    s = [x for r in results[: args.short_clients] for x in r]
    lo = [x for r in results[args.short_clients :] for x in r]
    return {"short/s": len(s) / wall, "long/s": len(lo) / wall, "all/s": (len(s) + len(lo)) / wall,
            "short p50": 1000 * np.median(s), "short p99": 1000 * np.percentile(s, 99),
            "long p50": 1000 * np.median(lo), "long p99": 1000 * np.percentile(lo, 99)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--repo", type=Path, default=Path("models"))
    p.add_argument("--model", default="minilm_l6")
    p.add_argument("--baseline", type=Path, required=True, help="the other checkout")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--short-clients", type=int, default=8)
    p.add_argument("--long-clients", type=int, default=4)
    p.add_argument("--port", type=int, default=50931)
    args = p.parse_args()
    short, long = texts()
    sides = {"this checkout": Path(__file__).resolve().parents[1], "baseline": args.baseline}
    keys = ["short/s", "long/s", "all/s", "short p50", "short p99", "long p50", "long p99"]
    print(f"{args.model}: {args.short_clients} short + {args.long_clients} long clients, "
          f"{args.seconds:.0f} s per round, {len(os.sched_getaffinity(0))} cores")  # fmt: skip
    print("| side | round | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    rows: dict[str, list[dict]] = {side: [] for side in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))  # A, B then B, A
        for side in order:
            server = start(sides[side], args.repo.resolve(), args.port)
            try:
                row = asyncio.run(load(f"127.0.0.1:{args.port}", args.model, args, short, long))
            finally:
                server.stop(30)
            rows[side].append(row)
            print(f"| {side} | {r + 1} | " + " | ".join(f"{row[k]:.1f}" for k in keys) + " |")
    for side, rs in rows.items():
        med = {k: float(np.median([x[k] for x in rs])) for k in keys}
        print(f"| {side} | median | " + " | ".join(f"{med[k]:.1f}" for k in keys) + " |")
    ratios = [a["all/s"] / b["all/s"] for a, b in zip(*rows.values(), strict=True)]
    print(f"all texts/s, this checkout / baseline per round: "
          f"{', '.join(f'{x:.2f}' for x in ratios)}; median {np.median(ratios):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
