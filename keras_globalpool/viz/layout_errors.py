"""A clear error for channels_first models that TensorFlow cannot run here."""

import contextlib

import keras


@contextlib.contextmanager
def channels_first_cpu_errors(model):
    """Turns TensorFlow's NHWC-only error into a `ValueError` that says why.

    Without oneDNN (CPUs without AVX-512 by default), TensorFlow's CPU
    `Conv2D` runs only channels_last, and a channels_first model fails
    deep inside the backend with `UnimplementedError`. Inside this context
    that error becomes a `ValueError` naming the model and the fixes; any
    other error, and every other backend, is left alone.

    Args:
        model: the `keras.Model` being run, named in the message.

    Returns:
        A context manager.

    Example:

    >>> with channels_first_cpu_errors(keras.Sequential(name="net")):
    ...     print("runs as usual")
    runs as usual
    """
    if keras.backend.backend() != "tensorflow":
        yield
        return
    # Imported here so that jax and torch users need no TensorFlow.
    import tensorflow as tf

    try:
        yield
    except tf.errors.UnimplementedError as error:
        if "NHWC" not in str(error):
            raise
        # The backend's trace says nothing the user can act on; the error
        # stays on `__context__` for debugging.
        raise ValueError(
            f"Model {model.name!r} uses channels_first convolutions, which "
            "TensorFlow cannot run on this CPU without oneDNN. Build the model "
            "with data_format='channels_last', or run it on a GPU (or, where "
            "the CPU allows it, set TF_ENABLE_ONEDNN_OPTS=1 before TensorFlow "
            "is imported)."
        ) from None
