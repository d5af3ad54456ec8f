"""In-process onnxruntime vs the gRPC service over loopback: same model, same machine, one run.

    python bench/serve_bench.py --repo models --rounds 3        # CPU, medians of 3 rounds
    python bench/serve_bench.py --repo models --provider cuda --json gpu.json   # GPU

In-process: the model's session on ready inputs (uint8 pixels; for text, tokenisation included).
Service: `embedder-serve` in its own process; images sent as raw uint8 tensors, texts as text,
so both sides do the same work. Concurrent clients are asyncio callers in one client process.
Prints a table: items/s, p50 / p99 latency per call, the ratio to the best in-process batch-32
throughput (one run with all cores, or two side by side: the ceiling), and the CPU each item cost
(Linux): in-process, the process; service, the server and the client processes together. The
last column is the ratio a cell would reach with every core busy all the time at that cost: the
bound that per-request overhead alone sets, before any idle time. "Cores" are the ones this
process may run on (its affinity). Each caller's first call is a warm-up, outside the clock, the
item count and the CPU, on both sides. With `--rounds`, the ceiling runs first in odd rounds and
the service first in even ones; each cell is the median over rounds, its ratio the median of
the per-round ratios.

On a GPU (`--provider cuda`) the ceiling is raw onnxruntime-CUDA with IO binding on the model's
own fp16 session (bench/ort_cuda.py): batch 64 with host in/out (what a server must do) and,
for reference, inputs and output kept on the device; the service cells are 1 x 1, 1 x 64,
4 x 64 and 64 single-item clients, and the CPU columns include CUDA's waiting threads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ort_cuda import TEXTS, host_io, on_device, ready_inputs, timed_calls  # noqa: E402

from embedder.client import AsyncEmbedderClient, embed_request, image_item  # noqa: E402
from embedder.core.config import SessionConfig  # noqa: E402
from embedder.core.manifest import Manifest  # noqa: E402
from embedder.core.preprocess import TextTokenizer  # noqa: E402
from embedder.core.runtime import (
    batch_buckets,  # noqa: E402
    open_session,  # noqa: E402
)
from embedder.engine.config import BatchingConfig  # noqa: E402
from embedder.serving.launch import ServeProcess  # noqa: E402
from protos.embedder.v1 import embedder_pb2 as pb  # noqa: E402


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, all threads) of this process, or of process `pid` (Linux)."""
    if pid is None:
        return time.process_time()
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # not Linux: the CPU columns read nan
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of process `pid` (Linux; empty elsewhere)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def row(mode: str, batch: int, clients: int, items: int, wall: float, lat: list[float],
        cpu: float) -> dict:  # fmt: skip
    p50, p99 = (1000 * float(np.percentile(lat, q)) for q in (50, 99))
    return {"mode": mode, "batch": batch, "clients": clients, "items/s": items / wall,
            "p50 ms": p50, "p99 ms": p99, "cpu ms": 1000 * cpu / items}  # fmt: skip


def in_process_call(session, manifest: Manifest, folder: Path, batch: int):
    if manifest.modality == "image":
        h, w = manifest.preprocess.size
        feeds = {"pixels": np.random.default_rng(0).integers(0, 256, (batch, h, w, 3), np.uint8)}
        return lambda: session.run(feeds)
    tok = TextTokenizer(folder / "tokenizer.json", manifest.preprocess)
    texts = (TEXTS * batch)[:batch]
    return lambda: session.run(tok(texts))


