"""Service tiers and how they split the upstream's concurrency.

Three tiers, in priority order: reserved > paid > free. The split is a set of *shares* of capacity that hold
when every tier has work waiting; a tier with nothing to do lends its share to the busy ones (the fair
scheduler only compares tiers that have an eligible request), and takes it back as borrowed slots come free.
The formula lives here, as a pure function, so it can be tested with a table and shown to an operator as-is:

    reserved = reserved_share
    paid     = (1 - reserved_share) * paid_weight / (paid_weight + free_weight)
    free     = (1 - reserved_share) * free_weight / (paid_weight + free_weight)
    if free < free_share_min: free = free_share_min and paid gets the rest

With the defaults (20 %, 4:1, 5 % floor) that is 0.20 / 0.64 / 0.16. The floor only bites when an operator
skews the weights (say 100:1): free traffic then still keeps 5 % of the slots, so no tier can be starved by
another. Priority order only breaks exact ties. An operator without reserved customers can leave the default:
a share nobody uses is lent out in full.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final


class Tier(StrEnum):
    """A key's service tier; the value is the name used in config files and metric labels."""

    RESERVED = "reserved"
    PAID = "paid"
    FREE = "free"


# Highest priority first: ties in the tier picker go to the earlier tier.
TIERS_BY_PRIORITY: Final[tuple[Tier, ...]] = (Tier.RESERVED, Tier.PAID, Tier.FREE)


def _check_fraction(name: str, value: float) -> None:
    # Zero is refused on purpose: a tier with no share would only ever get leftovers, which is starvation.
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise ValueError(f"{name} must be a fraction in (0, 1), got {value!r}")


def _check_weight(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TierPolicy:
    """The operator's knobs for the tier split (see the module docstring for the formula)."""

    # Capacity set aside for reserved keys (the example: 20 %); others borrow it while it is idle.
    reserved_share: float = 0.2
    # Paid and free split what reserved does not hold by these weights (the default 4:1).
    paid_weight: float = 4.0
    free_weight: float = 1.0
    # Free traffic keeps at least this much even when paid_weight dwarfs free_weight.
    free_share_min: float = 0.05

    def __post_init__(self) -> None:
        _check_fraction("reserved_share", self.reserved_share)
        _check_fraction("free_share_min", self.free_share_min)
        _check_weight("paid_weight", self.paid_weight)
        _check_weight("free_weight", self.free_weight)
        if self.reserved_share + self.free_share_min >= 1.0:
            raise ValueError(
                f"reserved_share + free_share_min must leave room for paid traffic, got "
                f"{self.reserved_share!r} + {self.free_share_min!r}"
            )

    def shares(self) -> MappingProxyType[Tier, float]:
        """Each tier's fraction of capacity when all tiers are busy; the values sum to 1."""
        rest = 1.0 - self.reserved_share
        free = max(self.free_share_min, rest * self.free_weight / (self.paid_weight + self.free_weight))
        return MappingProxyType({Tier.RESERVED: self.reserved_share, Tier.PAID: rest - free, Tier.FREE: free})
