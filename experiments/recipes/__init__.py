"""Each paper's training and evaluation recipe, written once, with the source of every value.

One module per paper (``fcn``, ``deeplab``, ``deeplab_v3``, ``pspnet``, ``unet``,
``mask_rcnn``); each defines ``PAPER`` (a complete :class:`experiments.recipe.Recipe`) and the
ablation scripts import it. A value that differs from the paper is named in the recipe's
``notes`` (printed on every recipe card), never hidden in a default.
"""
