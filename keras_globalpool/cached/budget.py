"""`memory_budget`: how many bytes of feature maps `cache_features` keeps in RAM."""

import re

# Of the memory available when caching starts, the share the maps may use.
AVAILABLE_SHARE = 0.25
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def available_bytes():
    """`MemAvailable` from `/proc/meminfo`, or `None` where there is none."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def parse(memory_budget):
    """`memory_budget` (`None`, bytes, or a string such as `"512MB"`) in bytes."""
    if memory_budget is None:
        available = available_bytes()
        return None if available is None else int(available * AVAILABLE_SHARE)
    if isinstance(memory_budget, bool):
        raise _invalid(memory_budget)
    if isinstance(memory_budget, int):
        if memory_budget <= 0:
            raise _invalid(memory_budget)
        return memory_budget
    if isinstance(memory_budget, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", memory_budget)
        if match and match.group(2).upper() in _UNITS:
            value = float(match.group(1)) * _UNITS[match.group(2).upper()]
            if value >= 1:
                return int(value)
    raise _invalid(memory_budget)


def _invalid(memory_budget):
    return ValueError(
        "`memory_budget` must be a positive number of bytes, as an int or a "
        "string such as '512MB' or '2GiB', or None for "
        f"{AVAILABLE_SHARE:.0%} of the available memory. "
        f"Received: memory_budget={memory_budget!r}"
    )


def human(size):
    """`size` bytes as a short string, such as `'737 KB'`."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.3g} {unit}"
        size /= 1000


def check_one_batch(memory_budget, budget, batch):
    """Raises when one batch of maps (`batch`) alone exceeds the budget."""
    if batch.nbytes > budget:
        row = batch[:1].nbytes
        raise ValueError(
            f"`memory_budget`={memory_budget!r} ({human(budget)}) is below one "
            f"batch of feature maps, {len(batch)} x {human(row)} = "
            f"{human(batch.nbytes)}: caching holds at least one batch in "
            "memory. Pass a larger `memory_budget` or a smaller `batch_size`. "
            f"Received: memory_budget={memory_budget!r}"
        )