def in_process(repo: Path, name: str, provider: str, seconds: float) -> list[dict]:
    """One caller with all the cores at batch 1, 8, 32; then two callers side by side at batch
    32 with half the cores each. The better batch-32 figure is the ceiling for the service."""
    folder = repo / name / "1"
    manifest = Manifest.read(folder)
    session = open_session(folder, manifest, SessionConfig(provider=provider))
    rows = []
    for batch in (1, 8, 32):
        run = timed_calls(in_process_call(session, manifest, folder, batch), batch, seconds)
        rows.append(row("in-process", batch, 1, run.items, run.wall, run.latencies, run.cpu))
    del session
    half = max(1, len(os.sched_getaffinity(0)) // 2)
    session = open_session(
        folder, manifest, SessionConfig(provider=provider, intra_op_threads=half)
    )
    run = timed_calls(in_process_call(session, manifest, folder, 32), 32, seconds, callers=2)
    rows.append(row("in-process, 2 streams", 32, 2, run.items, run.wall, run.latencies, run.cpu))
    return rows


def raw_cuda(repo: Path, name: str, seconds: float) -> list[dict]:
    """Raw onnxruntime-CUDA with IO binding on the fp16 session the server would open: batch 1
    and 64 with host in/out, two callers at 64, and batch 64 kept on the device."""
    folder = repo / name / "1"
    config = SessionConfig(provider="cuda")
    session = open_session(folder, Manifest.read(folder), config, batch_buckets(64))
    rows = []
    for batch, callers in ((1, 1), (64, 1), (64, 2)):
        run = host_io(session, ready_inputs(session, batch), seconds, callers)
        rows.append(row(RAW_HOST, batch, callers, run.items, run.wall, run.latencies, run.cpu))
    run = on_device(session, ready_inputs(session, 64), seconds)
    rows.append(row(RAW_DEVICE, 64, 1, run.items, run.wall, run.latencies, run.cpu))
    return rows


RAW_HOST = "raw ORT-CUDA, IO binding, host in/out"
RAW_DEVICE = "raw ORT-CUDA, IO binding, on the device"
CPU_CELLS = ((1, 1), (8, 1), (32, 1), (32, 4), (1, 8), (1, 32))
GPU_CELLS = ((1, 1), (64, 1), (64, 4), (1, 64))


def items_for(manifest: Manifest, n: int) -> list[pb.Item]:
    if manifest.modality == "text":
        return [pb.Item(text=t) for t in (TEXTS * n)[:n]]
    h, w = manifest.preprocess.size
    rng = np.random.default_rng(1)
    return [image_item(rng.integers(0, 256, (h, w, 3), np.uint8)) for _ in range(n)]


async def _client_loop(client: AsyncEmbedderClient, request, seconds: float) -> list[float]:
    latencies, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(latencies) < 2:
        t = time.perf_counter()
        await client.embed(request)
        latencies.append(time.perf_counter() - t)
    return latencies


async def _clients(target: str, request, clients: int, seconds: float, server_pid: int
                   ) -> tuple[float, list, float]:  # fmt: skip
    """`clients` concurrent callers on one asyncio client (one thread: cheap to drive), each
    warmed by one call before the clock starts. Returns the wall time, the latencies and the
    CPU both processes used meanwhile."""
    async with AsyncEmbedderClient(target) as client:
        await asyncio.gather(*(client.embed(request) for _ in range(clients)))  # warm
        threads0, client0 = thread_cpu(server_pid), cpu_seconds()
        t0, cpu0 = time.perf_counter(), cpu_seconds() + cpu_seconds(server_pid)
        loops = (_client_loop(client, request, seconds) for _ in range(clients))
        per = await asyncio.gather(*loops)
        cpu = cpu_seconds() + cpu_seconds(server_pid) - cpu0
        wall = time.perf_counter() - t0
        threads = thread_cpu(server_pid)
        busiest = max((threads[t] - threads0.get(t, 0.0) for t in threads), default=0.0)
        loads = {
            "server busiest thread": busiest / wall,
            "client": (cpu_seconds() - client0) / wall,
        }
        return wall, [x for lat in per for x in lat], cpu, loads


def service(target: str, server_pid: int, repo: Path, name: str, seconds: float,
            cells) -> list[dict]:  # fmt: skip
    manifest = Manifest.read(repo / name / "1")
    rows = []
    for batch, clients in cells:
        request = embed_request(name, items_for(manifest, batch))
        wall, lat, cpu, loads = asyncio.run(_clients(target, request, clients, seconds, server_pid))
        rows.append(row("service", batch, clients, batch * len(lat), wall, lat, cpu) | loads)
    return rows


def start_server(args: argparse.Namespace, checkout: Path | None = None) -> ServeProcess:
    """The server of this checkout, or of `checkout` (another one's code, for a before / after)."""
    env = {**os.environ, "PYTHONPATH": str(checkout)} if checkout else None
    return ServeProcess([
        "--repo", str(args.repo.resolve()), "--address", f"127.0.0.1:{args.port}",
        "--provider", args.provider, "--max-batch-size", str(args.max_batch_size),
        "--max-queue-delay-ms", str(args.max_queue_delay_ms),
        "--inference-streams", str(args.inference_streams),
        "--intra-op-threads", str(args.intra_op_threads), "--log-level", "WARNING",
        *shlex.split(args.serve_args),
    ], env=env, cwd=checkout)  # fmt: skip


def measure_ceiling(args: argparse.Namespace, name: str, gpu: bool) -> list[dict]:
    if gpu:
        return raw_cuda(args.repo, name, args.seconds)
    return in_process(args.repo, name, args.provider, args.seconds)


def measure_service(args: argparse.Namespace, name: str, gpu: bool,
                    checkout: Path | None = None) -> list[dict]:  # fmt: skip
    server = start_server(args, checkout)
    try:
        target = f"127.0.0.1:{args.port}"
        cells = GPU_CELLS if gpu else CPU_CELLS
        rows = service(target, server.pid, args.repo, name, args.seconds, cells)
    finally:
        server.stop(30)
    for row in rows if checkout else ():
        row["mode"] = f"service, {checkout.name}"
    return rows


HEADER = """| model | mode | batch | clients | items/s | p50 ms | p99 ms | vs {ceiling} | CPU core-ms / item | CPU bound | busiest server thread / client process, cores |
|---|---|---|---|---|---|---|---|---|---|---|"""


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=Path("models"))
    p.add_argument("--models", nargs="+", default=["mobilenet_v2", "minilm_l6"])
    p.add_argument("--provider", default="cpu", choices=("cpu", "cuda", "tensorrt"))
    p.add_argument("--seconds", type=float, default=4.0, help="per cell")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the table, print medians (the order of the sides turns)")  # fmt: skip
    p.add_argument("--port", type=int, default=50917)
    p.add_argument("--max-batch-size", type=int, default=0,
                   help="server batching limit (0: 32 on a CPU, 64 on a GPU)")  # fmt: skip
    p.add_argument("--max-queue-delay-ms", type=float, default=0.0, help="server batching delay")
    p.add_argument("--inference-streams", type=int, default=BatchingConfig.inference_streams)
    p.add_argument("--intra-op-threads", type=int, default=0, help="server threads per stream")
    p.add_argument("--json", type=Path, help="also write every cell here")
    p.add_argument("--serve-args", default="", help="more embedder-serve flags, e.g. "
                   "'--lone-batch-one-core'")  # fmt: skip
    p.add_argument("--checkout", type=Path, help="also serve another checkout's code in each "
                   "round (a before / after; the sides' order turns with the rounds)")  # fmt: skip
    args = p.parse_args()
    gpu = args.provider != "cpu"
    args.max_batch_size = args.max_batch_size or (64 if gpu else 32)
    ceiling = RAW_HOST + " batch 64" if gpu else "best in-process batch 32"
    print(HEADER.format(ceiling=ceiling))
    results = {}
    for name in args.models:
        rounds = []
        sides = ["ceiling", "service"] + (["before"] if args.checkout else [])
        for r in range(args.rounds):  # the order turns each round: drift hits every side
            rows = {}
            for side in sides if r % 2 == 0 else sides[::-1]:
                if side == "ceiling":
                    rows[side] = measure_ceiling(args, name, gpu)
                else:
                    checkout = args.checkout if side == "before" else None
                    rows[side] = measure_service(args, name, gpu, checkout)
            rounds.append([row for side in sides for row in rows[side]])
        results[name] = median_rows(rounds, gpu)
        for r in results[name]:
            busy = (f"{r['server busiest thread']:.2f} / {r['client']:.2f}"
                    if "client" in r else "")  # fmt: skip
            print(
                f"| {name} | {r['mode']} | {r['batch']} | {r['clients']} | {r['items/s']:.1f} | "
                f"{r['p50 ms']:.1f} | {r['p99 ms']:.1f} | {r['vs']:.2f} | {r['cpu ms']:.2f} | "
                f"{r['bound']:.2f} | {busy} |"
            )
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "repo")}
        args.json.write_text(json.dumps({"settings": settings, "ceiling": ceiling,
                                         "models": results}, indent=2))  # fmt: skip


