"""The watchdog's one decision function: open incidents + a view of the state + the policy -> actions.

Pure (no I/O, no clock: ``view.now``), so every rule is a unit test, and the supervisor, the daemon's
desync handling and the SLURM chain keeper decide the same way. The executor (``bigops.watchdog.executor``)
carries the actions out, journaling each before acting.

Rules:

- An incident is acted on at most once, by incident id (``view.handled``: the ids the journal holds an
  intent for). A second hang in a new launch is a new incident (new key), so it is acted on again.
- ``TrainingHang``: ``on_crash = "restart"``: kill, then restart within the budget (else give up);
  ``"ask"``: ask (the hung ranks stay as they are, for py-spy, until a person decides); ``"notify"``: notify
  only — never kill (the stuck process is the evidence).
- ``RankCrash`` (the supervisor's: ranks exited with a crash): restart within the budget, ask, or give up.
- ``LossSpike`` (critical: confirmed) and ``NonFiniteLimit`` (ranks stopped on NaN/Inf): kill (nothing
  trains past the spike), roll back to the newest checkpoint before it, restart; ``"ask"``: kill, ask;
  ``"notify"``: notify only (a NonFiniteLimit exit: give up, the ranks are down already). The rollback
  budget is per spike region: a spike that recurs in the region of an earlier rollback (from that
  rollback's target to its spike step plus the data skipped) is rolled back once more skipping twice the
  batches; after ``max_rollbacks_per_region`` it gives up and pages. No checkpoint before the spike, or a
  target checkpoint without ``consumed_samples`` in its manifest: give up (a stop: no restart follows).
- ``TPDesync`` (not resolved): sync, ask or notify (``on_desync``).
- A node lost (``BAD_NODE_KINDS``, critical; only where the caller knows the devices left, ``view.devices``:
  the supervisor): ``on_node_lost = "shrink"``: kill, reshape to the most data-parallel replicas the devices
  left hold (``shrink_target``), restart; ``"ask"``: kill, ask; ``"notify"``: notify only. Enough devices
  left: notify only; fewer than one replica, or a batch the smaller DP does not divide: give up.
- ``ChainJobCrashed`` (keeper: a SLURM job of the chain crashed): counted once as a restart, within the
  budget, else the chain is held; ``ChainJobFatal``: hold. Critical GPU incidents (``BAD_NODE_KINDS``) of a
  chained run exclude their host; fewer than ``min_queued`` live jobs: top up (never while held or done).
  Fewer usable nodes in the partition than ``slurm.nodes`` with no job running (``ChainView.usable_nodes``):
  ``on_node_lost = "shrink"``: :class:`ChainShrink` to the most nodes left whose ranks make whole replicas
  dividing the batch (``chain_shrink_target``), instead of a top-up; otherwise notify, naming the reshape
  and the node count to relaunch with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bigops.watchdog.policy import decide_restart
from trainer.config import SlurmConfig, WatchdogConfig
from trainer.data.schedule import advance, consumed_after  # advance re-exported: tests and callers use it

BAD_NODE_KINDS = ("GpuMissing", "GpuEccDoubleBit", "GpuXid", "GpuRowRemap")
SUPERVISOR_KINDS = ("TrainingHang", "RankCrash", "LossSpike", "NonFiniteLimit")
DAEMON_KINDS = ("TPDesync",)
CHAIN_KINDS = ("ChainJobCrashed", "ChainJobFatal", *BAD_NODE_KINDS)


# ------------------------------------------------------------------------------------------------ actions
@dataclass(frozen=True)
class Restart:
    incident: str | None
    reason: str
    from_step: int | None
    policy: str = ""
    job_id: str | None = None
    """A SLURM job's crash: the chain's next job is the restart (counted, not launched, by us)."""
    name = "restart"


@dataclass(frozen=True)
class Rollback:
    incident: str | None
    reason: str
    spike_step: int
    target_tag: str
    target_step: int
    aside_tags: tuple[str, ...]
    skip_range: tuple[int, int] | None
    """None: nothing to skip (a damaged checkpoint set aside, no spike)."""
    skip_batches: int
    attempt: int = 1
    """1: the first rollback in this spike region; 2: the spike recurred after it (a wider skip)."""
    name = "rollback"


@dataclass(frozen=True)
class Sync:
    incident: str | None
    reason: str
    step: int | None
    name = "sync-layernorm"


@dataclass(frozen=True)
class Shrink:
    incident: str | None
    reason: str
    target: tuple[int, int, int]
    """(tp, pp, dp) to reshape the newest checkpoint to."""
    lost: int
    """Devices lost (the world was tp x pp x dp, one device per rank)."""
    name = "shrink"


@dataclass(frozen=True)
class Kill:
    incident: str | None
    reason: str
    name = "kill"


@dataclass(frozen=True)
class Ask:
    incident: str | None
    reason: str
    action: str
    """What waits for the decision: restart, rollback, sync-layernorm."""
    details: dict = field(default_factory=dict)
    name = "ask"


@dataclass(frozen=True)
class GiveUp:
    incident: str | None
    reason: str
    outcome: str
    name = "give-up"


@dataclass(frozen=True)
class NotifyOnly:
    incident: str | None
    reason: str
    name = "notify"


@dataclass(frozen=True)
class ChainHold:
    incident: str | None
    reason: str
    job_id: str | None = None
    name = "chain-hold"


@dataclass(frozen=True)
class ChainTopUp:
    count: int
    reason: str
    incident: str | None = None
    name = "chain-top-up"


@dataclass(frozen=True)
class ChainExclude:
    hosts: tuple[str, ...]
    reason: str
    incident: str | None = None
    name = "chain-exclude"


@dataclass(frozen=True)
class ChainShrink:
    """The chain's next jobs on fewer nodes: the usable nodes of its partition are fewer than ``slurm.nodes``
    (a node died, or was excluded for its GPUs) and no job runs. Reshape the newest checkpoint to ``target``
    (fewer data-parallel replicas), then resubmit the pending jobs on ``nodes``."""
    reason: str
    nodes: int
    target: tuple[int, int, int]
    incident: str | None = None
    name = "chain-shrink"


Action = (Restart | Rollback | Sync | Shrink | Kill | Ask | GiveUp | NotifyOnly | ChainHold | ChainTopUp | ChainExclude
          | ChainShrink)


# ------------------------------------------------------------------------------------------- the inputs
@dataclass(frozen=True)
class Policy:
    """What the rules may do, from ``[watchdog]`` (:meth:`of`; the defaults are its options')."""
    on_crash: str = WatchdogConfig.on_crash
    on_loss_spike: str = WatchdogConfig.on_loss_spike
    on_desync: str = WatchdogConfig.on_desync
    on_node_lost: str = WatchdogConfig.on_node_lost
    layout: tuple[int, int, int] = (1, 1, 1)
    """``parallel.tp/pp/dp`` of the run (one device per rank)."""
    micro_batch_size: int = 1
    restart_budget: int = WatchdogConfig.restart_budget
    restart_window_s: float = WatchdogConfig.restart_window_s
    no_progress_restarts: int = WatchdogConfig.no_progress_restarts
    global_batch_size: int = 1
    """``train.global_batch_size`` (a skip range counts samples); 1 where no run config is at hand."""
    rampup_batch_size: tuple[int, int, int] | None = None
    """``train.rampup_batch_size``: while it ramps up, a step reads fewer samples than the global batch."""
    rollback_skip_batches: int = WatchdogConfig.rollback_skip_batches
    max_rollbacks_per_region: int = 2
    min_queued: int = SlurmConfig.min_queued

    @classmethod
    def of(cls, cfg, on_desync: str | None = None) -> "Policy":
        """From a ``trainer.config.RunConfig``."""
        w = cfg.watchdog
        p = cfg.parallel
        return cls(on_crash=w.on_crash, on_loss_spike=w.on_loss_spike, on_desync=on_desync or w.on_desync,
                   on_node_lost=w.on_node_lost, layout=(p.tp, p.pp, p.dp or 1),
                   micro_batch_size=cfg.train.micro_batch_size,
                   restart_budget=w.restart_budget, restart_window_s=w.restart_window_s,
                   no_progress_restarts=w.no_progress_restarts, global_batch_size=cfg.train.global_batch_size,
                   rampup_batch_size=tuple(cfg.train.rampup_batch_size) if cfg.train.rampup_batch_size else None,
                   rollback_skip_batches=w.rollback_skip_batches, min_queued=cfg.slurm.min_queued)


@dataclass(frozen=True)
class Checkpoint:
    tag: str
    step: int
    consumed_samples: int | None
    """From the checkpoint's manifest (None: not recorded: no skip range can be computed from it)."""


@dataclass(frozen=True)
class ChainView:
    live: int = 0
    held: bool = False
    done: bool = False
    exclude: tuple[str, ...] = ()
    running: int = 0
    """Jobs of the chain running now (a shrink waits for none)."""
    nodes: int = 0
    """``slurm.nodes``: what each job asks for."""
    usable_nodes: int | None = None
    """Nodes of the partition that are up and not excluded (``sinfo``); None when not asked (no shrink)."""
    ranks_per_node: int = 0


@dataclass(frozen=True)
class StateView:
    now: float
    restarts: tuple[dict, ...] = ()
    """The restart ledger (``WatchState.restarts``): {"time", "from_step", ...}."""
    rollbacks: tuple[dict, ...] = ()
    """Rollbacks done (journal): {"target_step", "spike_step", "skip_batches"}."""
    handled: frozenset[str] = frozenset()
    """Incident ids already acted on (an intent exists for them)."""
    pending: frozenset[str] = frozenset()
    """Incident ids with a question open (asked, not carried out yet)."""
    checkpoints: tuple[Checkpoint, ...] = ()
    """Complete checkpoints, oldest first."""
    checkpoint_step: int | None = None
    """The step a restart resumes from now."""
    skip_ranges: tuple[tuple[int, int], ...] = ()
    chain: ChainView | None = None
    lost_devices: int | None = None
    """Devices of the run lost now (distinct GPUs with a critical ``BAD_NODE_KINDS`` incident open); None: the
    caller does not place ranks (the chain keeper excludes hosts instead)."""


# ------------------------------------------------------------------------------------------- the function
def decide(incidents: list[dict[str, Any]], view: StateView, policy: Policy,
           kinds: tuple[str, ...] | None = None) -> list[Action]:
    """Actions for the open incidents not acted on yet (oldest first), then the chain's top-up/exclusion.
    ``kinds``: only incidents of these kinds (each caller owns some: the supervisor its ranks, the daemon
    the sync, the keeper the chain)."""
    actions: list[Action] = []
    for inc in sorted(incidents, key=lambda i: (i.get("opened", 0), str(i.get("id")))):
        if inc.get("status", "open") != "open" or inc.get("id") in view.handled or inc.get("id") in view.pending:
            continue
        if kinds is not None and inc.get("kind") not in kinds:
            continue
        actions += _decide_one(inc, view, policy)
    if view.chain is not None and (kinds is None or set(kinds) & set(CHAIN_KINDS)):
        actions += _chain_upkeep(incidents, view, policy, actions)
    return actions


def _decide_one(inc: dict, view: StateView, policy: Policy) -> list[Action]:
    kind, iid, summary = inc.get("kind"), inc.get("id"), str(inc.get("summary") or inc.get("kind"))
    if kind == "TrainingHang":
        if policy.on_crash == "notify":
            return [NotifyOnly(iid, f"{summary}: watchdog.on_crash=notify: the ranks are left as they are")]
        if policy.on_crash == "ask":
            return [Ask(iid, f"hang: {summary}", "restart", {"kind": "hang"})]
        return [Kill(iid, f"hang: {summary}"), restart_or_give_up(iid, f"hang: {summary}", view, policy)]
    if kind == "RankCrash":
        if policy.on_crash == "ask":
            return [Ask(iid, summary, "restart", {"kind": "crash", "checkpoint_step": view.checkpoint_step})]
        if policy.on_crash != "restart":
            return [GiveUp(iid, summary, f"watchdog.on_crash={policy.on_crash}: not restarting")]
        return [restart_or_give_up(iid, summary, view, policy)]
    if kind in ("LossSpike", "NonFiniteLimit"):
        if kind == "LossSpike" and inc.get("severity") != "critical":
            return []  # suspected, not confirmed: watched, not acted on
        down = kind == "NonFiniteLimit"  # the ranks stopped by themselves
        spike_step = _spike_step(inc)
        if policy.on_loss_spike not in ("rollback", "ask"):
            if down:
                return [GiveUp(iid, summary, f"watchdog.on_loss_spike={policy.on_loss_spike}: not rolling back")]
            return [NotifyOnly(iid, f"{summary}: watchdog.on_loss_spike={policy.on_loss_spike}")]
        kill = [] if down else [Kill(iid, summary)]
        if policy.on_loss_spike == "ask":
            return [*kill, Ask(iid, summary, "rollback", {"spike_step": spike_step})]
        plan = plan_rollback(iid, summary, spike_step, view, policy)
        if isinstance(plan, GiveUp):
            return [*kill, plan]
        return [*kill, plan, restart_or_give_up(iid, f"rollback: {summary}", view, policy,
                                                from_step=plan.target_step)]
    if kind == "TPDesync":
        if inc.get("severity") == "info":
            return []
        if policy.on_desync == "sync":
            return [Sync(iid, summary, inc.get("step"))]
        if policy.on_desync == "ask":
            return [Ask(iid, summary, "sync-layernorm", {"step": inc.get("step"),
                                                         "ln_desync": (inc.get("evidence") or {}).get("ln_desync")})]
        return [NotifyOnly(iid, summary)]
    if kind in BAD_NODE_KINDS and view.lost_devices is not None and inc.get("severity") == "critical":
        return _node_lost(iid, summary, inc, view, policy)
    if kind == "ChainJobCrashed":
        job = (inc.get("evidence") or {}).get("job_id")
        action = restart_or_give_up(iid, summary, view, policy, from_step=inc.get("step"), job_id=job)
        if isinstance(action, GiveUp):
            return [ChainHold(iid, f"{summary}; {action.outcome}", job)]
        return [action]
    if kind == "ChainJobFatal":
        return [ChainHold(iid, summary, (inc.get("evidence") or {}).get("job_id"))]
    return []


def shrink_target(layout: tuple[int, int, int], lost: int, global_batch_size: int,
                  micro_batch_size: int, rampup: tuple[int, int, int] | None = None) -> tuple[int, int, int] | str:
    """The layout with the most data-parallel replicas that ``tp x pp x dp - lost`` devices hold, or why there
    is none (fewer devices than one replica; a global batch the smaller DP does not divide into micro-batches,
    nor a ramp-up's start and increment, which the config requires as well)."""
    tp, pp, dp = layout
    left = tp * pp * dp - lost
    new_dp = min(dp, left // (tp * pp))
    if new_dp < 1:
        return f"{left} device(s) left, one replica needs tp x pp = {tp * pp}"
    batches = (global_batch_size, *(rampup[:2] if rampup else ()))
    while new_dp >= 1 and any(b % (micro_batch_size * new_dp) for b in batches):
        new_dp -= 1
    if new_dp < 1:
        ramp = " (and train.rampup_batch_size's start and increment)" if rampup else ""
        return f"train.global_batch_size={global_batch_size}{ramp} is not divisible by micro_batch_size x dp for any dp"
    return tp, pp, new_dp


def _node_lost(iid, summary: str, inc: dict, view: StateView, policy: Policy) -> list[Action]:
    tp, pp, dp = policy.layout
    lost = view.lost_devices or 0
    if policy.on_node_lost == "notify":
        return [NotifyOnly(iid, f"{summary}: watchdog.on_node_lost=notify")]
    if lost <= 0:
        return [NotifyOnly(iid, f"{summary}: the run's devices are all there")]
    target = shrink_target(policy.layout, lost, policy.global_batch_size, policy.micro_batch_size,
                           policy.rampup_batch_size)
    if isinstance(target, str):
        return [Kill(iid, summary), GiveUp(iid, summary, f"cannot shrink: {target}")]
    why = f"{summary}: {lost} of {tp * pp * dp} devices lost"
    if policy.on_node_lost == "ask":
        return [Kill(iid, why), Ask(iid, why, "shrink", {"target": list(target), "lost": lost})]
    return [Kill(iid, why), Shrink(iid, why, target, lost), restart_or_give_up(iid, f"shrink: {why}", view, policy)]


def restart_or_give_up(iid, reason: str, view: StateView, policy: Policy, from_step: int | None = None,
                       job_id: str | None = None) -> Restart | GiveUp:
    """The budget and the no-progress guard (``policy.decide_restart``) over the whole ledger: every restart
    counts, whoever recorded it (a taking-over supervisor, the chain keeper)."""
    step = view.checkpoint_step if from_step is None else from_step
    verdict = decide_restart(list(view.restarts), view.now, step, policy.restart_budget, policy.restart_window_s,
                             policy.no_progress_restarts)
    if not verdict.allowed:
        return GiveUp(iid, reason, verdict.reason)
    return Restart(iid, reason, step, verdict.reason, job_id)


def _spike_step(inc: dict) -> int:
    evidence = inc.get("evidence") or {}
    for value in (evidence.get("start_step"), inc.get("step")):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


def in_region(rollback: dict, spike_step: int) -> bool:
    """A spike at ``spike_step`` recurs in the region of an earlier rollback: from that rollback's target to
    its spike plus the batches it skipped."""
    try:
        return rollback["target_step"] <= spike_step <= rollback["spike_step"] + rollback["skip_batches"]
    except (KeyError, TypeError):
        return False


def plan_rollback(iid, reason: str, spike_step: int, view: StateView, policy: Policy) -> Rollback | GiveUp:
    """Back to the newest checkpoint before the spike's first step; set aside every later one; skip from the
    sample that fed the spike's first step (the target's ``consumed_samples``, advanced over the steps
    trained from it, past the skip ranges in force) for ``rollback_skip_batches`` batches (the batches those
    steps read: smaller while the batch size ramps up) — twice that when
    the spike recurs in the region of an earlier rollback; give up past ``max_rollbacks_per_region``."""
    earlier = [r for r in view.rollbacks if in_region(r, spike_step)]
    if len(earlier) >= policy.max_rollbacks_per_region:
        return GiveUp(iid, reason, f"the spike came back after {len(earlier)} rollbacks in this region (steps "
                                   f"{min(r['target_step'] for r in earlier)}-{spike_step}): not rolling back "
                                   f"again; a person must look at the data or the model")
    before = [c for c in view.checkpoints if c.step < spike_step]
    if not before:
        return GiveUp(iid, reason, f"no checkpoint before step {spike_step} to roll back to")
    target = before[-1]
    if not isinstance(target.consumed_samples, int) or isinstance(target.consumed_samples, bool):
        return GiveUp(iid, reason, f"checkpoint {target.tag} records no consumed_samples in its manifest: the "
                                   f"data to skip is unknown, not rolling back")
    batches = max(1, policy.rollback_skip_batches) * (2 ** len(earlier))
    gbs, ramp = max(1, policy.global_batch_size), policy.rampup_batch_size
    trained = consumed_after(target.consumed_samples, max(0, spike_step - 1 - target.step), gbs, ramp,
                             view.skip_ranges)
    start = advance(trained, 0, view.skip_ranges)
    aside = tuple(c.tag for c in view.checkpoints if c.step > target.step)
    return Rollback(iid, reason, spike_step, target.tag, target.step, aside,
                    (start, consumed_after(start, batches, gbs, ramp)), batches, len(earlier) + 1)


def chain_shrink_target(layout: tuple[int, int, int], nodes: int, usable: int, ranks_per_node: int,
                        global_batch_size: int, micro_batch_size: int,
                        rampup: tuple[int, int, int] | None = None) -> tuple[int, tuple[int, int, int]] | str:
    """(nodes, (tp, pp, dp)): the most nodes, at most ``usable`` and fewer than ``nodes``, whose ranks make
    whole data-parallel replicas that divide the global batch (and a ramp-up's start and increment) into
    micro-batches; or why there are none."""
    tp, pp, _ = layout
    batches = (global_batch_size, *(rampup[:2] if rampup else ()))
    for count in range(min(usable, nodes - 1), 0, -1):
        world = count * ranks_per_node
        if world % (tp * pp) == 0 and not any(b % (micro_batch_size * (world // (tp * pp))) for b in batches):
            return count, (tp, pp, world // (tp * pp))
    if usable < 1:
        return "no usable node left in the partition"
    return (f"{usable} usable node(s) x {ranks_per_node} ranks hold no whole replica of tp x pp = {tp * pp} that "
            f"divides train.global_batch_size={global_batch_size} into micro-batches")


def _chain_nodes_short(chain: ChainView, policy: Policy) -> list[Action]:
    """Fewer usable nodes than each job needs, nothing running: the jobs would wait forever. Shrink (with
    ``on_node_lost = "shrink"``), or say so and what to run."""
    if chain.usable_nodes is None or chain.usable_nodes >= chain.nodes or chain.running or not chain.ranks_per_node:
        return []
    short = f"{chain.usable_nodes} usable node(s) in the partition, each job needs slurm.nodes={chain.nodes}"
    target = chain_shrink_target(policy.layout, chain.nodes, chain.usable_nodes, chain.ranks_per_node,
                                 policy.global_batch_size, policy.micro_batch_size, policy.rampup_batch_size)
    if isinstance(target, str):
        return [NotifyOnly(None, f"{short}; cannot shrink: {target}")]
    nodes, (tp, pp, dp) = target
    if policy.on_node_lost != "shrink":
        return [NotifyOnly(None, f"{short}: the jobs wait; to go on with {nodes} node(s) stop the chain, "
                                 f"`bigops ckpt reshape RUN --tp {tp} --pp {pp} --dp {dp}` and relaunch with "
                                 f"--set slurm.nodes={nodes} (or watchdog.on_node_lost=shrink does it)")]
    return [ChainShrink(f"{short}: shrink to {nodes} node(s), TP{tp} x PP{pp} x DP{dp}", nodes, (tp, pp, dp))]


def _chain_upkeep(incidents: list[dict], view: StateView, policy: Policy, so_far: list[Action]) -> list[Action]:
    chain = view.chain
    if chain.done:
        return []
    out: list[Action] = []
    bad = sorted({str(i.get("key", "")).split(":")[1] for i in incidents
                  if i.get("kind") in BAD_NODE_KINDS and i.get("severity") == "critical"
                  and i.get("status", "open") == "open" and str(i.get("key", "")).count(":") >= 1})
    bad = tuple(h for h in bad if h and h not in chain.exclude)
    if bad:
        out.append(ChainExclude(bad, "critical GPU findings on " + ", ".join(bad)))
    held = chain.held or any(isinstance(a, ChainHold) for a in so_far)
    short = [] if held else _chain_nodes_short(chain, policy)
    out += short
    if any(isinstance(a, ChainShrink) for a in short):
        return out  # the shrink resubmits the queue itself
    if not held and chain.live < policy.min_queued:
        out.append(ChainTopUp(policy.min_queued - chain.live, f"keep {policy.min_queued} queued"))
    return out
