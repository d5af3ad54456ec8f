import io

import numpy as np
import pytest
from PIL import Image

from embedder.core.errors import InputError
from embedder.core.manifest import ImagePreprocess
from embedder.core.preprocess import preprocess_image_bytes

CFG = ImagePreprocess(size=(32, 32), resize_shorter=36)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_formats_and_modes_become_rgb_uint8(fmt, mode):
    """A one-colour image comes out as that colour (its grey or palette colour in L and P) in
    every pixel, in RGB order; lossy formats may move a channel by a few levels."""
    if fmt == "JPEG" and mode in ("RGBA", "P"):
        pytest.skip("JPEG has no alpha or palette")
    img = Image.new("RGB", (60, 40), (200, 30, 10)).convert(mode, dither=Image.Dither.NONE)
    colour = np.array(img.convert("RGB").getpixel((0, 0)))
    assert mode in ("L", "P") or colour.tolist() == [200, 30, 10]
    out = preprocess_image_bytes(_encode(img, fmt), CFG)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    lossy = fmt in ("JPEG", "WEBP") and mode != "L"  # (one grey level is kept exactly)
    assert np.abs(out.astype(int) - colour).max() <= (3 if lossy else 0), (colour, out[0, 0])


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (60, 40))
    img.paste((255, 0, 0), (0, 0, 30, 40))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display: the red half ends on top
    out = preprocess_image_bytes(_encode(img, "PNG", exif=exif), ImagePreprocess((36, 36), 36))
    assert out[2, 18, 0] > 200 and out[-3, 18, 0] < 50


def test_resize_shorter_then_centre_crop():
    """100x50 -> 72x36, of which columns 18-53 are kept: a white band at the far left is cropped
    away, one across the middle stays where the scale puts it."""
    img = Image.new("RGB", (100, 50), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 50))
    img.paste((255, 255, 255), (45, 0, 55, 50))  # resized: columns 32.4-39.6, cropped: 14.4-21.6
    out = preprocess_image_bytes(_encode(img, "PNG"), ImagePreprocess((36, 36), 36))
    assert out.shape == (36, 36, 3) and (out == out[:1]).all()  # every row alike
    row = out[0, :, 0]
    assert (row[15:21] == 255).all() and (row[:13] == 0).all() and (row[23:] == 0).all(), row


@pytest.mark.parametrize("size", [(100, 50), (50, 100), (64, 64)])
@pytest.mark.parametrize("cfg", [ImagePreprocess((36, 36), 36), CFG])
def test_resize_and_crop_equal_pil_on_the_whole_image(size, cfg):
    """A gradient (red across, green down) resized whole with PIL, then centre-cropped: the same
    pixels as ours, which resizes only the box it keeps."""
    w, h = size
    across, down = np.linspace(0, 255, w), np.linspace(0, 255, h)
    pixels = np.stack([np.tile(across, (h, 1)), np.tile(down[:, None], (1, w)),
                       np.full((h, w), 90)], axis=-1).round().astype(np.uint8)  # fmt: skip
    img = Image.fromarray(pixels)
    scale = cfg.resize_shorter / min(w, h)
    new_w, new_h = round(w * scale), round(h * scale)
    (out_h, out_w), left, top = cfg.size, (new_w - cfg.size[1]) // 2, (new_h - cfg.size[0]) // 2
    whole = np.asarray(img.resize((new_w, new_h), Image.Resampling.BILINEAR))
    expected = whole[top : top + out_h, left : left + out_w]
    out = preprocess_image_bytes(_encode(img, "PNG"), cfg)
    np.testing.assert_array_equal(out, expected)


def test_decompression_bomb_refused_before_decoding():
    data = _encode(Image.new("L", (5000, 5000)), "PNG")  # tiny file, 25 Mpx once decoded
    assert len(data) < 100_000
    with pytest.raises(InputError, match="over the limit"):
        preprocess_image_bytes(data, CFG, max_pixels=1_000_000)


@pytest.mark.parametrize(
    "data", [b"", b"not an image", _encode(Image.new("RGB", (50, 50)), "JPEG")[:200]]
)
def test_undecodable_bytes(data):
    with pytest.raises(InputError):
        preprocess_image_bytes(data, CFG)


def test_an_icon_wrapping_a_huge_png_is_refused_without_decoding_it():
    # An ICO's header says 16x16, but Pillow would decode the embedded PNG inside Image.open.
    big = _encode(Image.new("L", (4000, 4000)), "PNG")
    icon = _encode(Image.new("RGB", (16, 16)), "ICO", sizes=[(16, 16)])
    header, entry = icon[:6], bytearray(icon[6:22])
    entry[8:12] = len(big).to_bytes(4, "little")  # the one entry now points at the big PNG
    entry[12:16] = (6 + 16).to_bytes(4, "little")
    crafted = header + bytes(entry) + big
    assert Image.open(io.BytesIO(crafted)).format == "ICO"  # Pillow alone would take it
    with pytest.raises(InputError, match="not one of the accepted formats"):
        preprocess_image_bytes(crafted, CFG, max_pixels=1_000_000)


def test_16_bit_grey_is_scaled_not_clipped():
    grey = np.full((40, 60), 128 * 257, np.uint16)  # mid-grey in 16 bits
    img16 = Image.fromarray(grey)
    assert img16.mode.startswith("I")
    out = preprocess_image_bytes(_encode(img16, "PNG"), CFG)
    assert out.shape == (32, 32, 3) and np.all(out == 128)
