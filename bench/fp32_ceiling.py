"""The bound on a text encoder's fp32 speed on this CPU: its matrix products, and how fast this
CPU runs matrix products of their shapes at all.

    python bench/fp32_ceiling.py --repo models --model minilm_l6 \
        --peer-onnx /tmp/m128onnx/model.onnx

On quant_bench's load (512 BBC articles cut to 128 tokens, batch 32, every core):
- the model as served (`cpu_session`);
- its matrix products alone: every MatMul / FusedMatMul / Gemm of one batch, at the shapes
  onnxruntime's profiler saw, as plain MatMuls in a graph of nothing else (weights constant
  as in the model; a transposed input taken as already transposed, a Gemm's bias left out,
  every result kept): about the rate the model would have if every other op took no time;
- the model's largest matrix product as one GEMM, in onnxruntime and in torch (oneDNN / MKL),
  three calls per batch of the load: the rate the model would have if every other op
  took no time and every product ran at that GEMM's rate.
With --peer-onnx (Infinity's optimum export: `peer_infinity.py prepare` in ../shared/anchors
writes it), the peer's graph runs too, in a session built as ours (`cpu_session`: its fastest
here; a default session, with SkipLayerNormalization fused, runs it about 10 % slower than
Infinity serves it). All of them alternate over --rounds, the order turning each round; docs/s
are medians, and every rate is shown as a ratio to the peer's.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from quant_bench import model_parser, workload

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedder.core.manifest import Manifest  # noqa: E402
from embedder.core.runtime import cpu_session  # noqa: E402

PRODUCTS = {"MatMul", "FusedMatMul", "Gemm"}
Product = tuple[list[int], list[int], bool]  # (A, B, whether B is a constant weight)


def as_product(event: dict) -> Product:
    """A profiled product as A [..., M, K] @ B [..., K, N]: K is the first input's elements
    over the output's rows, whichever input the node transposes (a first input broadcast
    over the second's batch is refused). The profile lists only the first input of a
    product whose weight onnxruntime has packed."""
    shapes = [next(iter(s.values())) for s in event["args"]["input_type_shape"]]
    out = next(iter(event["args"]["output_type_shape"][0].values()))
    k, rest = divmod(int(np.prod(shapes[0])), int(np.prod(out[:-1])))
    if rest or not k:
        raise SystemExit(f"{event['name']}: input {shapes[0]} does not give output {out} "
                         "row by row (broadcast?); this script counts plain products only")  # fmt: skip
    weight = len(shapes) == 1 or len(shapes[1]) == 2
    b = [k, out[-1]] if weight else [*out[:-2], k, out[-1]]
    return [*out[:-1], k], b, weight


def flops(products: list[Product]) -> float:
    return sum(2.0 * np.prod(a) * b[-1] for a, b, _ in products)


def profile(model: Path, threads: int, feeds: list[dict]) -> list[Product]:
    """The matrix products of the model's second batch (the first warms it up)."""
    with tempfile.TemporaryDirectory(prefix="fp32_ceiling.") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling, options.profile_file_prefix = True, f"{tmp}/profile"
        session = cpu_session(model, options)
        for f in feeds[:2]:
            session.run(["features"], f)
        events = json.loads(Path(session.end_profiling()).read_text())
    run = [e for e in events if e.get("name") == "model_run"][1]
    return [as_product(e) for e in events
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
            and e["args"].get("op_name") in PRODUCTS
            and run["ts"] <= e["ts"] <= run["ts"] + run["dur"]]  # fmt: skip


