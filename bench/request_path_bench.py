"""The per-request path on the tiny text model, where inference is nearly free: server CPU per
single-item request on each door, and requests/s with --workers 1 and 2, driven by C load
generators (h2load for gRPC, wrk for HTTP; `apt-get install nghttp2-client wrk`).

    python bench/request_path_bench.py --seconds 10 --rounds 3

Each round starts one server per worker count (`--workers 1`, then `--workers 2`: alternating
order), warms it, then runs every door for `--seconds` with `--connections` connections, one
request in flight on each. Server CPU is the user + system time of the server's processes (the
supervisor and its workers) over the run, divided by the answers. The load generator runs on
the same cores. The tiny text model (tests/tiny_models.py, 2 layers, 32 dims) is exported
into a temporary folder first. The last row is the floor: a bare grpc.aio server answering the
same calls with nothing computed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from serve_bench import cpu_seconds  # noqa: E402

from embedder.serving.launch import ServeProcess  # noqa: E402
from protos.embedder.v1 import embedder_pb2 as pb  # noqa: E402
from protos.inference.v2 import messages as v2  # noqa: E402

MODEL, TEXT = "tiny_text", "a short sentence to embed"


def tiny_repo(folder: Path) -> Path:
    from tiny_models import export_tiny_repo, save_tiny_bert

    (folder / "bert").mkdir()
    save_tiny_bert(folder / "bert")
    return export_tiny_repo(folder / "models", folder / "bert")


def grpc_frame(message) -> bytes:
    body = message.SerializeToString()
    return struct.pack(">?I", False, len(body)) + body


def bodies(folder: Path) -> dict[str, tuple[str, Path]]:
    """Each door: its path and the request body file."""
    embed = pb.EmbedRequest(model=MODEL, items=[pb.Item(text=TEXT)])
    infer = v2.ModelInferRequest(model_name=MODEL)
    tensor = infer.inputs.add(name="text", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(TEXT.encode())
    files = {
        "embedder.v1 gRPC": ("/embedder.v1.Embedder/Embed", grpc_frame(embed)),
        "KServe v2 gRPC": (f"/{v2.SERVICE}/ModelInfer", grpc_frame(infer)),
        "OpenAI REST": ("/v1/embeddings", json.dumps({"model": MODEL, "input": TEXT}).encode()),
        "KServe v2 REST": (f"/v2/models/{MODEL}/infer", json.dumps({"inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXT]}]}).encode()),
    }  # fmt: skip
    out = {}
    for door, (path, body) in files.items():
        file = folder / (re.sub(r"\W+", "_", door) + ".bin")
        file.write_bytes(body)
        out[door] = (path, file)
    return out


def process_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def load(door: str, target: str, path: str, body: Path, seconds: float, connections: int
         ) -> tuple[int, int]:  # fmt: skip
    """(answers that succeeded, answers that failed) from h2load or wrk."""
    if "gRPC" in door:
        out = subprocess.run(["h2load", "-D", f"{seconds:g}", "-c", str(connections), "-m", "1",
                              "-t", "1", "-d", str(body), "-H", "content-type: application/grpc",
                              "-H", "te: trailers", f"http://{target}{path}"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                         r"(\d+) failed, (\d+) errored", out)  # fmt: skip
        return int(done[2]), int(done[3]) + int(done[4])
    script = body.with_suffix(".lua")
    script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = [[{body.read_text()}]]\n")  # fmt: skip
    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s", "-s",
                          str(script), f"http://{target}{path}"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    total = int(re.search(r"(\d+) requests in", out)[1])
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return total - (int(bad[1]) if bad else 0), int(bad[1]) if bad else 0


def one_server(repo: Path, workers: int, doors: dict, seconds: float, connections: int,
               flags: list[str], checkout: Path | None = None
               ) -> dict[str, tuple[float, float]]:  # fmt: skip
    """Each door's (requests/s, server CPU µs per request) on one server (`checkout`: another
    checkout's code, for a before / after)."""
    serve = ["--repo", repo, "--address", "127.0.0.1:0", "--http-address", "127.0.0.1:0",
             "--drain-seconds", "0", "--log-level", "WARNING", *flags]  # fmt: skip
    if workers > 1:
        serve += ["--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(checkout)} if checkout else None
    results = {}
    with ServeProcess(serve, env=env, cwd=checkout) as server:
        pids = [server.pid, *server.worker_pids()]
        for door, (path, body) in doors.items():
            target = server.grpc_target if "gRPC" in door else server.http_target
            load(door, target, path, body, 1, connections)  # warm every worker's path
            cpu = process_cpu(pids)
            ok, failed = load(door, target, path, body, seconds, connections)
            used = process_cpu(pids) - cpu
            if failed or not ok:
                raise SystemExit(f"{door}: {failed} failed answers of {ok + failed}")
            results[door] = (ok / seconds, 1e6 * used / ok)
    return results


BARE_GRPC = """
import asyncio, sys, grpc
async def main():
    server = grpc.aio.server()
    async def unary(request, context):
        return request[:64]  # an answer of about an embedding's size, nothing computed
    class Any(grpc.GenericRpcHandler):
        def service(self, details):
            return grpc.unary_unary_rpc_method_handler(unary)
    server.add_generic_rpc_handlers((Any(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print("listening on port", port, flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""


def bare_grpc_floor(doors: dict, seconds: float, connections: int) -> tuple[float, float]:
    """(requests/s, CPU µs per request) of a grpc.aio server that only answers: the floor of
    any Python gRPC door on this machine."""
    path, body = doors["embedder.v1 gRPC"]
    server = subprocess.Popen([sys.executable, "-c", BARE_GRPC], stdout=subprocess.PIPE, text=True)
    try:
        target = f"127.0.0.1:{server.stdout.readline().split()[-1]}"
        load("embedder.v1 gRPC", target, path, body, 1, connections)
        cpu = process_cpu([server.pid])
        ok, _ = load("embedder.v1 gRPC", target, path, body, seconds, connections)
        return ok / seconds, 1e6 * (process_cpu([server.pid]) - cpu) / ok
    finally:
        server.kill()
        server.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--workers", default="1,2", help="worker counts to compare")
    p.add_argument("--server-flags", default="", help="more embedder-serve flags")
    p.add_argument("--checkout", type=Path,
                   help="also serve another checkout's code, one worker (a before / after)")  # fmt: skip
    args = p.parse_args()
    servers = [(f"--workers {w}", int(w), None) for w in args.workers.split(",")]
    if args.checkout:
        servers.append((f"{args.checkout.name}, --workers 1", 1, args.checkout))
    with tempfile.TemporaryDirectory() as tmp:
        repo = tiny_repo(Path(tmp))
        doors = bodies(Path(tmp))
        rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
        floor = [bare_grpc_floor(doors, args.seconds, args.connections)
                 for _ in range(args.rounds)]  # fmt: skip
        for r in range(args.rounds):
            for label, workers, checkout in servers if r % 2 == 0 else servers[::-1]:
                got = one_server(repo, workers, doors, args.seconds, args.connections,
                                 args.server_flags.split(), checkout)  # fmt: skip
                for door, figures in got.items():
                    rows.setdefault((door, label), []).append(figures)
                print(f"round {r + 1}, {label}: done", file=sys.stderr, flush=True)
    print(f"tiny text model, single-item requests, {args.connections} connections, "
          f"{args.seconds:g} s per door, medians of {args.rounds} rounds, {os.cpu_count()} cores")  # fmt: skip
    print("| door | server | requests/s | vs the first | server CPU µs / request |")
    print("|---|---|---|---|---|")
    for door in doors:
        base = statistics.median(f[0] for f in rows[door, servers[0][0]])
        for label, _, _ in servers:
            rate = statistics.median(f[0] for f in rows[door, label])
            cpu = statistics.median(f[1] for f in rows[door, label])
            print(f"| {door} | {label} | {rate:,.0f} | {rate / base:.2f} | {cpu:,.0f} |")
    rate, cpu = (statistics.median(f[i] for f in floor) for i in (0, 1))
    print(
        f"| gRPC floor: a bare grpc.aio server that only answers | 1 process | {rate:,.0f} | "
        f"| {cpu:,.0f} |"
    )


if __name__ == "__main__":
    main()
