"""The same load through every door of one `embedder-serve`: embedder.v1, the OpenAI API
(base64), KServe v2 over gRPC and over REST (binary tensors).

    python bench/doors_bench.py --repo models --rounds 3

Each door is driven by a lean asyncio client in one client process (grpc.aio stubs; aiohttp for
HTTP), so the figures compare the server's doors, not client libraries. Every client does the
work a real one does with each answer: embedder.v1's `embeddings` bytes become a float32 array
of the answer's shape (AsyncEmbedderClient.embed), the OpenAI JSON is parsed and each base64
embedding decoded into one float32 array, KServe's gRPC `raw_output_contents` and its REST
answer (JSON header, then the binary tensor) become arrays of the shapes the answers give; each
answer's row count is checked. Cells: one client sending 32 items per request, and 32
concurrent single-item clients; texts are 32 numbered sentences about markets, football and
films for minilm_l6, images the same JPEG photo bytes for mobilenet_v2. Doors alternate in
order each round; each cell is the median over rounds, and its ratio to embedder.v1 is the
median of the per-round ratios. KServe's requests ask for the `embedding` output alone, as
embedder.v1 and OpenAI answer with nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedder.client import AsyncEmbedderClient, embed_request  # noqa: E402
from embedder.serving.launch import ServeProcess  # noqa: E402
from protos.embedder.v1 import embedder_pb2 as pb  # noqa: E402
from protos.inference.v2 import messages as v2  # noqa: E402

DOORS = ("embedder.v1", "openai", "kserve-v2 grpc", "kserve-v2 rest")
CELLS = ((32, 1), (1, 32))


def inputs(model: str) -> list:
    if model.startswith("minilm"):
        return [f"Sentence number {i} about markets, football and films." for i in range(32)]
    import skimage.data
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).resize((320, 240)).save(buf, "JPEG", quality=90)
    return [buf.getvalue()] * 32


NUMPY = {"FP32": "<f4"}  # the output datatypes the server answers with


def kserve_bytes(elements: list[bytes]) -> bytes:
    """A KServe BYTES tensor's raw contents: each element's 4-byte little-endian length, then
    its bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in elements)


def openai_embeddings(body: bytes) -> np.ndarray:
    """The (N, D) float32 embeddings of an OpenAI answer with base64 embeddings."""
    data = json.loads(body)["data"]
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])


def kserve_rest_outputs(body: bytes, header_length: int) -> dict[str, np.ndarray]:
    """A KServe REST answer with binary outputs: its JSON header, then each output's bytes."""
    header, at, out = json.loads(body[:header_length]), header_length, {}
    for o in header["outputs"]:
        size = o["parameters"]["binary_data_size"]
        dtype = np.dtype(NUMPY[o["datatype"]])
        out[o["name"]] = np.frombuffer(body, dtype, size // dtype.itemsize, at).reshape(o["shape"])
        at += size
    return out


def kserve_grpc_outputs(response) -> dict[str, np.ndarray]:
    """A KServe gRPC answer's raw_output_contents as arrays of their outputs' shapes."""
    return {o.name: np.frombuffer(raw, NUMPY[o.datatype]).reshape(tuple(o.shape))
            for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)}  # fmt: skip


def checked(embeddings: np.ndarray, count: int) -> np.ndarray:
    if embeddings.ndim != 2 or len(embeddings) != count:
        raise RuntimeError(f"{count} items answered with embeddings of shape {embeddings.shape}")
    return embeddings


