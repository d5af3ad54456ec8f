"""Two saturated models on one server: does each get its share of the cores?

    python bench/fairness_bench.py --repo models --seconds 20

The fault campaign's load: 64 closed-loop clients on one `embedder-serve` with a 64-item
queue per model, half sending one JPEG photo to mobilenet_v2, half one whole BBC News article
to minilm_l6 (truncated to 256 tokens by the model). A refused request (RESOURCE_EXHAUSTED)
is counted and retried after 50 ms. Prints, per model: answers, items/s, p50 / p99 latency of
the answered, refusals, and its share of the server's inference CPU time (from the
`embedder_inference_cpu_seconds` metric, read before and after).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedder.client import AsyncEmbedderClient, embed_request  # noqa: E402
from embedder.serving.launch import ServeProcess  # noqa: E402
from protos.embedder.v1 import embedder_pb2 as pb  # noqa: E402


def inputs() -> dict[str, list[pb.Item]]:
    import skimage.data
    from PIL import Image

    from heads.datasets import bbc_news

    photos = []
    for photo in (skimage.data.coffee(), skimage.data.chelsea(), skimage.data.astronaut()):
        buf = io.BytesIO()
        Image.fromarray(photo).save(buf, "JPEG", quality=90)
        photos.append(pb.Item(image=buf.getvalue()))
    articles = [pb.Item(text=t) for t in bbc_news()[0][:64]]
    return {"mobilenet_v2": photos, "minilm_l6": articles}


def cpu_seconds(metrics_url: str) -> dict[str, float]:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    pattern = r'embedder_inference_cpu_seconds_total\{model="([^"/]+)/[^"]*"\} (\S+)'
    return {m: float(v) for m, v in re.findall(pattern, text)}


async def client(stub_client, model: str, items: list, until: float, stats: dict) -> None:
    i = 0
    while time.perf_counter() < until:
        request = embed_request(model, [items[i % len(items)]])
        i += 1
        started = time.perf_counter()
        try:
            await stub_client.embed(request)
            stats["latency"].append(time.perf_counter() - started)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            stats["refused"] += 1
            await asyncio.sleep(0.05)


async def load(target: str, per_model: int, seconds: float) -> dict:
    items = inputs()
    stats = {m: {"latency": [], "refused": 0} for m in items}
    async with AsyncEmbedderClient(target, timeout=120) as c:
        for model, its in items.items():  # warm each model once
            await c.embed(embed_request(model, its[:1]))
        until = time.perf_counter() + seconds
        await asyncio.gather(*(client(c, m, items[m], until, stats[m])
                               for m in items for _ in range(per_model)))  # fmt: skip
    return stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--repo", type=Path, default=Path("models"))
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--clients", type=int, default=64, help="in all, half per model")
    p.add_argument("--port", type=int, default=50931)
    p.add_argument("--metrics-port", type=int, default=50932)
    p.add_argument("--server-args", default="", help="extra embedder-serve flags")
    args = p.parse_args()
    server = ServeProcess(["--repo", str(args.repo), "--address", f"127.0.0.1:{args.port}",
                            "--max-queue-size", "64", "--metrics-address", str(args.metrics_port),
                            "--log-level", "WARNING", *args.server_args.split()])  # fmt: skip
    try:
        url = f"http://127.0.0.1:{args.metrics_port}/metrics"
        before = cpu_seconds(url)
        stats = asyncio.run(load(f"127.0.0.1:{args.port}", args.clients // 2, args.seconds))
        after = cpu_seconds(url)
    finally:
        server.stop(60)
    used = {m: after.get(m, 0.0) - before.get(m, 0.0) for m in stats}
    total = sum(used.values()) or 1.0
    print("| model | answered | items/s | p50 ms | p99 ms | refused | inference CPU s | share |")
    print("|---|---|---|---|---|---|---|---|")
    for model, s in stats.items():
        lat = np.array(s["latency"]) * 1000
        p50, p99 = (np.percentile(lat, q) if len(lat) else float("nan") for q in (50, 99))
        print(f"| {model} | {len(lat)} | {len(lat) / args.seconds:.1f} | {p50:.0f} | {p99:.0f} "
              f"| {s['refused']} | {used[model]:.1f} | {used[model] / total:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
