"""Errors of the secure-aggregation protocol.

Three kinds, so callers can react differently:
- `ProtocolRefusal`: a party refuses a message (bad signature, replay, a server lying about who dropped, a
  request to reveal both kinds of shares for one peer, a plan weaker than the party's policy). The message is
  not answered; nothing secret leaves.
- `ThresholdError`: too few parties are left to finish an instance (fewer than `threshold` shares for some
  secret, fewer survivors than the minimum). The instance's aggregate is lost; nothing is revealed that the
  protocol would not reveal anyway.
- `AggregateOverflow`: a value outside the agreed fixed-point range (client input above its bound, or a
  decoded sum outside the range the modulus guarantees). Never a silent wrap.
"""

from __future__ import annotations


class SecAggError(Exception):
    """Base class of all secure-aggregation errors."""


class ProtocolRefusal(SecAggError):
    """A party refused a message because it violates the protocol or the party's policy."""


class ThresholdError(SecAggError):
    """Not enough parties (shares, survivors) remain to complete an instance."""


class AggregateOverflow(SecAggError, OverflowError):
    """A value does not fit the agreed fixed-point range."""
