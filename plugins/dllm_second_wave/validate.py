"""attrs validators shared by the second-wave plugins' options (the spec parser has already
coerced each value to the field's type; these check the range)."""

from __future__ import annotations

import attrs

#: a probability or probability threshold: 0 <= value <= 1
unit = [attrs.validators.ge(0.0), attrs.validators.le(1.0)]
#: a non-negative float (a bound, a weight, a divergence)
non_negative = [attrs.validators.ge(0.0)]
#: a strictly positive float (an exponent)
positive = [attrs.validators.gt(0.0)]


def _not_bool(instance, attribute, value) -> None:
    if isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be an integer, got {value!r}")


def count(minimum: int) -> list:
    """An integer (not a bool) of at least ``minimum``."""
    return [attrs.validators.instance_of(int), _not_bool, attrs.validators.ge(minimum)]
