"""Backbones: VGG16 (written here, with timm-compatible weight names), dilated ResNet and aligned
Xception-65 (from timm). Pretrained ImageNet weights come from timm; see ``models.pretrained``."""
