"""How one batch runs in parts on a CPU, where smaller parts are faster and lighter.

- Image models: consecutive chunks of CPU_IMAGE_BATCH images (activations stay in cache;
  batches of 32 were 25-45% slower per image, README batch export benchmark).
- Text models: texts sorted by length and run in parts of at most `budget` padded tokens, each
  part padded only to its own longest text. A short text never pays for a long one's padding,
  and the working memory of a run is bounded: 32 BBC articles at 256 tokens raised a
  single-threaded MiniLM session's RSS by 670 MB in one run, 185 MB in parts of 2048 tokens,
  and ran as fast (a batch with one long text in four: 3x faster).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CPU_IMAGE_BATCH = 4
CPU_BATCH_TOKENS = 2048

Run = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def in_chunks(run, size: int):
    """`run` over a batch as consecutive chunks of at most `size` items, outputs concatenated."""

    def chunked(feeds: dict[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(feeds.values())))
        if n <= size:
            return run(feeds)
        parts = (run({k: v[i : i + size] for k, v in feeds.items()}) for i in range(0, n, size))
        return np.concatenate(list(parts))

    return chunked


def token_parts(lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """Row indices, shortest texts first, grouped so that rows x longest <= budget (a text
    longer than the budget runs alone)."""
    order = np.argsort(lengths, kind="stable")
    parts, start = [], 0
    for end in range(1, len(order) + 1):
        if end == len(order) or (end + 1 - start) * lengths[order[end]] > budget:
            parts.append(order[start:end])
            start = end
    return parts


def by_token_budget(run: Run, feeds: dict[str, np.ndarray], budget: int) -> list[np.ndarray]:
    """`run`'s outputs for a padded text batch, computed in token_parts and put back in order."""
    lengths = feeds["attention_mask"].sum(axis=1)
    parts = token_parts(lengths, budget)
    if len(parts) == 1 and lengths.max(initial=0) == feeds["attention_mask"].shape[1]:
        return run(feeds)
    outputs: list[np.ndarray] | None = None
    for rows in parts:
        width = int(lengths[rows].max())
        got = run({k: v[rows, :width] for k, v in feeds.items()})
        if outputs is None:
            outputs = [np.empty((len(lengths), *o.shape[1:]), o.dtype) for o in got]
        for out, part in zip(outputs, got, strict=True):
            out[rows] = part
    return outputs
