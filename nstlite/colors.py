"""Keeping the photograph's colours: the two methods of Gatys et al. (2017).

Reference
---------
L. A. Gatys, A. S. Ecker, M. Bethge, A. Hertzmann, E. Shechtman. *Controlling Perceptual
Factors in Neural Style Transfer*. CVPR 2017, section 5 ("Colour control").

* Luminance-only transfer: style transfer runs on the luminance channel only (Y of YIQ); the
  style's luminance is first matched to the content's mean and standard deviation,
  ``L_s' = sigma_c / sigma_s (L_s - mu_s) + mu_c``; the output is the result's Y with the
  photograph's I and Q.
* Colour histogram matching: the style image's colours are mapped linearly,
  ``x' = A x + b``, so that their mean and covariance equal the photograph's:
  ``A = Sigma_c^(1/2) Sigma_s^(-1/2)`` (symmetric square roots), ``b = mu_c - A mu_s``.
  Transfer then runs on the recoloured style image as usual.

All functions take H x W x 3 float host arrays in 0..255 (the float32 images of
``nstlite.image``, or float64) and compute and return float64 (this is host code; the
images here are at the size of one scale, not the full-resolution decodes).
"""
import numpy as np

METHODS = ("luminance", "histogram")

# NTSC YIQ from RGB (rows: Y, I, Q).
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.595716, -0.274453, -0.321263],
                        [0.211456, -0.522591, 0.311135]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def rgb_to_yiq(rgb):
    """H x W x 3 RGB -> H x W x 3 YIQ (same units)."""
    return rgb @ _RGB_TO_YIQ.T


def yiq_to_rgb(yiq):
    """Inverse of ``rgb_to_yiq`` (unclipped)."""
    return yiq @ _YIQ_TO_RGB.T


def luminance(rgb):
    """Y channel, H x W."""
    return rgb @ _RGB_TO_YIQ[0]


def grey_rgb(y):
    """H x W luminance -> H x W x 3 grey image (what the network sees in luminance mode)."""
    return np.repeat(np.clip(y, 0.0, 255.0)[..., None], 3, axis=2)


def match_luminance(style_y, content_y):
    """Style luminance with the content's mean and standard deviation (Gatys et al. 2017)."""
    mu_s, sd_s = style_y.mean(), style_y.std()
    mu_c, sd_c = content_y.mean(), content_y.std()
    return (style_y - mu_s) * (sd_c / max(sd_s, 1e-6)) + mu_c


def combine_luminance(result_rgb, content_rgb):
    """The result's luminance with the photograph's chrominance (I, Q), clipped to 0..255."""
    yiq = rgb_to_yiq(content_rgb)
    yiq[..., 0] = luminance(result_rgb)
    return np.clip(yiq_to_rgb(yiq), 0.0, 255.0)


def _sym_power(cov, p):
    """cov^p for a symmetric positive semi-definite 3 x 3 matrix (eigenvalues floored)."""
    vals, vecs = np.linalg.eigh(cov)
    vals = np.maximum(vals, 1e-6)
    return (vecs * vals ** p) @ vecs.T


def match_color_histogram(style_rgb, content_rgb):
    """Recolour the style image so its colour mean and covariance are the photograph's."""
    s = np.asarray(style_rgb, dtype=np.float64).reshape(-1, 3)  # means and covariances in float64
    c = np.asarray(content_rgb, dtype=np.float64).reshape(-1, 3)
    mu_s, mu_c = s.mean(axis=0), c.mean(axis=0)
    cov_s = np.cov(s, rowvar=False) + 1e-3 * np.eye(3)
    cov_c = np.cov(c, rowvar=False) + 1e-3 * np.eye(3)
    A = _sym_power(cov_c, 0.5) @ _sym_power(cov_s, -0.5)
    out = (s - mu_s) @ A.T + mu_c
    return np.clip(out, 0.0, 255.0).reshape(style_rgb.shape)
