"""Which backbone made a cache: a fingerprint of its weights, checked on load."""

import hashlib
import json

import keras
import numpy as np

from keras_globalpool.pooler import split_at_pooler


def backbone_fingerprint(model):
    """A JSON-ready description of `model`'s layers before its pooler.

    `weights_sha256` hashes each weight's shape, dtype and bytes, in order,
    and not the weights' names: Keras numbers automatic names
    (`conv2d_3`) per session, so one backbone loaded twice has other names.
    `layers_sha256` hashes each layer's class and config but its name, so
    layers without weights count too (a `Rescaling` constant, a resize).
    The other entries only name the backbone in messages.

    Args:
        model: a `keras.Model` with a `"pooler"` layer.

    Returns:
        dict with `backbone`, `weights_sha256`, `layers_sha256`, `input_shape`,
        `maps_shape`, `image_data_format` and `compute_dtype`.

    Example:

    >>> backbone = keras.Sequential(
    ...     [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu")])
    >>> model = kgp.build_classifier(backbone, 3, input_shape=(8, 8, 3))
    >>> found = backbone_fingerprint(model)
    >>> len(found["weights_sha256"]), found["maps_shape"]
    (64, [None, 6, 6, 4])
    """
    features, _ = split_at_pooler(model)
    digest = hashlib.sha256()
    for weight in features.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(repr((value.shape, value.dtype.str)).encode())
        digest.update(value.tobytes())
    layers = list(features._flatten_layers(include_self=False))
    configs = hashlib.sha256()
    for layer in layers:
        config = {k: v for k, v in layer.get_config().items() if k != "name"}
        if isinstance(layer, keras.Model):  # Its layers are hashed one by one.
            config = {}
        text = json.dumps([type(layer).__name__, config], sort_keys=True, default=str)
        configs.update(text.encode())
    names = [layer.name for layer in layers]
    name = "backbone" if "backbone" in names else features.name
    description = {
        "backbone": f"{name!r} ({len(layers)} layers, {len(features.weights)} weights)",
        "weights_sha256": digest.hexdigest(),
        "layers_sha256": configs.hexdigest(),
        "input_shape": features.input_shape,
        "maps_shape": features.output_shape,
        "image_data_format": keras.config.image_data_format(),
        "compute_dtype": features.compute_dtype,
    }
    # Tuples as lists, as they come back from a manifest.
    return json.loads(json.dumps(description))


def check_fingerprint(stored, model, where):
    """Raises `ValueError` when a cache was made by a backbone other than `model`'s.

    `where` names the cache in the message: `"at <path>"`, `"passed as x"`.
    """
    if stored is None:
        return
    current = backbone_fingerprint(model)
    if stored["weights_sha256"] != current["weights_sha256"]:
        raise ValueError(
            f"The cache {where} was made by backbone {stored['backbone']} "
            f"(weights sha256 {stored['weights_sha256'][:8]}), but `model` "
            f"has {current['backbone']} (weights sha256 "
            f"{current['weights_sha256'][:8]}): its feature maps are not this "
            "model's. Recompute them with `cache_features` and save them with "
            "`save(path, overwrite=True)`."
        )
    if (
        stored.get("layers_sha256", current["layers_sha256"])
        != current["layers_sha256"]
    ):
        raise ValueError(
            f"The cache {where} was made by backbone {stored['backbone']} with "
            "the same weights as `model`'s but other layers or layer settings "
            f"(layers sha256 {stored['layers_sha256'][:8]}, `model`'s "
            f"{current['layers_sha256'][:8]}), such as another `Rescaling` "
            "or image size: its feature maps are not this model's. Recompute "
            "them with `cache_features` and save them with "
            "`save(path, overwrite=True)`."
        )