def products_graph(products: list[Product]) -> tuple[bytes, dict[str, np.ndarray]]:
    """A graph of the products alone, and random inputs for it."""
    rng = np.random.default_rng(0)
    nodes, inputs, outputs, weights, feeds = [], [], [], [], {}
    for i, (a, b, weight) in enumerate(products):
        feeds[f"a{i}"] = rng.standard_normal(a, np.float32)
        inputs.append(helper.make_tensor_value_info(f"a{i}", TensorProto.FLOAT, a))
        if weight:
            weights.append(numpy_helper.from_array(rng.standard_normal(b, np.float32), f"b{i}"))
        else:
            feeds[f"b{i}"] = rng.standard_normal(b, np.float32)
            inputs.append(helper.make_tensor_value_info(f"b{i}", TensorProto.FLOAT, b))
        nodes.append(helper.make_node("MatMul", [f"a{i}", f"b{i}"], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "products", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return model.SerializeToString(), feeds


def timed(run, calls: int, items: float) -> float:
    """items per second over `calls` calls of run."""
    started = time.perf_counter()
    for i in range(calls):
        run(i)
    return items / (time.perf_counter() - started)


def runners(model: Path, products: list[Product], per_doc: float, feeds: list[dict],
            threads: int, peer_onnx: Path | None) -> dict:  # fmt: skip
    """name -> a function timing one pass of the load in documents per second."""
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    docs, calls = sum(len(f["input_ids"]) for f in feeds), len(feeds)
    served = cpu_session(model, options)
    alone, alone_feeds = products_graph(products)
    alone = cpu_session(alone, options)
    a, b, _ = max((p for p in products if p[2]), key=lambda p: np.prod(p[0]) * p[1][-1])
    shape = (int(np.prod(a[:-1])), a[-1], b[-1])
    gemm, gemm_feeds = products_graph([([shape[0], shape[1]], [shape[1], shape[2]], True)])
    gemm = cpu_session(gemm, options)
    torch.set_num_threads(threads)
    x, w = torch.from_numpy(gemm_feeds["a0"]), torch.randn(shape[1], shape[2])
    per_gemm = 2.0 * np.prod(shape) / per_doc  # the documents' worth of FLOPs in one GEMM
    found = {}
    if peer_onnx:
        peer = cpu_session(peer_onnx, options)
        names = [i.name for i in peer.get_inputs()]  # token types zero when it asks
        batches = [{n: f[n] if n in f else np.zeros_like(f["input_ids"]) for n in names}
                   for f in feeds]  # fmt: skip
        found["the peer's graph"] = lambda: timed(lambda i: peer.run(None, batches[i]),
                                                  calls, docs)  # fmt: skip
    found["the model as served"] = lambda: timed(lambda i: served.run(None, feeds[i]),
                                                 calls, docs)  # fmt: skip
    found["its matrix products alone (other ops free)"] = lambda: timed(
        lambda i: alone.run(None, alone_feeds), calls, docs)  # fmt: skip
    label = "x".join(map(str, shape))
    found[f"products at onnxruntime's {label} GEMM rate (other ops free)"] = lambda: timed(
        lambda i: gemm.run(None, gemm_feeds), 3 * calls, 3 * calls * per_gemm)  # fmt: skip
    found[f"products at torch's {label} GEMM rate (other ops free)"] = lambda: timed(
        lambda i: x @ w, 3 * calls, 3 * calls * per_gemm)  # fmt: skip
    return found


def main() -> None:
    p = model_parser(__doc__, "minilm_l6")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--peer-onnx", type=Path, help="the peer's ONNX graph, run on the same load")
    p.add_argument("--target", type=float, default=1.2, help="ratio to the peer to account for")
    args = p.parse_args()
    folder = args.repo / args.model / args.version
    manifest = Manifest.read(folder)
    model, threads = folder / manifest.file, len(os.sched_getaffinity(0))
    feeds = workload(manifest, folder)
    if len({f["input_ids"].shape for f in feeds}) != 1:
        raise SystemExit("the load's batches differ in shape; FLOPs are counted on one batch")
    batch = len(feeds[0]["input_ids"])
    products = profile(model, threads, feeds)
    per_doc = flops(products) / batch
    run = runners(model, products, per_doc, feeds, threads, args.peer_onnx)
    for measure in run.values():
        measure()  # warm
    rates: dict[str, list[float]] = {name: [] for name in run}
    names = list(run)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            rates[name].append(run[name]())
    medians = {name: float(np.median(values)) for name, values in rates.items()}

    peer_docs = medians.get("the peer's graph")
    print(f"{args.model}, {threads} cores, batch {batch}: {len(products)} matrix products, "
          f"{per_doc / 1e9:.2f} GFLOP per document; {args.rounds} rounds")  # fmt: skip
    print("| rate | docs/s | GFLOP/s in matrix products | vs the peer's graph |")
    print("|---|---|---|---|")
    for name, value in medians.items():
        versus = f"{value / peer_docs:.2f}x" if peer_docs else "-"
        print(f"| {name} | {value:.1f} | {value * per_doc / 1e9:.0f} | {versus} |")
    if peer_docs:
        other = 1 / medians["the model as served"]
        other -= 1 / medians["its matrix products alone (other ops free)"]
        budget = 1 / (args.target * peer_docs) - other
        needed = f"{per_doc / budget / 1e9:.0f} GFLOP/s" if budget > 0 else "more than any rate"
        print(f"{args.target}x the peer's graph is {args.target * peer_docs:.1f} docs/s; with "
              f"the other ops as they are ({1e3 * other:.2f} ms per document), the matrix "
              f"products would have to run at {needed}")  # fmt: skip


if __name__ == "__main__":
    main()
