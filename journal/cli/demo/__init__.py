"""``journal demo`` and ``journal fleet``: an agent fleet sharing sessions, watched live.

The demo shows what the journal is for, in a few seconds and with real processes:

1. An embedded Redis starts for a temporary root (or ``--root``; ``--redis-url`` uses an
   existing server instead).
2. ``--workers`` worker processes (``journal fleet``) act as agents on ``--sessions`` shared
   sessions. Every worker picks sessions at random, so several write to the same session at
   once and collide; each uses the aiOS loop: read the head, append at head + 1, and on a
   :class:`~journal.SequenceConflict` read the head again and retry. They write aiOS events:
   ``SessionCreated`` + ``PhaseEntered{sleep}`` open a session (one atomic batch: exactly one
   worker wins), then ``ToolCallRequested`` / ``ToolCallStarted`` / ``ToolCallCompleted`` /
   ``Message`` turns, and a ``BranchCreated`` opens the branch ``explore``, which gets turns
   of its own. Each worker records every event id the journal acknowledged.
3. A subscriber process follows every (session, branch) with ``subscribe`` and shows the feed
   live: a single updating line on a terminal, plain periodic lines otherwise.
4. Beside the feed, a worker group (``--group-workers`` processes, default 2, module
   ``groupworker``) shares the sessions' events: each session is held by one of them at a
   time. The demo waits for the group to catch up, then stops it.
5. Then everything is checked: no gap and no duplicate on any branch, every acknowledged
   event in the file at its sequence, every event seen by the subscriber exactly once,
   every event handled by the group at least once, and ``verify`` finds nothing.
6. A summary table (with what each group worker handled), and exit status 0 only if every
   check passed.

``journal fleet`` is one such worker on its own, long-lived by default: it is what
``compose.yaml`` scales with ``docker compose up --scale worker=3``.

Modules: ``args`` (the command-line arguments, light enough to import on every parse),
``fleet`` (the worker), ``progress`` (the live feed line), ``subscriber`` (the subscriber
process, run as ``python -m journal.cli.demo.subscriber SPEC``), ``groupworker`` (a worker of
the demo's group, ``python -m journal.cli.demo.groupworker SPEC NAME``) and ``run``
(orchestration and the checks).
"""
