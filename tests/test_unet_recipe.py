"""U-Net Sec. 3.1: the elastic deformation of ``augment="unet"`` (image and mask through the same
displacement field, masks nearest only) and the drop-out at the end of the contracting path."""

from __future__ import annotations

import torch
from torchvision import tv_tensors

from datamodules.transforms import ElasticDeformation, train_transforms
from models.unet import UNet


def blocks_mask(h: int = 48, w: int = 56) -> torch.Tensor:
    """Labels 1..4 in 12-px blocks: many boundaries for a deformation to move."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (1 + (y // 12 + x // 12) % 4).to(torch.uint8)


def test_elastic_deformation_moves_image_and_mask_identically():
    mask = blocks_mask()
    colours = torch.tensor([[0, 0, 0], [200, 10, 10], [10, 200, 10], [10, 10, 200], [120, 120, 0]],
                           dtype=torch.uint8)
    image = colours[mask.long()].permute(2, 0, 1).contiguous()  # the mask, painted
    torch.manual_seed(0)
    warp = ElasticDeformation(grid=3, sigma=10.0, image_interpolation="nearest")
    out_image, out_mask = warp(tv_tensors.Image(image), tv_tensors.Mask(mask))
    assert not torch.equal(out_mask, mask)  # it did deform
    assert torch.equal(out_image, colours[out_mask.long()].permute(2, 0, 1))  # the same field


def test_elastic_deformation_keeps_labels_a_subset_and_bilinear_images_follow():
    mask = blocks_mask()
    image = (mask * 50).expand(3, -1, -1).contiguous()
    for seed in range(5):
        torch.manual_seed(seed)
        out_image, out_mask = ElasticDeformation()(tv_tensors.Image(image), tv_tensors.Mask(mask))
        assert set(out_mask.unique().tolist()) <= {1, 2, 3, 4}
        assert out_mask.dtype == torch.uint8 and out_mask.shape == mask.shape
        # bilinear image: equal to the painted mask except where it blends across a boundary
        agree = (out_image[0] == out_mask * 50).float().mean()
        assert agree > 0.8, agree


def test_displacements_come_from_a_3x3_grid_of_sigma_10_px():
    torch.manual_seed(0)
    warp = ElasticDeformation(grid=3, sigma=10.0)
    params = [warp.make_params([tv_tensors.Image(torch.zeros(1, 41, 61, dtype=torch.uint8))]) for _ in range(300)]
    d = torch.stack([p["displacement"] for p in params])            # (300, 2, 41, 61)
    grid_points = d[:, :, ::20, ::30]                                # the 3×3 control points
    assert abs(grid_points.std().item() - 10.0) < 1.0
    # smooth: neighbouring pixels move almost alike (bicubic between points 20-30 px apart)
    assert (d[..., 1:, :] - d[..., :-1, :]).abs().max() < 0.3 * d.abs().max()


def test_unet_augment_pipeline_shapes():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    mask = blocks_mask(50, 70)
    x, y = train_transforms(40, augment="unet")(image, mask)
    assert x.shape == (3, 40, 40) and y.shape == (40, 40) and x.dtype == torch.float32
    assert set(y.unique().tolist()) <= {1, 2, 3, 4, 255}  # 255: rotation and crop fill


def test_unet_dropout_is_active_in_training_only():
    model = UNet(num_classes=3, base_channels=4, depth=2, padding="same")
    assert model.encoder_dropout.p == 0.5 and model.bottleneck[-1].p == 0.5  # the paper preset's
    x = torch.randn(1, 3, 32, 32)
    model.train()
    a, b = model(x)["out"], model(x)["out"]
    assert not torch.allclose(a, b)
    model.eval()
    assert torch.equal(model(x)["out"], model(x)["out"])
    off = UNet(num_classes=3, base_channels=4, depth=2, padding="same", dropout=0.0).train()
    assert torch.equal(off(x)["out"], off(x)["out"])