def caller(door: str, model: str, items: list, grpc_target: str, http: str, session):
    """An async function sending `items` once through `door` and returning the embeddings,
    parsed into a float32 array as a client of that door would."""
    text, n = isinstance(items[0], str), len(items)
    if door == "embedder.v1":
        client = AsyncEmbedderClient(grpc_target)
        request = embed_request(
            model, [pb.Item(text=i) if text else pb.Item(image=i) for i in items]
        )

        async def embed():
            return checked((await client.embed(request)).embeddings, n)

        return embed
    if door == "openai":
        data = items if text else ["data:image/jpeg;base64," + base64.b64encode(i).decode()
                                   for i in items]  # fmt: skip
        body = json.dumps({"model": model, "input": data, "encoding_format": "base64"})

        async def post():
            async with session.post(f"http://{http}/v1/embeddings", data=body,
                                    headers={"Content-Type": "application/json"}) as r:  # fmt: skip
                assert r.status == 200, await r.text()
                return checked(openai_embeddings(await r.read()), n)

        return post
    raw = kserve_bytes([i.encode() for i in items] if text else items)
    name = "text" if text else "image"
    if door == "kserve-v2 grpc":
        import grpc

        channel = grpc.aio.insecure_channel(grpc_target)
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=v2.ModelInferRequest.SerializeToString,
                                   response_deserializer=v2.ModelInferResponse.FromString)  # fmt: skip
        tensor = v2.ModelInferRequest.InferInputTensor(name=name, datatype="BYTES", shape=[n])
        wanted = v2.ModelInferRequest.InferRequestedOutputTensor(name="embedding")
        request = v2.ModelInferRequest(model_name=model, inputs=[tensor], outputs=[wanted],
                                       raw_input_contents=[raw])  # fmt: skip

        async def infer_grpc():
            return checked(kserve_grpc_outputs(await call(request, timeout=60))["embedding"], n)

        return infer_grpc
    header = json.dumps({"inputs": [{"name": name, "datatype": "BYTES", "shape": [n],
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "embedding",
                                      "parameters": {"binary_data": True}}]}).encode()  # fmt: skip
    headers = {"Inference-Header-Content-Length": str(len(header)),
               "Content-Type": "application/octet-stream"}  # fmt: skip

    async def infer():
        async with session.post(f"http://{http}/v2/models/{model}/infer", data=header + raw,
                                headers=headers) as r:  # fmt: skip
            assert r.status == 200, await r.text()
            body, length = await r.read(), int(r.headers["Inference-Header-Content-Length"])
            return checked(kserve_rest_outputs(body, length)["embedding"], n)

    return infer


async def cell(door, model, batch, clients, grpc_target, http, seconds) -> dict:
    import aiohttp

    items = inputs(model)[:batch]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        send = caller(door, model, items, grpc_target, http, session)
        await send()  # warm

        async def loop(until: float) -> list[float]:
            latencies = []
            while time.perf_counter() < until or len(latencies) < 2:
                t = time.perf_counter()
                await send()
                latencies.append(time.perf_counter() - t)
            return latencies

        started = time.perf_counter()
        per = await asyncio.gather(*(loop(started + seconds) for _ in range(clients)))
        wall = time.perf_counter() - started
    lat = [x for p in per for x in p]
    return {"items/s": batch * len(lat) / wall, "p50 ms": 1000 * float(np.median(lat)),
            "p99 ms": 1000 * float(np.percentile(lat, 99))}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--repo", type=Path, default=Path("models"))
    p.add_argument("--models", nargs="+", default=["minilm_l6", "mobilenet_v2"])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    flags = ["--repo", args.repo, "--address", "127.0.0.1:0", "--http-address", "127.0.0.1:0",
             "--log-level", "WARNING"]  # fmt: skip
    with ServeProcess(flags) as server:
        rounds = []
        for r in range(args.rounds):
            order = DOORS if r % 2 == 0 else tuple(reversed(DOORS))
            rows = {}
            for model in args.models:
                for batch, clients in CELLS:
                    for door in order:
                        rows[model, batch, clients, door] = asyncio.run(cell(
                            door, model, batch, clients, server.grpc_target, server.http_target,
                            args.seconds))  # fmt: skip
            rounds.append(rows)
    print("| model | batch | clients | door | items/s | p50 ms | p99 ms | vs embedder.v1 |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for key in rounds[0]:
        model, batch, clients, door = key
        base = (model, batch, clients, "embedder.v1")
        med = {k: float(np.median([r[key][k] for r in rounds])) for k in rounds[0][key]}
        ratio = float(np.median([r[key]["items/s"] / r[base]["items/s"] for r in rounds]))
        results.append({"model": model, "batch": batch, "clients": clients, "door": door,
                        **med, "vs embedder.v1": ratio})  # fmt: skip
        print(
            f"| {model} | {batch} | {clients} | {door} | {med['items/s']:.1f} | "
            f"{med['p50 ms']:.1f} | {med['p99 ms']:.1f} | {ratio:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
