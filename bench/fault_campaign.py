"""The doors' fault campaign (issue 24), replayed against one `embedder-serve` process.

    python bench/fault_campaign.py --repo models --rounds 6

Every malformed request the campaign found a defect with is sent `--rounds` times while a probe
thread asks /v2/health/live every 20 ms (the event loop is blocked if a probe waits). Per
request: the answers, median and worst milliseconds, the server's RSS after it, and the server's
CPU per request. Then `--mixed-seconds` of valid load on all three doors (embedder.v1 Embed,
OpenAI /v1/embeddings, KServe v2 REST) with the malformed requests interleaved, every valid answer
compared with the reference embedding. Needs mobilenet_v2 and minilm_l6 in `--repo`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_bench import cpu_seconds  # noqa: E402

from embedder.client import EmbedderClient  # noqa: E402
from embedder.serving.launch import ServeProcess  # noqa: E402
from protos.embedder.v1 import embedder_pb2 as pb  # noqa: E402
from protos.inference.v2 import messages as v2  # noqa: E402

IMAGE, TEXT = "mobilenet_v2", "minilm_l6"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def http_call(target: str, method: str, path: str, body: bytes = b"", headers=None) -> str:
    host, port = target.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(method, path, body, {"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        response.read()
        return str(response.status)
    finally:
        conn.close()


def grpc_call(target: str, method: str, request: bytes) -> str:
    with grpc.insecure_channel(target) as channel:
        try:
            channel.unary_unary(method)(request, timeout=60)
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name


def gone_mid_body(target: str) -> str:
    host, port = target.split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
    return "closed"


def half_headers(target: str, connections: int, wait: float) -> str:
    """`connections` sockets that send half a header; how many the server still holds open
    after `wait` seconds."""
    host, port = target.split(":")
    sockets = [socket.create_connection((host, int(port))) for _ in range(connections)]
    for s in sockets:
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
    time.sleep(wait)
    open_ = 0
    for s in sockets:
        s.setblocking(False)
        try:
            open_ += s.recv(1) != b""
        except BlockingIOError:
            open_ += 1
        except ConnectionResetError:
            pass
        s.close()
    return f"{open_} of {connections} open"


def pixels(shape) -> bytes:
    tensor = {"name": "pixels", "datatype": "UINT8", "shape": shape, "data": []}
    return json.dumps({"inputs": [tensor]}).encode()


def grpc_pixels(shape) -> bytes:
    tensor = v2.ModelInferRequest.InferInputTensor(name="pixels", datatype="UINT8", shape=shape)
    request = v2.ModelInferRequest(model_name=IMAGE, inputs=[tensor], raw_input_contents=[b""])
    return request.SerializeToString()


def campaign(grpc_target: str, http_target: str) -> list[tuple[str, object]]:
    """(label, a call returning the answer's status) for each malformed request."""
    infer, openai = f"/v2/models/{IMAGE}/infer", "/v1/embeddings"
    text_infer = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                         "data": ["a cat"]}]}).encode()  # fmt: skip
    big = json.dumps({"model": TEXT, "input": ["x" * 200_000] * 257}).encode()  # 51 MB
    long_text = json.dumps({"model": TEXT, "input": "the cat sat on the mat " * 220_000}).encode()
    infer_v2 = f"/{v2.SERVICE}/ModelInfer"
    many = pb.EmbedRequest(model=TEXT, items=[pb.Item(text="x")] * 300_000).SerializeToString()
    h = http_target
    return [
        ("REST pixels [16000000,0,0,3]", lambda: http_call(h, "POST", infer, pixels([16_000_000, 0, 0, 3]))),
        ("REST pixels [1,2^62,0,3]", lambda: http_call(h, "POST", infer, pixels([1, 2**62, 0, 3]))),
        ("REST pixels [2^64]", lambda: http_call(h, "POST", infer, pixels([2**64]))),
        ("REST pixels [10^18,0]", lambda: http_call(h, "POST", infer, pixels([10**18, 0]))),
        ("gRPC pixels [16000000,0,0,3]", lambda: grpc_call(grpc_target, infer_v2, grpc_pixels([16_000_000, 0, 0, 3]))),
        ("gRPC pixels [150528]", lambda: grpc_call(grpc_target, infer_v2, grpc_pixels([150528]))),
        ("header length '²'", lambda: http_call(h, "POST", f"/v2/models/{TEXT}/infer", text_infer,
                                                {"Inference-Header-Content-Length": "²"})),
        ("header length of 5,000 digits", lambda: http_call(h, "POST", f"/v2/models/{TEXT}/infer", text_infer,
                                                            {"Inference-Header-Content-Length": "9" * 5000})),
        ("charset=hex", lambda: http_call(h, "POST", openai, b'{"model": "x"}',
                                          {"Content-Type": "application/json; charset=hex"})),
        ("gzip on a plain body", lambda: http_call(h, "POST", openai, b'{"model": "x"}',
                                                   {"Content-Encoding": "gzip"})),
        ("client gone mid-body", lambda: gone_mid_body(h)),
        ("not protobuf (Embed)", lambda: grpc_call(grpc_target, "/embedder.v1.Embedder/Embed", b"\x0a\x02\xff\xfe")),
        ("not protobuf (ModelInfer)", lambda: grpc_call(grpc_target, infer_v2, b"\xff\xff\xff")),
        ("Embed of 300,000 items", lambda: grpc_call(grpc_target, "/embedder.v1.Embedder/Embed", many)),
        ("OpenAI 51 MB, 257 items", lambda: http_call(h, "POST", openai, big)),
        ("OpenAI one 5 MB text", lambda: http_call(h, "POST", openai, long_text)),
    ]  # fmt: skip


