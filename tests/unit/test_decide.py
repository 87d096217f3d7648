"""The one decision function (``bigops.watchdog.decide``): every rule, pure, no run directory."""

from bigops.watchdog.decide import Ask, ChainHold, ChainTopUp, ChainView, Checkpoint, GiveUp, Kill, NotifyOnly, \
    Policy, Restart, Rollback, StateView, Sync, advance, decide


def inc(kind, iid="i1", severity="critical", step=None, **evidence):
    return {"id": iid, "key": f"{kind}:{iid}", "kind": kind, "severity": severity, "status": "open", "step": step,
            "summary": f"{kind} here", "evidence": evidence, "opened": 1.0}


CKPTS = tuple(Checkpoint(f"global_step{s}", s, 8 * s) for s in (60, 70, 80, 90))


def view(**kw):
    return StateView(now=1000.0, checkpoints=CKPTS, checkpoint_step=90, **kw)


def test_a_hang_is_killed_and_restarted_asked_about_or_only_notified():
    hang = [inc("TrainingHang")]
    assert [type(a) for a in decide(hang, view(), Policy())] == [Kill, Restart]
    (ask,) = decide(hang, view(), Policy(on_crash="ask"))
    assert isinstance(ask, Ask) and ask.action == "restart"
    assert [type(a) for a in decide(hang, view(), Policy(on_crash="notify"))] == [NotifyOnly]  # never a Kill


def test_an_incident_is_acted_on_once_and_a_new_one_again():
    hang = [inc("TrainingHang", "a")]
    assert decide(hang, view(handled=frozenset({"a"})), Policy()) == []
    assert decide(hang, view(pending=frozenset({"a"})), Policy()) == []
    again = [inc("TrainingHang", "b")]  # the next launch's hang: a new incident
    assert [type(a) for a in decide(again, view(handled=frozenset({"a"})), Policy())] == [Kill, Restart]
    assert decide([{**hang[0], "status": "resolved"}], view(), Policy()) == []


def test_every_restart_in_the_ledger_counts_whoever_recorded_it():
    ledger = tuple({"time": 990.0, "from_step": s, "reason": "taking over"} for s in (10, 20))
    kill, give_up = decide([inc("TrainingHang")], view(restarts=ledger), Policy(restart_budget=2))
    assert isinstance(kill, Kill) and isinstance(give_up, GiveUp) and "budget exhausted" in give_up.outcome
    (crash,) = decide([inc("RankCrash")], view(restarts=ledger), Policy(restart_budget=3))
    assert isinstance(crash, Restart) and crash.from_step == 90 and "3 of 3" in crash.policy
    (notify,) = decide([inc("RankCrash")], view(), Policy(on_crash="notify"))
    assert isinstance(notify, GiveUp)


def test_a_spike_rolls_back_from_the_target_checkpoints_consumed_samples():
    kill, rollback, restart = decide([inc("LossSpike", start_step=86)], view(),
                                     Policy(global_batch_size=8, rollback_skip_batches=10))
    assert isinstance(kill, Kill) and isinstance(restart, Restart) and restart.from_step == 80
    assert (rollback.target_tag, rollback.aside_tags) == ("global_step80", ("global_step90",))
    # target consumed 640, five steps trained from it before the spike's first step (81..85): 680
    assert rollback.skip_range == (680, 760) and rollback.attempt == 1
    # skip ranges already in force between the target and the spike move the start, as the sampler does
    (_, shifted, _) = decide([inc("LossSpike", start_step=86)], view(skip_ranges=((650, 700),)),
                             Policy(global_batch_size=8, rollback_skip_batches=10))
    assert shifted.skip_range[0] == 730
    assert decide([inc("LossSpike", severity="warning", start_step=86)], view(), Policy()) == []  # suspected


