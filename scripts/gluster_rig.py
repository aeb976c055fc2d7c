#!/usr/bin/env python3
"""Start the GlusterFS rig by hand, or run the long multi-host suite on it.

    .venv/bin/python scripts/gluster_rig.py            # start; print the mounts and a Redis URL;
                                                        # Ctrl-C tears everything down
    .venv/bin/python scripts/gluster_rig.py --suite    # JOURNAL_MULTIHOST_LONG=1 pytest
                                                        # tests/test_multihost.py

The rig (tests/gluster.py): glusterd with its state in a temporary directory, one volume on a
local brick with the coherent volume options, two FUSE mounts (hosts a and b) with the
coherent mount options, all inside a private network namespace; plus a private
redis-server. Everything is killed by pid and unmounted on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from journal.testing import RedisServer  # noqa: E402
from tests import gluster  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", action="store_true",
                    help="run the long multi-host suite instead (JOURNAL_MULTIHOST_LONG=1)")
    args, rest = ap.parse_known_args()
    if args.suite:
        env = dict(os.environ, JOURNAL_MULTIHOST_LONG="1")
        return subprocess.call([sys.executable, "-m", "pytest", "-v",
                                str(REPO / "tests" / "test_multihost.py"), *rest],
                               env=env, cwd=REPO)
    reason = gluster.skip_reason()
    if reason:
        print(f"gluster_rig: the GlusterFS rig cannot run here: {reason}", file=sys.stderr)
        return 1
    base = Path(tempfile.mkdtemp(prefix="gluster-rig-"))
    with gluster.GlusterRig(base / "rig") as rig, RedisServer(dir=base / "redis") as srv:
        print(f"volume {rig.volume}, logs in {rig.logs}")
        for name, point in rig.hosts.items():
            print(f"host {name}: {point}")
        print(f"redis: {srv.url}")
        print(f"try: journal --root {rig.hosts['a']}/data --redis-url {srv.url} append s1 "
              "--next --kind '{\"type\":\"UserMessage\",\"content\":\"hi\"}'")
        print(f"     journal --root {rig.hosts['b']}/data --redis-url {srv.url} read s1")
        print("Ctrl-C to tear down", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
        # A second Ctrl-C must not cut the teardown short and leave mounts behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return 0


if __name__ == "__main__":
    sys.exit(main())
