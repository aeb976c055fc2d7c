"""The arguments of ``journal demo`` and ``journal fleet``."""

from __future__ import annotations

import argparse

from journal.cli import argtypes

# ----- arguments -----------------------------------------------------------------------------


_COUNT = argtypes.integer(1, 64)
_SECONDS = argtypes.seconds(24 * 3600)
_TURNS = argtypes.integer(0)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=_COUNT, default=4, metavar="N",
                   help="worker processes (default: 4)")
    p.add_argument("--sessions", type=_COUNT, default=3, metavar="N",
                   help="sessions, each shared by every worker (default: 3)")
    p.add_argument("--duration", type=_SECONDS, default=3.0, metavar="S",
                   help="seconds the workers write for (default: 3)")
    p.add_argument("--pause", type=_SECONDS, default=0.0, metavar="S",
                   help="pause of each worker between turns (default: 0)")
    p.add_argument("--group-workers", type=argtypes.integer(0, 8), default=2, metavar="N",
                   help="worker-group processes sharing the sessions' events (default: 2)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary root (it is always kept when a check fails)")


def add_fleet_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sessions", type=_COUNT, default=3, metavar="N",
                   help="how many sessions the fleet shares (default: 3)")
    p.add_argument("--prefix", default="fleet", metavar="P",
                   help="session ids are P-1 .. P-N (default: fleet)")
    p.add_argument("--duration", type=_SECONDS, default=0.0, metavar="S",
                   help="stop after S seconds (default: 0, run until stopped)")
    p.add_argument("--turns", type=_TURNS, default=0, metavar="N",
                   help="stop after N turns (default: 0, no limit)")
    p.add_argument("--pause", type=_SECONDS, default=0.0, metavar="S",
                   help="sleep between turns (default: 0)")
    p.add_argument("--worker-id", default=None, metavar="ID",
                   help="name in the events' actor (default: HOSTNAME-PID)")
    p.add_argument("--acked", default=None, metavar="FILE",
                   help="append one JSON line per acknowledged event to FILE: "
                   '{"event_id", "session_id", "branch_id", "sequence", '
                   '"acked_at" (Unix time, seconds)}')
    p.add_argument("--json", action="store_true",
                   help="print only a final JSON line of counters (for the demo)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")


