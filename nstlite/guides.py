"""Spatial guides for style transfer with regions (Gatys et al. 2017, *Controlling Perceptual
Factors in Neural Style Transfer*, section on spatial control).

A region of the photo is a map g of weights in [0, 1] over its pixels. At each layer the
guide is carried to that layer's resolution as the network carries the image: a conv keeps
the size (zero padding), each 2x2 pooling averages the guide (the "simple" guided Gram of the
paper). With ``erode=True`` a position keeps weight only where its whole 3x3 window was in the
region at the layer below, so that a position counts for a region only when its receptive
field lies in it (the image border bounds no region: it is not eroded from).

Region maps are images whose flat colours label the regions (``masks_from_labels``).
"""
from __future__ import annotations

import numpy as np

from .errors import NstliteError


def guide_maps(layer_names, mask, layers, erode=False):
    """layer -> (h, w) float64 host guide at that layer's resolution.

    Parameters
    ----------
    layer_names : the network's layers in order (``VGG19.layer_names``)
    mask : (H, W) weights in [0, 1] at the network input's resolution
    layers : the layers to return guides for
    erode : shrink the guide by one position at each conv (a 3x3 minimum filter)
    """
    g = np.asarray(mask, dtype=np.float64)
    if g.ndim != 2:
        raise NstliteError(f"a region mask must be a 2-D map, not of shape {g.shape}")
    deepest = max(layer_names.index(n) for n in layers)
    out = {}
    for name in layer_names[: deepest + 1]:
        if name.startswith("pool"):
            h, w = g.shape[0] // 2 * 2, g.shape[1] // 2 * 2
            g = g[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))  # as avg pooling, floor mode
        elif erode:
            g = _min3x3(g)
        if name in layers:
            out[name] = g
    return out


def _min3x3(g):
    """3x3 minimum filter; the image border repeats the edge (it bounds no region)."""
    padded = np.pad(g, 1, mode="edge")
    h, w = g.shape
    return np.min([padded[i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)


def masks_from_labels(label_rgb, max_regions=16):
    """An image of flat colours -> dict '#rrggbb' -> (H, W) float mask of that colour's pixels.

    A label image drawn in a paint program should use a few flat colours; anti-aliased edges
    make many colours, refused above ``max_regions`` (one line saying how many were found).
    """
    rgb = np.asarray(label_rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise NstliteError(f"a region map must be an RGB image, not of shape {rgb.shape}")
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2].astype(np.int64)
    colours = np.unique(codes)
    if len(colours) > max_regions:
        raise NstliteError(f"the region map has {len(colours)} colours; draw it in at most {max_regions} flat "
                           "colours (no anti-aliasing, saved as PNG)")
    return {f"#{int(c):06x}": (codes == c).astype(np.float64) for c in colours}