def probe(target: str, stopping, worst) -> None:
    """Asks /v2/health/live every 20 ms until `stopping` is set; `worst`: its longest answer in
    ms. A process of its own, so the load generator's own work does not delay it."""
    while not stopping.wait(0.02):
        t = time.perf_counter()
        http_call(target, "GET", "/v2/health/live")
        worst.value = max(worst.value, 1000 * (time.perf_counter() - t))


def replay(server: ServeProcess, rounds: int) -> None:
    print(
        "| request | answers | median ms | worst ms | health probe worst ms | server CPU ms/request | RSS after MB |"
    )
    print("|---|---|---|---|---|---|---|")
    print(f"| (at start) | | | | | | {rss_mb(server.pid):.0f} |")
    for label, call in campaign(server.grpc_target, server.http_target):
        stopping, worst = multiprocessing.Event(), multiprocessing.Value("d", 0.0)
        prober = multiprocessing.Process(target=probe, args=(server.http_target, stopping, worst))
        prober.start()
        time.sleep(0.2)
        times, answers, cpu0 = [], {}, cpu_seconds(server.pid)
        for _ in range(rounds):
            t = time.perf_counter()
            status = call()
            times.append(1000 * (time.perf_counter() - t))
            answers[status] = answers.get(status, 0) + 1
        cpu = 1000 * (cpu_seconds(server.pid) - cpu0) / rounds
        stopping.set()
        prober.join()
        seen = ", ".join(f"{k} x{v}" for k, v in answers.items())
        print(f"| {label} | {seen} | {statistics.median(times):.1f} | {max(times):.1f} | "
              f"{worst.value:.1f} | {cpu:.1f} | {rss_mb(server.pid):.0f} |")  # fmt: skip
    print()
    print(half_headers(server.http_target, 300, 3.0), "half-header connections after 3 s")


def mixed(server: ServeProcess, seconds: float) -> None:
    """Valid calls on three doors, malformed ones between them; every valid answer checked."""
    texts = [f"Sentence {i} about markets, football and films." for i in range(8)]
    with EmbedderClient(server.grpc_target) as client:
        reference = client.embed_texts(TEXT, texts)
    body = json.dumps({"model": TEXT, "input": texts}).encode()
    kserve = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [8],
                                     "data": texts}]}).encode()  # fmt: skip
    counts, wrong, lock = {}, [], threading.Lock()
    end = time.monotonic() + seconds

    def note(key: str) -> None:
        with lock:
            counts[key] = counts.get(key, 0) + 1

    def check(got: np.ndarray, door: str) -> None:
        if not np.allclose(got, reference, atol=1e-4):
            wrong.append(door)
        note(f"{door} 200")

    def v1() -> None:
        with EmbedderClient(server.grpc_target) as c:
            while time.monotonic() < end:
                try:
                    check(c.embed_texts(TEXT, texts), "embedder.v1")
                except grpc.RpcError as exc:
                    note(f"embedder.v1 {exc.code().name}")

    def rest(door: str, path: str, payload: bytes) -> None:
        host, port = server.http_target.split(":")
        while time.monotonic() < end:
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            conn.request("POST", path, payload, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            conn.close()
            if response.status != 200:
                note(f"{door} {response.status}")
            elif door == "openai":
                check(np.array([d["embedding"] for d in json.loads(data)["data"]]), door)
            else:
                out = json.loads(data)["outputs"][0]
                check(np.array(out["data"]).reshape(out["shape"]), door)

    def hostile() -> None:
        calls = campaign(server.grpc_target, server.http_target)[:13]  # the quick ones
        while time.monotonic() < end:
            for _label, call in calls:
                note(f"malformed {call()}")

    workers = [threading.Thread(target=v1) for _ in range(2)]
    workers += [threading.Thread(target=rest, args=("openai", "/v1/embeddings", body)),
                threading.Thread(target=rest, args=("kserve-v2", f"/v2/models/{TEXT}/infer",
                                                    kserve)),
                threading.Thread(target=hostile)]  # fmt: skip
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(
        f"\nmixed load, {seconds:g} s: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
    )
    print(
        f"valid answers that differ from the reference: {len(wrong)}; RSS {rss_mb(server.pid):.0f} MB"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--repo", type=Path, default=Path("models"))
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--mixed-seconds", type=float, default=60.0)
    p.add_argument("--checkout", type=Path, help="serve another checkout's code (a before/after)")
    p.add_argument(
        "--server-flags",
        default="--read-timeout-seconds 1",
        help="more embedder-serve flags (an older checkout may not know the default)",
    )
    args = p.parse_args()
    flags = ["--repo", args.repo.resolve(), "--address", "127.0.0.1:0", "--http-address",
             "127.0.0.1:0", "--max-queue-size", "64", "--log-level", "ERROR",
             *args.server_flags.split()]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(args.checkout)} if args.checkout else None
    with ServeProcess(flags, env=env, cwd=args.checkout) as server:
        replay(server, args.rounds)
        mixed(server, args.mixed_seconds)


if __name__ == "__main__":
    main()
