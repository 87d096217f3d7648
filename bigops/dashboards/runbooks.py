"""The on-call runbooks: one page per alert and per watchdog finding or action, named after it
(``runbooks/<Name>.md``, the link every alert's ``runbook_url`` and every watchdog page carry).

Each page: Meaning, Impact, Diagnosis (the exact commands), Mitigation (what the watchdog may already have
done, and how to undo it). ``RUN`` stands for the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config import WatchdogConfig

STATUS = "bigops status RUN"
EVENTS = "grep '\"kind\": \"{name}\"' RUN/events.jsonl | tail -5"
ACTIONS = "grep '\"type\": \"action\"' RUN/events.jsonl | tail -10"
TAIL = "tail -5 RUN/telemetry/metrics.jsonl"
CKPTS = "bigops ckpt list RUN"
GPUS = "bigops status RUN --format json | python3 -m json.tool | grep -A30 '\"gpus\"'"
GPU_LOG = "tail -3 RUN/telemetry/gpu/<host>.jsonl"
BEATS = "ls -l --time-style=+%T RUN/telemetry/heartbeat/ && cat RUN/telemetry/heartbeat/rank-00000.json"
RESUME = "bigops launch --run-dir RUN --resume --watch"
ROLLED = ("A rollback never deletes: the checkpoints it set aside are in `RUN/checkpoints/.rolled-back/<event>/`. "
          "To undo it, stop the run (`touch RUN/control/kill-switch`), move the tags back into `RUN/checkpoints/`, "
          "write the wanted tag into `RUN/checkpoints/latest`, remove the added range from `RUN/control/skip-ranges`, "
          "and resume.")


@dataclass(frozen=True)
class Page:
    meaning: str
    impact: str
    diagnosis: tuple[str, ...]
    mitigation: str
    watchdog: str = "Nothing on its own: it reports (events.jsonl, the configured channels)."
    see_also: tuple[str, ...] = ()


PAGES: dict[str, Page] = {
    # ----------------------------------------------------------------------------- the watchdog itself
    "WatchdogDown": Page(
        "Prometheus cannot scrape `bigops watch --metrics-port`, or the watchdog reports `bigops_up 0`, or it "
        "has not scanned the run for 5 minutes.",
        "Nobody watches the run: hangs, spikes and dead ranks go unnoticed, nothing is restarted or rolled back.",
        ("ps -o pid,etime,cmd -C python3 | grep 'bigops.*watch'", "curl -s 127.0.0.1:PORT/metrics | grep bigops_up",
         "tail -20 RUN/events.jsonl"),
        "Restart the watchdog: `bigops watch RUN --metrics-port PORT` (or the supervisor: `" + RESUME + "`). It "
        "keeps its memory in `RUN/watchdog/state.json`, so a restart re-reports nothing already reported. If "
        "it crashes on start, run it with `BIGOPS_DEBUG=1` and file the traceback.",
        "Nothing: it is the one that is down."),
    "WatchdogApprovalNeeded": Page(
        "The watchdog runs in ask mode (`watchdog.on_crash`/`on_loss_spike`/`on_desync = \"ask\"`) and wants a "
        "person to decide on a restart, rollback or layer-norm sync.",
        "The run may be stopped until someone decides.",
        ("grep '\"type\": \"pending\"' RUN/events.jsonl | tail -3", STATUS),
        "Read the reason in the page; then `bigops approve RUN ID --note WHY` (it is carried out once) or "
        "`bigops deny RUN ID --note WHY` (a denied restart or rollback stops the supervisor, the run left as it "
        "is).",
        "Asked, and waits. It carries the decision out at its next pass, even after a restart of its own."),
    "RestartBudgetExhausted": Page(
        "The supervisor stopped restarting the run: `watchdog.restart_budget` restarts were spent within "
        "`watchdog.restart_window_s`, or several restarts in a row resumed from the same checkpoint step, or "
        "the exit code says a restart cannot help.",
        "The run is down and stays down.",
        (ACTIONS, "cat RUN/telemetry/exit.json", "tail -50 RUN/logs/ranks.log", CKPTS, "bigops ckpt verify RUN"),
        "Find why the ranks die (the exit record and the ranks' logs). Fix the cause (a bad node: exclude it; "
        "a corrupt checkpoint: point `latest` at the previous one; a bad data shard: `bigops surgery RUN "
        "--skip-range START-END`), then `" + RESUME + "`.",
        "Restarted the run up to the budget, then gave up (a `give-up` action in events.jsonl)."),
    "RankCrash": Page(
        "Ranks of a supervised launch died or exited with an error (the exit record and the first failing "
        "rank's error say why: OOM, a GPU fault, a full disk, a bug). One incident per launch: it is resolved "
        "when a later launch trains again.",
        "Training stopped; the steps since the last checkpoint are lost and will be redone.",
        (ACTIONS, "cat RUN/telemetry/exit.json", "grep -m3 -E 'Error|Exception' RUN/logs/ranks.log", CKPTS),
        "Usually nothing: the supervisor restarts from the last good checkpoint within its budget. If the same "
        "error comes back at every launch, fix its cause (a bad node, the disk) before the budget is spent.",
        "Kills the remaining ranks, then restarts within `watchdog.restart_budget` (or asks, or only "
        "notifies: `watchdog.on_crash`).", ("RestartBudgetExhausted",)),
    "NonFiniteLimit": Page(
        "The ranks stopped themselves after `train.max_skipped_steps_in_a_row` NaN/Inf steps in a row (exit "
        "code 12): the run diverged.",
        "No update was applied in those steps; training cannot go on from here.",
        (TAIL, ACTIONS, CKPTS),
        "The supervisor rolls back past the first bad step and skips its data (`watchdog.on_loss_spike`). If it "
        "recurs, lower the LR (`bigops surgery RUN --set-lr ...`) or skip a wider range.",
        "Rolls back like a loss spike (or asks, or only notifies).", ("LossSpike", "NonFiniteLoss")),
    "WatchdogGiveUp": Page(
        "The supervisor decided not to act on a problem (a restart cannot help, the budget is spent, the "
        "configuration says notify only, or a person denied the action).",
        "The run is left as it is, usually stopped.",
        (ACTIONS, STATUS),
        "Read the action's reason; see RestartBudgetExhausted.",
        "Nothing beyond recording its decision.", ("RestartBudgetExhausted",)),
    "WatchdogRestart": Page(
        "The supervisor relaunched the ranks from the newest complete checkpoint after a crash, a hang or a "
        "dead rank.",
        "The steps since that checkpoint are trained again (lost time, not lost work).",
        (ACTIONS, CKPTS, STATUS),
        "None needed if the run trains again. Repeated restarts at the same step end in RestartBudgetExhausted.",
        "Restarted the run; nothing to undo."),
    "WatchdogRollback": Page(
        "After a loss spike the supervisor stopped the ranks, pointed `latest` at a checkpoint before the "
        "spike, and added the data that caused it to `control/skip-ranges`.",
        "The steps after that checkpoint are trained again, without the skipped samples.",
        (ACTIONS, CKPTS, "cat RUN/control/skip-ranges"),
        "Check the loss after the restart. " + ROLLED,
        "Rolled back and restarted.", ("LossSpike",)),
    "WatchdogStacks": Page(
        "A rank hung: before anything was killed, the watchdog dumped every live rank's Python stacks with "
        "py-spy into `RUN/watchdog/stacks/<time>-hang/` and grouped them; the action names the rank(s) whose "
        "stack differs from the others'. On a SLURM run the dump ran on every node of the running job at once, "
        "as a step beside the ranks (`srun --overlap --jobid=J --ntasks-per-node=1 PYTHON -m "
        "bigops.watchdog.stacks RUN`); each rank-N.json names its host, and a rank no node answered for is "
        "listed with its host (a node that is down, or whose slurmd no longer answers).",
        "None by itself: it is the evidence of the hang (a kill and a restart usually follow).",
        (ACTIONS, "cat RUN/watchdog/stacks/*/summary.json",
         "bigops stacks RUN  # again, now, while ranks live (on SLURM: every node of the running job)"),
        "Read the odd rank's frames first (a deadlock in evaluation, a data loader stuck in I/O, a collective "
        "that one rank never entered); its rank-N.json holds every thread.",
        "The stacks are kept; nothing to undo.", ("TrainingHang",)),
    "WatchdogShrink": Page(
        "GPUs of the run were lost and `watchdog.on_node_lost = \"shrink\"`: the supervisor killed the ranks, "
        "reshaped the newest checkpoint to fewer data-parallel replicas through DeepSpeed's universal checkpoint "
        "(a new `universal-<tag>`; the source kept) and restarted on the devices left.",
        "Fewer replicas: each step takes longer (the same global batch, more gradient accumulation); the loss "
        "curve continues (consumed samples and the LR schedule carry over).",
        (ACTIONS, CKPTS, "grep -A4 '\\[parallel\\]' RUN/run.toml"),
        "When the node is back: stop the run and `bigops ckpt reshape RUN --tp T --pp P --dp D` to the full "
        "layout (or `bigops launch` on it, which offers the reshape).",
        "Reshaped and restarted; run.toml's previous layout is kept beside it (run.toml.before-<tag>).",
        ("GpuMissing", "GpuXid")),
    "WatchdogChainShrink": Page(
        "A node of the SLURM chain died (or was excluded for its GPUs), the partition has no spare and "
        "`watchdog.on_node_lost = \"shrink\"`: the chain keeper cancelled the pending jobs, reshaped the newest "
        "checkpoint to fewer data-parallel replicas through DeepSpeed's universal checkpoint (a new "
        "`universal-<tag>`; the source kept), set `slurm.nodes` and `parallel.dp` in run.toml, rendered the job "
        "script anew and resubmitted the queue on the nodes left.",
        "Fewer nodes: each step takes longer (the same global batch, more gradient accumulation); the loss "
        "curve continues (consumed samples and the LR schedule carry over).",
        (ACTIONS, "bigops chain status RUN", "grep -B2 -A4 'nodes' RUN/run.toml", "head -30 RUN/slurm/job.sbatch"),
        "When nodes are back: `bigops chain hold RUN`, let the running job end, `bigops ckpt reshape RUN --tp T "
        "--pp P --dp D` to the full layout, then relaunch the chain with `--set slurm.nodes=N`.",
        "Reshaped and resubmitted; run.toml's previous version is kept beside it (run.toml.before-<tag>).",
        ("ChainNodesShort", "ChainJobFailed")),
    "WatchdogKill": Page(
        "The supervisor killed the ranks (a hang, or a loss spike it will roll back).",
        "Training stops until the restart or rollback that follows.",
        (ACTIONS,),
        "None: the next action (restart or rollback) follows. If none does, see RestartBudgetExhausted.",
        "Killed the ranks' process group.", ("TrainingHang", "LossSpike")),
    "WatchdogSyncLayernorm": Page(
        "The watchdog wrote `control/sync-layernorm`: at their next step the ranks average their TP-duplicated "
        "parameters (weights, fp32 masters, Adam moments) over each TP group, in place.",
        "None on throughput; the layer norms agree again.",
        (ACTIONS, "ls RUN/control/", TAIL),
        "Check that `ln_desync` falls in the next records. A sync is an average: there is nothing to undo, but the "
        "checkpoints before it keep the desynced values.",
        "Requested the sync (or asked for approval, in ask mode).", ("TPDesync",)),
    # ------------------------------------------------------------------------------------- SLURM chain
    "ChainEmpty": Page(
        "A run launched with `bigops launch --slurm` has no job of its chain running or queued.",
        "Training has stopped and nothing will start it again.",
        ("bigops chain status RUN", "squeue --me", ACTIONS),
        "Find why the last job ended (`bigops chain status RUN`, its log); then `bigops chain extend RUN -n 2`. "
        "If the chain was held on purpose, `bigops chain release RUN`.",
        "Tries to keep `slurm.min_queued` jobs queued; this means it could not (or was told not to).",
        ("ChainStopped", "ChainSubmitFailed")),
    "ChainStopped": Page(
        "A job of the chain ended with an error a restart cannot fix (configuration or checkpoint error); the "
        "watchdog held the chain.",
        "The run stops until someone fixes the cause.",
        ("bigops chain status RUN", "bigops ckpt verify RUN", "tail -50 <the job's log>"),
        "Fix the configuration or the checkpoint (point `latest` at a good tag), then `bigops chain release RUN`.",
        "Held the chain's queued jobs (`bigops chain release RUN` undoes it)."),
    "ChainNodesShort": Page(
        "The chain's partition has fewer usable nodes (up, responding, not excluded) than each job asks for "
        "(`slurm.nodes`), and no job runs: the queued jobs wait for nodes that are not there.",
        "Training stops until nodes come back or the run goes on with fewer.",
        ("bigops chain status RUN", "sinfo --Node", ACTIONS),
        "Bring the nodes back, or go on with fewer: the finding names the reshape and the node count; with "
        "`watchdog.on_node_lost = \"shrink\"` the watchdog does it itself (see WatchdogChainShrink).",
        "Nothing, unless `watchdog.on_node_lost = \"shrink\"`.", ("WatchdogChainShrink", "ChainJobFailed")),
    "ChainJobFailed": Page(
        "A job of the chain crashed (or vanished: scancel, node failure); the next job resumes from the last "
        "checkpoint.",
        "The steps since the last checkpoint are trained again.",
        ("bigops chain status RUN", ACTIONS),
        "None if the next job trains. A node that keeps failing: `bigops chain exclude RUN NODE`.",
        "Counted it against the restart budget; excludes nodes with critical GPU findings from the next jobs."),
    "ChainSubmitFailed": Page(
        "`sbatch` failed when the watchdog topped up the chain.",
        "The queue runs dry: the run stops when its current job ends.",
        ("bigops chain status RUN", "sbatch --test-only RUN/slurm/*.sbatch"),
        "Fix the cause (account, partition, limits), then `bigops chain extend RUN -n 2`.",
        "Retries at its next passes."),
    "SlurmUnreachable": Page(
        "`squeue` did not answer (the controller or the SSH link to the login node).",
        "The watchdog cannot see or keep the chain; the run itself may be fine.",
        ("squeue --me", "scontrol ping"),
        "Usually transient: the watchdog backs off and retries. If it lasts, check the login node and slurmctld.",
        "Backs off exponentially (up to 10 minutes) and retries."),
    "WatchdogStateUnwritable": Page(
        "The watchdog could not save `RUN/watchdog/state.json` (its incidents, restart ledger, handled actions "
        "and detector positions): usually a full disk or quota, or a read-only filesystem.",
        "It goes on from memory; if it is restarted before the state can be written again, it forgets what it "
        "already reported and did (pages may repeat; the restart budget starts again).",
        ("df -h RUN && df -i RUN", "ls -l RUN/watchdog/", ACTIONS),
        "Free space (`bigops ckpt prune RUN --keep-last 2 --dry-run`, then without --dry-run) or fix the "
        "filesystem; the next pass saves the state and the incident resolves.",
        "Pages (critical) and keeps working from memory.", ("DiskFullSoon",)),
    "WatchdogEventsUnwritable": Page(
        "Appending to `RUN/events.jsonl`, the audit log, failed (full disk or quota, read-only filesystem).",
        "Pages still go out, but what was seen and done is missing from the log for that time.",
        ("df -h RUN && df -i RUN", "tail -3 RUN/events.jsonl"),
        "Free space or fix the filesystem; the log resumes by itself.",
        "Pages (critical); notifications are sent regardless.", ("DiskFullSoon",)),
    "ChainKeeperError": Page(
        "The chain-keeping pass failed unexpectedly.",
        "The chain is not kept until it works again.",
        ("tail -20 RUN/events.jsonl", "bigops chain status RUN"),
        "Run `BIGOPS_DEBUG=1 bigops watch RUN --once --dry-run` to see the traceback; file it."),
    "ChainRecordUnreadable": Page(
        "`RUN/slurm/chain.json`, the chain's record, cannot be read.",
        "The chain is not kept.",
        ("python3 -m json.tool RUN/slurm/chain.json",),
        "Restore the file (it is replaced atomically; a partial write points at a full disk) or relaunch with "
        "`bigops launch --run-dir RUN --resume --slurm`."),
    # ----------------------------------------------------------------------------------- run progress
    "NoProgress": Page(
        "No optimizer step has been recorded for 15 minutes and the run has not reached its target step.",
        "The cluster allocation is burning without training; the run may be hung, crashed or queued.",
        (STATUS, TAIL, BEATS, "squeue --me"),
        "If the ranks are alive but stuck, see TrainingHang; if they are gone, see RunDown. A supervised run "
        "is restarted by the watchdog; an unsupervised one needs `" + RESUME + "`.",
        "A supervised run: kills and restarts hung ranks (TrainingHang).", ("TrainingHang", "RunDown")),
    "RunDown": Page(
        "The watchdog sees no live rank of the run (RanksNotRunning) and no job of its SLURM chain waits in "
        "the queue.",
        "Nothing will bring the run back by itself.",
        (STATUS, "cat RUN/telemetry/exit.json", "squeue --me", ACTIONS),
        "Find why it stopped (exit record, logs). If it finished or was stopped on purpose, silence the alert. "
        "Otherwise resume: `" + RESUME + "` (locally) or `bigops launch --run-dir RUN --resume --slurm` (chain).",
        "A supervised run is restarted before this fires; this means no supervisor owns it.",
        ("RanksNotRunning",)),
    "RanksNotRunning": Page(
        "Ranks whose heartbeats name this host have no live process, and no supervisor owns them.",
        "Training has stopped.",
        (STATUS, BEATS, "cat RUN/telemetry/exit.json"),
        "See RunDown: resume with `" + RESUME + "`.", see_also=("RunDown",)),
    "TrainingHang": Page(
        "Ranks have sent no heartbeat for far longer than a step takes (`watchdog.hang_factor` x p95 step "
        "time, at least `watchdog.hang_min_timeout_s`): a stuck collective, a dead peer, a stopped process.",
        "No training; every other rank waits in a collective.",
        (BEATS, STATUS, "py-spy dump --pid PID  # on the stuck rank's node"),
        "A supervised run: the watchdog kills and restarts it. Otherwise `touch RUN/control/kill-switch` (or kill "
        "the ranks), then `" + RESUME + "`. A rank on one node that hangs again: drain that node.",
        "Supervised: killed the ranks and restarted from the last checkpoint (kill + restart actions)."),
    "CheckpointTooOld": Page(
        "The run trains, but its newest complete checkpoint (`checkpoints/latest`) is more than 4 hours old.",
        "A crash now loses everything since that checkpoint.",
        (CKPTS, "ls -la RUN/checkpoints/", "grep '\"kind\": \"save\"' RUN/telemetry/checkpoints.jsonl | tail -3",
         "bigops ckpt verify RUN"),
        "Check `train.save_interval`; look for partial saves (`.partial-*`: a save that failed, often a full "
        "disk). Ask for a save now: `touch RUN/control/save-switch` (the ranks save at their next step and go "
        "on).", see_also=("DiskFullSoon",)),
    # ------------------------------------------------------------------------------------ loss and norms
    "LossSpike": Page(
        "The loss jumped far above its recent median (robust statistics over the last records) and stayed "
        "there for several steps: a bad stretch of data or an optimizer instability.",
        "Training diverges; every step past the spike may have to be thrown away.",
        (EVENTS, TAIL, CKPTS),
        "Supervised, `watchdog.on_loss_spike = \"rollback\"`: the watchdog rolls back past the spike and skips "
        "its data. Otherwise stop (`touch RUN/control/kill-switch`), `bigops surgery RUN --skip-range START-END` "
        "on a checkpoint before the spike, and resume. " + ROLLED,
        "Rollback mode: killed the ranks, rolled back, skipped the data and restarted.",
        ("WatchdogRollback", "LossSpikeRecovered")),
    "LossSpikeRecovered": Page(
        "A loss spike episode ended: the loss is back under the spike threshold.",
        "None now; the spike is history.", (EVENTS, TAIL),
        "None. If it recurs at the same data position, skip that range (see LossSpike).",
        "Recorded it (info: no page).", ("LossSpike",)),
    "LossBlip": Page(
        "A one- or two-step loss excursion that came back by itself.",
        "None.", (EVENTS,),
        "None. Many blips in a row announce a spike: watch the loss panel.", "Recorded it (info: no page)."),
    "NonFiniteLoss": Page(
        "The loss is NaN or Inf for several steps in a row.",
        "The weights may already be NaN; every further step is wasted.",
        (EVENTS, TAIL, CKPTS),
        "Stop (`touch RUN/control/kill-switch`); roll back to the last checkpoint with a finite loss (see "
        "LossSpike); consider a lower LR (`bigops surgery RUN --reset-lr-schedule`) or skipping the data.",
        see_also=("LossSpike",)),
    "NonFiniteGradNorm": Page(
        "The gradient norm is NaN or Inf for several steps in a row (the loss still finite).",
        "The optimizer skips steps or is about to corrupt the weights.",
        (EVENTS, TAIL),
        "As for NonFiniteLoss if it lasts; bf16 runs skip such steps, so a short streak may pass.",
        see_also=("NonFiniteLoss", "SkippedSteps")),
    "SkippedSteps": Page(
        "The optimizer skipped several steps in a row (overflowing gradients).",
        "Steps consume data without learning from it.",
        (EVENTS, TAIL),
        "If it lasts beyond `train.max_skipped_steps_in_a_row` the trainer stops; roll back as for a LossSpike.",
        see_also=("NonFiniteGradNorm",)),
    "GradNormSpike": Page(
        "The gradient norm is many times its recent median: often the first sign of a loss spike.",
        "None yet; a divergence may follow.",
        (EVENTS, TAIL),
        "Watch the loss. If a LossSpike follows, handle it there; repeated grad spikes at the same data "
        "position point at bad data (`--skip-range`).", see_also=("LossSpike",)),
    "TPDesync": Page(
        "Parameters that tensor-parallel ranks duplicate (layer norms, row-parallel biases) differ across the "
        "TP ranks by more than `watchdog.desync_threshold` (the BLOOM-176B bug).",
        "The TP ranks train slightly different models; the gap grows and the loss suffers.",
        (EVENTS, TAIL, "bigops ckpt compare-tp RUN"),
        "`watchdog.on_desync = \"sync\"`: the watchdog already asked the ranks to average them live. Offline: "
        "`bigops surgery RUN --sync-layernorm --stop-run` writes a synced tag and points `latest` at it (the "
        "old tag stays).",
        "sync mode: wrote control/sync-layernorm; ask mode: waits for approval.", ("WatchdogSyncLayernorm",)),
    # -------------------------------------------------------------------------------------- performance
    "Straggler": Page(
        "One rank's forward pass takes much longer than its peers' in the same pipeline stage.",
        "Every step waits for the slowest rank: the whole run goes at its pace.",
        (EVENTS, BEATS, GPUS),
        "Look at that rank's node: GPU throttling or heat (cluster-health dashboard), another job on it. Drain "
        "the node and resume elsewhere if it lasts.", see_also=("GpuThrottled", "GpuHot")),
    "ThroughputDrop": Page(
        "Tokens per second fell well below the run's recent rate.",
        "The run takes longer and costs more.",
        (EVENTS, TAIL, GPUS),
        "Check for stragglers, throttled GPUs, a slow filesystem (checkpoint saves) or network trouble; restart "
        "on good nodes if it lasts.", see_also=("Straggler", "GpuThrottled")),
    # ------------------------------------------------------------------------------------------ storage
    "DiskFullSoon": Page(
        "The filesystem holding the run has room for few more checkpoints.",
        "The next save fails; a crash after that loses more work.",
        ("df -h RUN", CKPTS, "du -sh RUN/checkpoints/* RUN/checkpoints/.rolled-back"),
        "Free space: `bigops ckpt prune RUN --keep-last 3 --dry-run`, then without `--dry-run` (never removes `latest`, marked checkpoints or rollback evidence); "
        "move `.rolled-back/` evidence elsewhere once examined.", see_also=("InodesLow",)),
    "InodesLow": Page(
        "Few inodes are left on the run's filesystem.",
        "New files (checkpoints, logs) cannot be created.",
        ("df -i RUN", "find RUN -xdev -type f | wc -l"),
        "Remove small files that pile up (old logs, partial saves), prune checkpoints (`bigops ckpt prune RUN --keep-last 3`).",
        see_also=("DiskFullSoon",)),
    # --------------------------------------------------------------------------------------------- GPUs
    "GpuHot": Page(
        f"A GPU is at or above {WatchdogConfig.gpu_temperature_warning_c} C (warning) or "
        f"{WatchdogConfig.gpu_temperature_critical_c} C (critical).",
        "It throttles, slowing the run; lasting heat damages hardware.",
        (GPUS, GPU_LOG, "nvidia-smi -q -d TEMPERATURE,PERFORMANCE  # on the node"),
        "Tell the cluster's operators (cooling, fans). Drain the node if it does not cool down; the run resumes "
        "elsewhere from its last checkpoint.", see_also=("GpuThrottled",)),
    "GpuEccDoubleBit": Page(
        "A GPU reports uncorrected (double-bit) ECC errors.",
        "Its results can no longer be trusted; the run may crash or train on corrupt values.",
        (GPUS, GPU_LOG, "nvidia-smi -q -d ECC,ROW_REMAPPER  # on the node"),
        "Drain the node and have the GPU reset or replaced; resume from the last checkpoint elsewhere. If the "
        "loss misbehaves after the error, roll back past it.", see_also=("GpuRowRemap",)),
    "GpuXid": Page(
        "The driver logged an XID error for a GPU. Hardware ones (48, 62-64, 74, 79, 92, 94, 95, 119, 120) "
        "page; others are usually the application's own faults.",
        "Hardware XIDs: the GPU may be gone or corrupt; the run usually crashes.",
        (GPUS, GPU_LOG, "dmesg -T | grep -i xid  # on the node"),
        "Hardware XID: drain the node, resume elsewhere. Application XID (13, 31, 43): look at the ranks' logs.",
        see_also=("GpuMissing",)),
    "GpuMissing": Page(
        "A GPU seen earlier is no longer listed by NVML (fell off the bus, XID 79).",
        "The rank on that GPU cannot work; the run stops or hangs.",
        (GPUS, GPU_LOG, "nvidia-smi -L  # on the node"),
        "Drain the node, have it rebooted; resume the run on other nodes from its last checkpoint.",
        see_also=("GpuXid",)),
    "GpuRowRemap": Page(
        "A GPU has memory rows pending remapping or page retirement, or failed to remap a row.",
        "Pending: the GPU needs a reset to use the spare rows. Failed: the GPU needs replacing.",
        (GPUS, "nvidia-smi -q -d ROW_REMAPPER  # on the node"),
        "Reset the GPU at the next restart (drain, reset, undrain); failed remaps: replace it.",
        see_also=("GpuEccDoubleBit",)),
    "GpuThrottled": Page(
        "A GPU is slowed by hardware (thermal slowdown, power brake, hardware slowdown) for a while.",
        "The run goes at the pace of the slowest GPU.",
        (GPUS, GPU_LOG),
        "Check temperature and power on the cluster-health dashboard; tell the operators; drain the node if it "
        "lasts.", see_also=("GpuHot", "Straggler")),
    "GpuSamplerSilent": Page(
        f"`bigops gpu-monitor` on a node has written no sample for {WatchdogConfig.gpu_sampler_silent_s} s "
        "(`watchdog.gpu_sampler_silent_s`).",
        "GPU faults on that node go unseen.",
        (GPU_LOG, "ps -C python3 -o pid,etime,cmd | grep gpu-monitor  # on the node"),
        "Restart it on that node: `bigops gpu-monitor RUN --interval 10`. NVML errors: `nvidia-smi` on the node."),
    "MalformedTelemetry": Page(
        "Heartbeat or GPU-sample fields of the wrong type (a list where a number is expected, \"N/A\" degrees): "
        "the watchdog ignored those fields and counted them (source: heartbeat or gpu:<host>).",
        "What those fields would have shown goes unseen (a hang, a hot GPU); the rest is still watched.",
        ("ls -l RUN/telemetry/heartbeat | head; cat RUN/telemetry/heartbeat/rank-00000.json", GPU_LOG),
        "Fix the writer (a trainer or gpu-monitor of another version, a hand-edited file); the finding resolves "
        "once the fields are well-typed again.", see_also=("GpuSamplerSilent",)),
}


def render(name: str, page: Page) -> str:
    diagnosis = "\n".join(f"    {command.replace('{name}', name)}" for command in page.diagnosis)
    lines = [f"# {name}", "", "## Meaning", "", page.meaning, "", "## Impact", "", page.impact, "",
             "## Diagnosis", "", "`RUN` is the run directory.", "", diagnosis, "",
             "## Mitigation", "", page.mitigation, "", f"What the watchdog may already have done: {page.watchdog}"]
    if page.see_also:
        lines += ["", "## See also", "", ", ".join(f"[{other}]({other}.md)" for other in page.see_also)]
    return "\n".join(lines) + "\n"


def render_index() -> str:
    rows = [f"- [{name}]({name}.md): {page.meaning.split('. ')[0].rstrip('.')}." for name, page in sorted(PAGES.items())]
    return ("# Runbooks\n\nOne page per alert, watchdog finding and watchdog action: Meaning, Impact, Diagnosis, "
            "Mitigation. Generated by `bigops dashboards export` from `bigops/dashboards/runbooks.py`; edit "
            "that file, not these pages.\n\n" + "\n".join(rows) + "\n")
