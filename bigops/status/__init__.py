"""``bigops status``: what a run is doing, told truthfully on one screen, problems first.

- ``facts``: the I/O edge — everything the screen needs, read once from the run directory through the
  run-directory contract (``trainer.rundir``), the watchdog's state and the checkpoint inventory.
- ``summary``: pure functions from those facts and a given "now" to a typed :class:`~bigops.status.summary.Status`
  (run state, step and ETA, problems with their age and what was done, checkpoint health, the loss trend,
  the ranks summarised, what is no longer current).
- ``render``: the text screen and the JSON document (``schema_version``) of a ``Status``.

Why a summary of its own rather than the watchdog's facts printed as they are: on call reads this at 3 a.m.
The raw facts said "problems: none" next to a truncated ``latest``, listed a stale throughput warning on a
finished run, and printed one line per rank (392 lines for BLOOM's 384 ranks, the problems last).
"""
