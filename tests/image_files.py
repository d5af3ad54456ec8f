"""Image files for batch-export tests: real PNG and JPEG files, a corrupt and a truncated one,
a duplicate, and a file that is not an image."""

import numpy as np
from PIL import Image


def make_images(root, per_class=6, size=(48, 40)):
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            fmt = "png" if i % 2 else "jpg"
            Image.fromarray(pixels).save(root / label / f"{i}.{fmt}")
    (root / "cats" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg")
    good = (root / "dogs" / "0.jpg").read_bytes()
    (root / "dogs" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "dogs" / "copy_of_0.jpg").write_bytes(good)  # identical content: embedded once
    (root / "dogs" / "notes.txt").write_text("not an image, not listed")
    return root
