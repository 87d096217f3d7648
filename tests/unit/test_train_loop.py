"""The trainer loop's pure pieces: the save rule, the non-finite exit, and the fault hooks it is given."""

import pytest
import torch

from trainer import faults
from trainer.faults import NO_FAULTS, EnvFaultHooks, InjectedCrash, hooks_from_env
from trainer.train import TrainState, nonfinite_limit_reached, should_save


def test_a_requested_save_saves_any_step_not_saved_yet():
    assert should_save(7, 3, requested=True)
    assert should_save(7, 3, requested=True, skipped=True)  # a stop saves even in a NaN streak
    assert should_save(0, -1, requested=True)  # a stop before the first step still leaves a checkpoint
    assert not should_save(7, 7, requested=True)  # resumed from (or just saved) this very step


def test_a_periodic_save_waits_for_a_step_whose_update_was_applied():
    assert should_save(10, 5, due=True)
    assert not should_save(10, 5, due=True, skipped=True)
    assert not should_save(11, 5)  # nothing due, nothing asked
    assert not should_save(10, 10, due=True)


def test_a_fresh_state_has_saved_nothing():
    state = TrainState()
    assert (state.step, state.consumed, state.last_saved, state.save_due) == (0, 0, -1, False)
    assert should_save(state.step, state.last_saved, requested=True)


def test_nonfinite_limit():
    assert nonfinite_limit_reached(3, 3) and nonfinite_limit_reached(4, 3)
    assert not nonfinite_limit_reached(2, 3)
    assert not nonfinite_limit_reached(100, 0)  # 0: no limit


def test_no_faults_injects_nothing_even_when_the_environment_asks(monkeypatch):
    monkeypatch.setenv(faults.CRASH, "1")
    monkeypatch.setenv(faults.CORRUPT, "0-100")
    monkeypatch.setenv(faults.ENOSPC_IN_SAVE, "1")
    sample = lambda position: torch.full((4,), position)  # noqa: E731
    assert NO_FAULTS.samples(sample, 10) is sample
    module = torch.nn.Linear(2, 2)
    NO_FAULTS.before_step(1, module)
    NO_FAULTS.in_save(1)
    assert NO_FAULTS.after_step(1, module, tp_rank=1) is False
    assert not module._forward_hooks  # nothing hooked into the model


def test_env_hooks_fire_what_the_variables_ask(monkeypatch):
    monkeypatch.setenv(faults.CRASH, "3")
    monkeypatch.setenv(faults.CORRUPT, "2-3")
    hooks = EnvFaultHooks()
    module = torch.nn.Linear(2, 2)
    hooks.before_step(2, module)  # not the crash step
    with pytest.raises(InjectedCrash):
        hooks.before_step(3, module)
    sample = hooks.samples(lambda position: torch.zeros(64, dtype=torch.long), 50)
    assert torch.equal(sample(1), torch.zeros(64, dtype=torch.long)) and sample(2).any()


def test_hooks_from_env_are_a_noop_unless_a_trainer_fault_is_asked_for():
    assert hooks_from_env({}) is NO_FAULTS
    assert hooks_from_env({faults.SLOW_RANK: "1:0.5", faults.ONCE_DIR: "/tmp/x"}) is NO_FAULTS  # not loop hooks
    assert hooks_from_env({faults.CRASH: ""}) is NO_FAULTS
    for name in faults.TRAINER_FAULTS:
        assert isinstance(hooks_from_env({name: "5"}), EnvFaultHooks), name
