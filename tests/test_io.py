"""Image and mask readers: every mode becomes RGB / indices, every bad file names itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.io import CorruptSampleError, read_image, read_mask
from tests.data_fixtures import image_array, label_array, write_jpeg, write_l_png, write_palette_png

H, W = 20, 28


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return image_array(H, W, seed=3)


def _pil_rgb(path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)


@pytest.mark.parametrize("decoder", ["torchvision", "pil"])
@pytest.mark.parametrize(
    "mode,ext",
    [
        ("RGB", "jpg"),
        ("L", "jpg"),
        ("CMYK", "jpg"),
        ("L", "png"),
        ("P", "png"),
        ("RGBA", "png"),
        ("LA", "png"),
        ("RGB", "bmp"),
    ],
)
def test_read_image_any_mode_becomes_rgb(tmp_path, rgb, mode, ext, decoder):
    path = tmp_path / f"x_{mode}.{ext}"
    Image.fromarray(rgb).convert(mode).save(path)
    assert Image.open(path).mode == mode  # the fixture really is in that mode
    img = read_image(path, decoder=decoder)
    assert img.dtype == torch.uint8 and img.shape == (3, H, W)
    assert torch.equal(img, _pil_rgb(path))  # same pixels as Pillow's own RGB conversion


def test_read_image_16bit_is_rescaled_not_clipped(tmp_path):
    a = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 100).astype(np.uint16)
    path = tmp_path / "x16.png"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode.startswith("I;16")
    img = read_image(path)
    assert img.shape == (3, H, W)
    expected = torch.from_numpy(np.rint(a / 257.0).astype(np.uint8))
    assert torch.equal(img[0], expected) and torch.equal(img[1], img[2])
    assert int(img.max()) < 255  # clipping would saturate most pixels


def test_torchvision_and_pil_jpeg_decoders_agree(tmp_path, rgb):
    path = write_jpeg(tmp_path / "x.jpg", rgb)
    assert torch.equal(read_image(path, "torchvision"), read_image(path, "pil"))


@pytest.mark.parametrize("decoder", ["torchvision", "pil"])
@pytest.mark.parametrize("keep", [0.5, 0.95, 20])
def test_truncated_jpeg_names_the_file(tmp_path, rgb, decoder, keep):
    data = write_jpeg(tmp_path / "full.jpg", rgb).read_bytes()
    n = keep if isinstance(keep, int) else int(len(data) * keep)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[:n])
    with pytest.raises(CorruptSampleError, match="cut.jpg") as e:
        read_image(path, decoder=decoder)
    assert "corrupt or truncated" in str(e.value)


def test_garbage_and_empty_image_files(tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8\xff" + b"not a jpeg at all" * 5)
    with pytest.raises(CorruptSampleError, match="junk.jpg"):
        read_image(junk)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(CorruptSampleError, match=r"empty.jpg.*0 bytes"):
        read_image(empty)
    with pytest.raises(FileNotFoundError, match="nothere.jpg"):
        read_image(tmp_path / "nothere.jpg")


def test_read_mask_palette_gives_indices_not_colours(tmp_path):
    m = label_array(H, W, [3, 15], seed=1)
    assert 255 in m
    path = write_palette_png(tmp_path / "m.png", m)
    out = read_mask(path)
    assert out.dtype == torch.int64 and out.shape == (H, W)
    assert torch.equal(out, torch.from_numpy(m.astype(np.int64)))
    out_l = read_mask(write_l_png(tmp_path / "l.png", m))
    assert torch.equal(out_l, out)


def test_rgb_mask_is_rejected_with_a_hint(tmp_path):
    m = label_array(H, W, [3], seed=1)
    path = tmp_path / "rgb_mask.png"
    Image.fromarray(m, mode="P").convert("RGB").save(path)  # what a careless conversion does
    with pytest.raises(CorruptSampleError, match="rgb_mask.png") as e:
        read_mask(path)
    assert "'RGB'" in str(e.value) and "palette indices" in str(e.value)


def test_truncated_and_missing_mask(tmp_path):
    m = label_array(64, 64, [3, 7], seed=2)
    data = write_palette_png(tmp_path / "ok.png", m).read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptSampleError, match="cut.png"):
        read_mask(cut)
    with pytest.raises(FileNotFoundError, match="gone.png"):
        read_mask(tmp_path / "gone.png")
