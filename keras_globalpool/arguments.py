"""The argument checks the package shares, each a Keras-style `ValueError`.

Every message names the argument, what it allows and what it received:
``"`mode` must be one of {'concat', 'mean'}. Received: mode='sum'"``.
"""

import math
import numbers

DATA_FORMATS = ("channels_last", "channels_first")


def check_option(name, value, allowed):
    """Raises a `ValueError` unless `value` is one of `allowed`.

    Args:
        name: string. The argument's name.
        value: the value received.
        allowed: tuple of the allowed values.

    Returns:
        `value`, unchanged.

    Example:

    >>> check_option("data_format", "channels_last", DATA_FORMATS)
    'channels_last'
    >>> check_option("data_format", "NHWC", DATA_FORMATS)
    Traceback (most recent call last):
    ValueError: `data_format` must be one of {'channels_last', 'channels_first'}. Received: data_format='NHWC'
    """  # noqa: E501
    if value not in allowed:
        choices = "{" + ", ".join(repr(a) for a in allowed) + "}"
        raise ValueError(
            f"`{name}` must be one of {choices}. Received: {name}={value!r}"
        )
    return value


def is_positive_int(value):
    """Whether `value` is an integer >= 1 (`True` is not).

    Example:

    >>> is_positive_int(3), is_positive_int(0), is_positive_int(True)
    (True, False, False)
    """
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and value >= 1
    )


def check_positive_int(name, value, allow_none=False):
    """Raises a `ValueError` unless `value` is an integer >= 1.

    Args:
        name: string. The argument's name.
        value: the value received.
        allow_none: bool. Whether `None` is allowed too.

    Returns:
        `value`, unchanged.

    Example:

    >>> check_positive_int("reduction", 4)
    4
    >>> check_positive_int("reduction", 2.5)
    Traceback (most recent call last):
    ValueError: `reduction` must be an integer >= 1. Received: reduction=2.5
    """
    if (value is None and allow_none) or is_positive_int(value):
        return value
    allowed = "None or an integer >= 1" if allow_none else "an integer >= 1"
    raise ValueError(f"`{name}` must be {allowed}. Received: {name}={value!r}")


def check_rate(name, value):
    """Raises a `ValueError` unless `value` is a number in [0, 1).

    Args:
        name: string. The argument's name, such as `"dropout"`.
        value: the value received.

    Returns:
        `value`, unchanged.

    Example:

    >>> check_rate("dropout", 0.2)
    0.2
    >>> check_rate("dropout", 1)
    Traceback (most recent call last):
    ValueError: `dropout` must be a number in [0, 1). Received: dropout=1
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0 <= value < 1
    ):
        raise ValueError(
            f"`{name}` must be a number in [0, 1). Received: {name}={value!r}"
        )
    return value


def check_bool(name, value):
    """Raises a `ValueError` unless `value` is `True` or `False`.

    Args:
        name: string. The argument's name.
        value: the value received.

    Returns:
        `value` as a Python bool.

    Example:

    >>> check_bool("gated", True)
    True
    >>> check_bool("gated", "yes")
    Traceback (most recent call last):
    ValueError: `gated` must be a bool. Received: gated='yes'
    """
    if value not in (True, False):
        raise ValueError(f"`{name}` must be a bool. Received: {name}={value!r}")
    return bool(value)


def check_positive_finite(name, value, allow_none=False):
    """Raises a `ValueError` unless `value` is a finite real number > 0.

    Args:
        name: string. The argument's name.
        value: the value received.
        allow_none: bool. Whether `None` is allowed too.

    Returns:
        `value` as a Python float, or `None`.

    Example:

    >>> check_positive_finite("p", 3)
    3.0
    >>> check_positive_finite("p", float("inf"))
    Traceback (most recent call last):
    ValueError: `p` must be a finite number > 0. Received: p=inf
    >>> check_positive_finite("gamma", "2", allow_none=True)
    Traceback (most recent call last):
    ValueError: `gamma` must be None or a finite number > 0. Received: gamma='2'
    """
    if value is None and allow_none:
        return None
    if not (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    ):
        allowed = "None or a finite number > 0" if allow_none else "a finite number > 0"
        raise ValueError(f"`{name}` must be {allowed}. Received: {name}={value!r}")
    return float(value)
