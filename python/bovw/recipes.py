"""Recipes of the main job: which descriptors, how each is encoded, weighted
and normalised, and the classifier that reads their concatenation.

A recipe is a list of :class:`ChannelSpec` (one extractor and its encoding
each) and classifier settings. ``bovw run --recipe NAME`` (or
``RunConfig(recipe=NAME)``) picks one; ``bovw recipes`` lists them.

==================  ==========================================================
``cnn+color``       The default. EfficientNet-Lite0's 1280-d pooled ImageNet
                    features (:class:`bovw.CNNEmbedding`) beside a 288-bin
                    HSV colour histogram (18 x 4 x 4, near-white background
                    masked, square-rooted; :class:`bovw.ColorHistogram`),
                    each L2-normalised, then a logistic regression (C = 100)
                    on the concatenation; no PCA.
``cnn``             The CNN channel alone.
``color``           The colour histogram alone (no weights to install).
``phow+fisher``     The bag-of-visual-words recipe of the literature: PHOW
                    on HSV (:class:`bovw.PHOW`, bin sizes 4-10, step 4),
                    PCA to 64 dimensions, improved Fisher vectors over a
                    32-component diagonal GMM with a 1x1 + 2x2 spatial
                    pyramid (Perronnin et al. 2010; Sánchez et al. 2013;
                    Lazebnik et al. 2006; 20,480 dimensions), beside the
                    colour histogram.
``bow`` (``seed``)  The seed notebooks' pipeline: ``--method`` (SIFT by
                    default) descriptors, a K-Means (or k-majority)
                    vocabulary of ``--k`` visual words, word counts, PCA and
                    a standardised logistic regression (C = 1).
==================  ==========================================================

How the defaults were chosen (validation splits only; the Test splits were
not read): ``benches/py/recipes_c_grid.py`` trains on Fruits-360's Training
folder minus a seeded 25 % validation part and on the grocery store's
``train`` split, and scores on that part and on ``val``, with per-channel L2
and a logistic regression (C in 1, 10, 100, 1000; best C shown);
``benches/py/recipes_validation.py`` runs a recipe through ``bovw run``
itself on the same splits (grocery ``cnn+color``: 77.6 %, C chosen on val):

========================  ==================  ================
recipe                    Fruits-360 (val)    grocery (val)
========================  ==================  ================
color                     99.85 % (C=100)     40.3 % (C=10)
cnn (224, grocery)        --                  79.1 % (C=100)
cnn (native 100 px)       99.54 % (C=100)     --
cnn (96 px)               99.59 % (C=100)     --
cnn+color                 100.0 % (C=100)     77.6 % (C=100)
========================  ==================  ================

C = 100 is the best on both sets for the CNN recipes. When the data has a
Validation split, the job chooses C again on it (``bovw.job.select_c``: C in
1, 10, 100, 1000, fitted on Training, scored on Validation; recorded in
``run.json`` under ``recipe.model_selection``). The colour channel
costs 1.5 points on grocery's 196 validation photos (3 photos, inside the
noise of so small a split) and removes the CNN's errors on Fruits-360, so
the default keeps both.

The CNN's input size follows the images: ``input_size="auto"`` runs it at
224 x 224 (the size it was trained at) unless the training images are
smaller, in which case it runs at their median shorter side rounded down
to the network's stride, 32 (:func:`cnn_input_size`; Fruits-360: 96 px,
about six times less work than upsampling to 224 and a fifth less than
100 px, at the same validation score: ``python
benches/py/recipes_c_grid.py fruits cnn_native cnn96 cnn_native+color
cnn96+color``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

__all__ = ["ChannelSpec", "Recipe", "RECIPES", "ALIASES", "DEFAULT_RECIPE", "get_recipe", "cnn_input_size"]


@dataclass(frozen=True)
class ChannelSpec:
    """One channel of a recipe.

    Attributes
    ----------
    method : str
        Extractor name (:data:`bovw.EXTRACTORS`).
    params : dict
        Extractor parameters; ``input_size="auto"`` for ``cnn`` is resolved
        from the training images (:func:`cnn_input_size`).
    encoding : {"global", "bow", "fisher", "vlad"}
        How an image's descriptors become one vector: the global descriptor
        itself, a bag of visual words (K-Means / k-majority), a Fisher
        vector (:class:`bovw.FisherVector`) or VLAD (:class:`bovw.VLAD`).
    encoding_params : dict
        Parameters of that encoder.
    normalize : {"l2", None}
        Per-channel normalisation before concatenation.
    weight : float
        Scale of the normalised channel in the concatenation.
    """

    method: str
    params: dict = field(default_factory=dict)
    encoding: str = "global"
    encoding_params: dict = field(default_factory=dict)
    normalize: Optional[str] = "l2"
    weight: float = 1.0


@dataclass(frozen=True)
class Recipe:
    """A named recipe: channels, PCA and classifier defaults.

    Attributes
    ----------
    name : str
    description : str
    channels : tuple of ChannelSpec
        Empty for ``bow``, whose one channel comes from the job's
        ``method``/``k``/``vocabulary`` options.
    pca : int, float or None
        PCA when ``--pca`` is not given.
    classifier_params : dict
        Keyword arguments of :func:`bovw.model.make_classifier` (``C``,
        ``standardize``) for ``--classifier logreg``.
    """

    name: str
    description: str
    channels: tuple = ()
    pca: Any = None
    classifier_params: dict = field(default_factory=dict)


_COLOR = ChannelSpec("color", {"space": "hsv", "bins": (18, 4, 4), "mask": "white", "sqrt": True})
_CNN = ChannelSpec("cnn", {"input_size": "auto"})

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("cnn+color", "EfficientNet-Lite0 ImageNet features + HSV colour histogram, logistic regression",
               (_CNN, _COLOR), None, {"C": 100.0, "standardize": False}),
        Recipe("cnn", "EfficientNet-Lite0 ImageNet features, logistic regression",
               (_CNN,), None, {"C": 100.0, "standardize": False}),
        Recipe("color", "HSV colour histogram (18x4x4, white masked, square-rooted), logistic regression",
               (_COLOR,), None, {"C": 100.0, "standardize": False}),
        Recipe("phow+fisher", "PHOW (HSV) Fisher vectors with a 1x1+2x2 spatial pyramid + colour histogram",
               (ChannelSpec("phow", {"color": "hsv", "step": 4}, "fisher",
                            {"n_components": 32, "spatial_pyramid": (1, 2), "descriptor_pca": 64}), _COLOR),
               None, {"C": 100.0, "standardize": False}),
        Recipe("bow", "--method descriptors, K-Means vocabulary, bag of visual words, PCA, logistic regression",
               (), 0.95, {"C": 1.0, "standardize": True}),
    )
}

#: The recipe of ``bovw run`` without ``--recipe`` or ``--method``.
DEFAULT_RECIPE = "cnn+color"


#: Other names of recipes: ``seed`` is the seed notebooks' pipeline.
ALIASES = {"seed": "bow"}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (or one of its :data:`ALIASES`).

    Raises
    ------
    ValueError
        If there is none (the message lists the names).
    """
    try:
        return RECIPES[ALIASES.get(name, name)]
    except KeyError:
        raise ValueError(f"recipe: expected one of {sorted([*RECIPES, *ALIASES])}, got {name!r}") from None


def cnn_input_size(sizes: list[tuple[int, int]], largest: int = 224, smallest: int = 32, stride: int = 32) -> int:
    """The CNN input size for images of these (width, height) sizes.

    ``largest`` (the size the network was trained at) when the median
    shorter side reaches it or ``sizes`` is empty; otherwise that median
    rounded down to a multiple of ``stride`` (the network's total stride,
    32 for EfficientNet-Lite0), at least ``smallest``. At a multiple of the
    stride every cell of the last feature map covers image pixels: at
    100 px its fourth row and column would see 4 image pixels and 28 of
    padding (Fruits-360: 96 px, 21 % less work than 100 px, same validation
    score; see the table in the module docstring).

    Parameters
    ----------
    sizes : list of (int, int)
        (width, height) of some training images, pixels.
    largest, smallest, stride : int
        Pixels.

    Returns
    -------
    int
        The side of the square network input, pixels.
    """
    if not sizes:
        return largest
    side = int(np.median([min(w, h) for w, h in sizes]))
    if side >= largest:
        return largest
    return int(max(smallest, side // stride * stride))
