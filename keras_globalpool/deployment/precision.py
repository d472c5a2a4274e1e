"""A float32 copy of a model trained under a mixed-precision policy."""


def _is_float32(model):
    policies = [layer.dtype_policy for layer in model._flatten_layers()]
    return all(policy.compute_dtype in ("float32", "float64") for policy in policies)


def _float32_config(config):
    """`config` with every layer's dtype policy set to float32."""
    if isinstance(config, dict):
        return {
            key: (
                "float32"
                if key == "dtype" and _is_mixed_policy(value)
                else _float32_config(value)
            )
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [_float32_config(value) for value in config]
    return config


def _is_mixed_policy(value):
    """Whether a layer config's `dtype` is a 16-bit or mixed policy."""
    if isinstance(value, dict) and value.get("class_name") == "DTypePolicy":
        value = value.get("config", {}).get("name")
    return isinstance(value, str) and (
        value.startswith("mixed_") or value in ("float16", "bfloat16")
    )


def float32_copy(model):
    """The model itself if it computes in float32, else a float32 copy.

    A model trained under `mixed_float16` or `mixed_bfloat16` computes in 16
    bits; exported as it is, its graph holds 16-bit ops that some runtimes
    lack (LiteRT's builtin ops) or run slowly on CPU. The copy is the same
    architecture with every layer's policy float32 and the same weights
    (float32 already, under a mixed policy).

    Args:
        model: a `keras.Model`.

    Returns:
        `model`, or a new `keras.Model` computing in float32.

    Example:

    >>> keras.config.set_dtype_policy("mixed_float16")
    >>> model = keras.Sequential([keras.Input((4, 3)), kgp.GlobalMaxPooling()])
    >>> keras.config.set_dtype_policy("float32")
    >>> copy = float32_copy(model)
    >>> model.layers[0].compute_dtype, copy.layers[0].compute_dtype
    ('float16', 'float32')
    """
    if _is_float32(model):
        return model
    config = _float32_config(model.get_config())
    copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy
