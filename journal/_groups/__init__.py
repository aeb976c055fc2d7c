"""Worker groups: horizontally scaled workers share the sessions (README, "Worker groups").

``engine`` holds the protocol (sans-IO), ``shell`` its sync and async shells, ``store`` the
durable checkpoints and parked events, ``keys`` the Redis names, ``admin`` what the
``journal group`` command does, and ``lua/`` the scripts.
"""

from journal._groups.engine import ConsumeOptions, Delivery
from journal._groups.shell import (
           AsyncDeliveries,
           AsyncDelivery,
           SyncDeliveries,
           SyncDelivery,
           make_worker,
)

__all__ = ["AsyncDeliveries", "AsyncDelivery", "ConsumeOptions", "Delivery", "SyncDeliveries",
           "SyncDelivery", "make_worker"]
