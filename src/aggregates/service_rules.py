"""Service rules attached to tiers (defaults; the tiering policy makes them versioned)."""

from types import MappingProxyType

DEFAULT_VISITS_PER_YEAR = MappingProxyType({"A": 4, "B": 2, "C": 1, "D": 0})
