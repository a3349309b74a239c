"""Constants shared by the data pipeline, the loss and the metrics.

``IGNORE_INDEX`` is the one void label of the whole repository: Pascal VOC marks object
boundaries with 255, ADE20K's "other" (label 0) is mapped to it, crops are padded with it,
and the loss and the confusion matrix ignore it.
"""

IGNORE_INDEX = 255

# torchvision / timm ImageNet statistics (RGB, in [0, 1]); every pretrained backbone here uses them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
