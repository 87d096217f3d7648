"""``bigops goodput RUN``: where a run's wall time went, and the checkpoint interval that would lose least.

- ``account``: pure — the records -> every second in one part (productive, slow, lost, checkpoint, queue,
  restart, startup, stopped), the timeline, and what each incident cost.
- ``interval``: pure — Young's and Daly's optimum checkpoint interval for the measured failure rate and save
  cost, and whether ``train.save_interval`` is far from it.
- ``report``: pure — both together as one :class:`~bigops.goodput.report.Report`, its lines, its JSON and its
  one status line.
- ``facts``: the I/O edge — the records read from a run directory through the contract (``trainer.rundir``).

Why: the soak measured 22.8 % effective training time without saying where the rest went. A restart at
BLOOM's size costs an hour of 384 GPUs; an operator needs to see which cause costs most, and whether saving
more or less often would help.
"""