def test_a_recurring_spike_skips_wider_once_then_gives_up():
    policy = Policy(global_batch_size=8, rollback_skip_batches=10)
    first = {"target_step": 80, "spike_step": 86, "skip_batches": 10}
    (_, again, _) = decide([inc("LossSpike", "s2", start_step=92)], view(rollbacks=(first,)), policy)
    assert isinstance(again, Rollback) and again.attempt == 2 and again.skip_batches == 20
    assert again.skip_range[1] - again.skip_range[0] == 160
    second = {"target_step": 80, "spike_step": 92, "skip_batches": 20}
    kill, stop = decide([inc("LossSpike", "s3", start_step=95)], view(rollbacks=(first, second)), policy)
    assert isinstance(stop, GiveUp) and "after 2 rollbacks" in stop.outcome
    # far past the region: a new region, a first rollback again
    (_, fresh, _) = decide([inc("LossSpike", "s4", start_step=5000)], view(rollbacks=(first, second)), policy)
    assert isinstance(fresh, Rollback) and fresh.attempt == 1


def test_no_checkpoint_or_no_consumed_samples_gives_up_and_nothing_restarts():
    kill, stop = decide([inc("LossSpike", start_step=50)], view(), Policy())
    assert isinstance(stop, GiveUp) and "no checkpoint before step 50" in stop.outcome
    blind = StateView(now=1.0, checkpoints=(Checkpoint("global_step80", 80, None),))
    kill, stop = decide([inc("LossSpike", start_step=86)], blind, Policy())
    assert isinstance(stop, GiveUp) and "consumed_samples" in stop.outcome
    (down,) = decide([inc("NonFiniteLimit", step=86)], view(), Policy(on_loss_spike="notify"))
    assert isinstance(down, GiveUp)
    assert [type(a) for a in decide([inc("LossSpike", start_step=86)], view(), Policy(on_loss_spike="ask"))] == \
        [Kill, Ask]


def test_desync_sync_ask_notify():
    desync = [inc("TPDesync", severity="warning", step=70, ln_desync=0.01)]
    assert [type(a) for a in decide(desync, view(), Policy())] == [Sync]
    (ask,) = decide(desync, view(), Policy(on_desync="ask"))
    assert ask.action == "sync-layernorm" and ask.details["ln_desync"] == 0.01
    assert [type(a) for a in decide(desync, view(), Policy(on_desync="notify"))] == [NotifyOnly]
    assert decide(desync, view(), Policy(), kinds=("TrainingHang",)) == []


def test_chain_crash_counts_then_holds_and_top_up_stops_when_held():
    job = [inc("ChainJobCrashed", "j1", step=40, job_id="101")]
    chain = ChainView(live=0)
    restart, top_up = decide(job, view(chain=chain), Policy(min_queued=2))
    assert isinstance(restart, Restart) and restart.job_id == "101" and restart.from_step == 40
    assert isinstance(top_up, ChainTopUp) and top_up.count == 2
    ledger = tuple({"time": 999.0, "from_step": 40} for _ in range(3))
    actions = decide(job, view(chain=chain, restarts=ledger), Policy())
    assert [type(a) for a in actions] == [ChainHold]  # no progress: hold, and no top-up beside the hold
    assert decide([], view(chain=ChainView(live=0, held=True)), Policy()) == []
    gpu = [{**inc("GpuXid", "g"), "key": "GpuXid:node7:0:79"}]
    (exclude, _) = decide(gpu, view(chain=chain), Policy())
    assert exclude.hosts == ("node7",)


def test_advance_matches_the_sampler():
    from trainer.data.sampler import batch_positions
    ranges = [(5, 9), (12, 13), (20, 30)]
    for consumed in (0, 4, 5, 11, 13):
        for n in range(0, 25):
            positions, _ = batch_positions(consumed, n + 1, ranges)
            assert advance(consumed, n, ranges) == positions[-1], (consumed, n)


def test_a_lost_gpu_shrinks_the_data_parallel_replicas_when_asked_to():
    from bigops.watchdog.decide import Shrink
    lost = [inc("GpuMissing")]
    shrink = Policy(on_node_lost="shrink", layout=(2, 2, 4), global_batch_size=16, micro_batch_size=2)
    kill, action, restart = decide(lost, view(lost_devices=1), shrink)
    assert isinstance(kill, Kill) and isinstance(restart, Restart)
    assert isinstance(action, Shrink) and action.target == (2, 2, 2) and action.lost == 1  # 15 left: DP3, but 16 % (2 x 3)
    assert decide(lost, view(lost_devices=9), shrink)[1].target == (2, 2, 1)  # 7 left: one replica
    assert [type(a) for a in decide(lost, view(lost_devices=1), Policy(layout=(2, 2, 4)))] == [NotifyOnly]  # default
    kill, ask = decide(lost, view(lost_devices=1), Policy(on_node_lost="ask", layout=(2, 2, 4), global_batch_size=16))
    assert isinstance(ask, Ask) and ask.action == "shrink" and ask.details == {"target": [2, 2, 2], "lost": 1}
    *_, gave_up = decide(lost, view(lost_devices=13), shrink)  # 3 devices left, a replica needs 4
    assert isinstance(gave_up, GiveUp) and "3 device(s) left" in gave_up.outcome
    assert decide(lost, view(), shrink) == []  # a caller that does not place ranks (the chain keeper): no shrink
    assert decide([inc("GpuMissing", severity="warning")], view(lost_devices=1), shrink) == []


