"""Run a training run on SLURM as a chain of jobs (Jean Zay style), locally or over SSH.

- :mod:`launcher.slurm.render`: the batch script and sbatch options, pure functions of the config.
- :mod:`launcher.slurm.chain`: submit, extend, hold, release, cancel; one batched ``squeue`` per status.
- :mod:`launcher.slurm.job`: what each job runs before and after its ranks (records, end-of-run cancel).
- :mod:`launcher.slurm.runner`: the local command runner (``launcher.remote`` is its SSH twin).
"""
