"""The masked softmax and the layer norm that the attention poolings share."""

import numpy as np


def _masked_softmax(logits, valid):
    """Softmax over the last axis, valid entries only; all zeros if none."""
    peak = np.where(valid, logits, -np.inf).max(axis=-1, keepdims=True)
    shifted = np.where(valid, logits - np.where(np.isfinite(peak), peak, 0.0), 0.0)
    e = np.where(valid, np.exp(shifted), 0.0)
    return e / np.maximum(e.sum(axis=-1, keepdims=True), np.finfo(np.float64).tiny)


# The epsilon of MAP's layer norms (timm's ViT, SigLIP).
LAYER_NORM_EPSILON = 1e-6


def _layer_norm(x, gamma, beta, epsilon=LAYER_NORM_EPSILON):
    """Layer norm over the last axis; returns `(y, (x_hat, inv_std))`.

    Centered twice: the second pass removes the rounding error of the first
    mean, which is of the values' size and would dominate the centered
    values of channels that agree to many digits.
    """
    centered = x - x.mean(axis=-1, keepdims=True)
    centered = centered - centered.mean(axis=-1, keepdims=True)
    inv_std = 1.0 / np.sqrt(np.mean(centered**2, axis=-1, keepdims=True) + epsilon)
    x_hat = centered * inv_std
    return x_hat * gamma + beta, (x_hat, inv_std)


def _layer_norm_grad(dy, gamma, cache):
    """Returns `(dx, dgamma, dbeta)` of `_layer_norm`."""
    x_hat, inv_std = cache
    d_hat = dy * gamma
    dx = inv_std * (
        d_hat
        - d_hat.mean(axis=-1, keepdims=True)
        - x_hat * np.mean(d_hat * x_hat, axis=-1, keepdims=True)
    )
    leading = tuple(range(dy.ndim - 1))
    return dx, np.sum(dy * x_hat, axis=leading), np.sum(dy, axis=leading)