def test_a_chain_short_of_nodes_shrinks_to_whole_replicas_or_says_what_to_run():
    from bigops.watchdog.decide import ChainShrink, chain_shrink_target

    # BLOOM: 48 nodes x 8 GPUs, TP4 x PP12 = one replica per 6 nodes; two nodes dead leave 46
    # (DP7, 6 and 5 do not divide the 2048 samples into micro-batches of 2: DP4 on 24 nodes)
    assert chain_shrink_target((4, 12, 8), 48, 46, 8, 2048, 2) == (24, (4, 12, 4))
    assert chain_shrink_target((2, 1, 2), 2, 1, 2, 8, 2) == (1, (2, 1, 1))
    assert "no whole replica" in chain_shrink_target((4, 2, 1), 2, 1, 4, 8, 2)
    assert "no usable node" in chain_shrink_target((2, 1, 2), 2, 0, 2, 8, 2)

    short = ChainView(live=1, nodes=2, usable_nodes=1, ranks_per_node=2)
    shrink = Policy(on_node_lost="shrink", layout=(2, 1, 2), global_batch_size=8, micro_batch_size=2, min_queued=2)
    (action,) = decide([], view(chain=short), shrink)
    assert isinstance(action, ChainShrink) and (action.nodes, action.target) == (1, (2, 1, 1))  # no top-up too
    notify = decide([], view(chain=short), Policy(layout=(2, 1, 2), global_batch_size=8, micro_batch_size=2))
    assert isinstance(notify[0], NotifyOnly) and "bigops ckpt reshape RUN --tp 2 --pp 1 --dp 1" in notify[0].reason
    assert "--set slurm.nodes=1" in notify[0].reason
    running = ChainView(live=1, running=1, nodes=2, usable_nodes=1, ranks_per_node=2)
    assert not any(isinstance(a, ChainShrink) for a in decide([], view(chain=running), shrink))  # wait for it
    enough = ChainView(live=2, nodes=2, usable_nodes=2, ranks_per_node=2)
    assert decide([], view(chain=enough), shrink) == []
    held = ChainView(live=0, held=True, nodes=2, usable_nodes=1, ranks_per_node=2)
    assert decide([], view(chain=held), shrink) == []  # a held chain is a person's: nothing moves


def test_sinfo_states_say_which_nodes_a_job_can_get():
    from launcher.slurm.chain import usable_from_sinfo

    text = "n1|idle\nn2|down*\nn3|mix\nn3|mix\nn4|drain\nn5|alloc\nn6|idle*\nn7|comp\nn8|idle~\n"
    assert usable_from_sinfo(text) == ["n1", "n3", "n5", "n7", "n8"]
    assert usable_from_sinfo(text, exclude=["n3"]) == ["n1", "n5", "n7", "n8"]


def test_a_chain_shrink_keeps_a_ramp_ups_batches_whole_micro_batches():
    from bigops.watchdog.decide import chain_shrink_target
    # 4 nodes x 2 ranks, TP2: DP4 -> 3 nodes would be DP3, which 8 divides not; 2 nodes DP2: 8 and 6 and 2 do
    assert chain_shrink_target((2, 1, 4), 4, 3, 2, 8, 1, (6, 2, 100)) == (2, (2, 1, 2))
    assert chain_shrink_target((2, 1, 4), 4, 3, 2, 12, 1) == (3, (2, 1, 3))
    assert chain_shrink_target((2, 1, 4), 4, 3, 2, 12, 1, (4, 4, 100)) == (2, (2, 1, 2))  # 4 % 3 != 0