def median_rows(rounds: list[list[dict]], gpu: bool = False) -> list[dict]:
    """Each cell's median over the rounds; its ratio is the median of the per-round ratios to
    that round's ceiling (the best in-process batch-32 rate; on a GPU, the best raw host-in/out
    rate at batch 64). The CPU bound is the rate every core would give at the cell's CPU cost
    per item, as a ratio to the ceiling. On a GPU, `vs device` is the ratio to the raw rate
    with inputs and output kept on the device."""
    cores = len(os.sched_getaffinity(0))
    keys = ["items/s", "p50 ms", "p99 ms", "vs", "cpu ms", "bound"] + (["vs device"] if gpu else [])
    loads = ["server busiest thread", "client"]
    for rows in rounds:
        if gpu:
            ceiling = max(r["items/s"] for r in rows if r["mode"] == RAW_HOST and r["batch"] == 64)
            device = next(r["items/s"] for r in rows if r["mode"] == RAW_DEVICE)
        else:
            ceiling = max(
                r["items/s"]
                for r in rows
                if not r["mode"].startswith("service") and r["batch"] == 32
            )
        for r in rows:
            r["vs"] = r["items/s"] / ceiling
            r["bound"] = cores * 1000 / r["cpu ms"] / ceiling
            if gpu:
                r["vs device"] = r["items/s"] / device
    return [
        {
            **cells[0],
            **{k: float(np.median([c[k] for c in cells])) for k in keys},
            **{k: float(np.median([c[k] for c in cells])) for k in loads if k in cells[0]},
        }  # fmt: skip
        for cells in zip(*rounds, strict=True)
    ]


if __name__ == "__main__":
    main()
