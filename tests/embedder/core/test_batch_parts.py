"""A batch in parts: consecutive image chunks, and text parts by a padded-token budget."""

import os

import numpy as np
import pytest

from embedder.core.batch_parts import by_token_budget, token_parts
from embedder.core.config import SessionConfig
from embedder.core.inputs import Preprocessor
from embedder.core.manifest import Manifest
from embedder.core.runtime import open_session


def test_token_parts_group_similar_lengths_within_the_budget():
    lengths = np.array([30, 2, 3, 30, 4, 2])
    parts = token_parts(lengths, budget=32)
    assert [sorted(p.tolist()) for p in parts] == [[1, 2, 4, 5], [0], [3]]
    assert all(len(p) * lengths[p].max() <= 32 for p in parts if len(p) > 1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(6))


def test_a_text_batch_in_parts_equals_the_whole_batch(tiny_repo):
    folder = tiny_repo / "tiny_text" / "1"
    manifest = Manifest.read(folder)
    whole = open_session(folder, manifest, SessionConfig(provider="cpu", max_batch_tokens=10_000))
    parts = open_session(folder, manifest, SessionConfig(provider="cpu", max_batch_tokens=12))
    pre = Preprocessor(manifest, folder)
    texts = ["the cat sat on the mat " * 2, "a dog", "the stock market fell", "cup", "a cat"] * 3
    feeds = pre.collate(pre.texts(texts))
    calls = []

    def counted(part):
        calls.append(part["input_ids"].shape)
        return parts._run(["features"], part)

    out = by_token_budget(counted, feeds, 12)[0]
    assert len(calls) > 1 and all(n * width <= 12 or n == 1 for n, width in calls)
    assert max(width for _, width in calls) == feeds["input_ids"].shape[1]  # the long ones alone
    np.testing.assert_allclose(out, whole.features(feeds), atol=1e-5)
    np.testing.assert_allclose(parts.features(feeds), whole.features(feeds), atol=1e-5)


def test_the_token_budget_is_automatic_on_a_cpu(tiny_repo):
    folder = tiny_repo / "tiny_text" / "1"
    session = open_session(folder, Manifest.read(folder), SessionConfig(provider="cpu"))
    assert session.max_batch_tokens == 2048


@pytest.mark.slow
def test_a_batch_of_long_texts_keeps_the_sessions_memory_bounded(default_repo):
    """Fault campaign: 32 long texts raised the server's RSS by about 670 MB, once."""
    from heads.datasets import bbc_news

    folder = default_repo / "minilm_l6" / "1"
    manifest = Manifest.read(folder)
    config = SessionConfig(provider="cpu", intra_op_threads=1)
    session = open_session(folder, manifest, config)
    pre = Preprocessor(manifest, folder)
    session.features(pre.collate(pre.texts(["warm up"] * 2)))
    feeds = pre.collate(pre.texts(bbc_news()[0][:32]))
    assert feeds["input_ids"].shape == (32, 256)

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    before = rss_mb()
    session.features(feeds)
    assert rss_mb() - before < 300
