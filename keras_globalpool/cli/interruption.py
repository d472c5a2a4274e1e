"""Telling Ctrl-C apart from errors, even after TensorFlow wrapped it."""


def is_interruption(error):
    """Whether `error` is, or was caused by, a `KeyboardInterrupt`.

    Ctrl-C inside TensorFlow (tracing, a `tf.function`, writing a
    SavedModel) often surfaces as another error, such as a `RuntimeError`
    whose message ends "REPLACED BY KeyboardInterrupt", or one raised while
    handling the interrupt. The chain of causes and contexts is followed.

    Args:
        error: a `BaseException`.

    Returns:
        bool.

    Example:

    >>> from keras_globalpool.cli.interruption import is_interruption
    >>> is_interruption(RuntimeError("... REPLACED BY KeyboardInterrupt"))
    True
    >>> is_interruption(ValueError("bad value"))
    False
    """
    seen = set()
    pending = [error]
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, KeyboardInterrupt) or "KeyboardInterrupt" in str(error):
            return True
        pending += [error.__cause__, error.__context__]
    return False
