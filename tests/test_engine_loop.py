"""The shared step (engine/loop.py) and monitor (engine/progress.py): the one backward of the package, the
learning rates, DDP wrapping, and metrics rows at `log_every` and the last step with means over ranks only
then."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from btcxr.engine import distributed
from btcxr.engine.distributed import DistEnv
from btcxr.engine.loop import backward_step, set_learning_rates, wrap_ddp
from btcxr.engine.progress import Progress
from btcxr.engine.runlog import MetricsLog, read_metrics
from btcxr.engine.runtime import grad_scaler


def _model_and_data(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    return model, torch.randn(16, 4), torch.randn(16, 1)


def _sgd(model: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[2].parameters()}], lr=0.1,
                           momentum=0.9)


def test_set_learning_rates_takes_one_value_per_group():
    model, _, _ = _model_and_data()
    optimizer = _sgd(model)
    set_learning_rates(optimizer, (0.5, 0.25))
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.25]
    assert all(type(g["lr"]) is float for g in optimizer.param_groups)
    with pytest.raises(ValueError, match="1 learning rate"):
        set_learning_rates(optimizer, [0.1])


@pytest.mark.parametrize("clip", [None, 0.05])
def test_a_disabled_scaler_is_the_plain_backward_and_step(clip):
    """What every loop on the CPU (and with bf16 / fp32 on CUDA) gets: bit for bit the plain step."""
    steps = []
    for through_scaler in (True, False):
        model, x, y = _model_and_data()
        optimizer = _sgd(model)
        for _ in range(3):
            loss = nn.functional.mse_loss(model(x), y)
            if through_scaler:
                backward_step(loss, optimizer, grad_scaler(torch.device("cpu"), "fp16"), clip=clip)
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip:
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
        steps.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*steps):
        assert torch.equal(a, b)


def test_grad_scaler_is_active_only_for_fp16_on_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert not grad_scaler(cpu, "fp16").is_enabled()
    assert not grad_scaler(cpu, "bf16").is_enabled()
    if torch.cuda.is_available():
        assert grad_scaler(cuda, "fp16").is_enabled()
        assert not grad_scaler(cuda, "bf16").is_enabled()


def test_an_active_scaler_unscales_before_clipping():
    """With a live scaler (2**10 here) the clipped step equals the unscaled one: clip_grad_norm_ sees the
    true gradients, not the scaled ones."""
    got = []
    for scaler in (torch.amp.GradScaler("cpu", init_scale=2.0**10), grad_scaler(torch.device("cpu"), "none")):
        model, x, y = _model_and_data()
        optimizer = _sgd(model)
        backward_step(nn.functional.mse_loss(model(x), y), optimizer, scaler, clip=0.05)
        got.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*got):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_clipping_covers_the_optimizer_parameters_only():
    """A frozen layer (not in the optimizer) neither counts in the norm nor moves."""
    model, x, y = _model_and_data()
    model[0].requires_grad_(False)
    frozen = [p.detach().clone() for p in model[0].parameters()]
    optimizer = torch.optim.SGD(model[2].parameters(), lr=0.1)
    backward_step(nn.functional.mse_loss(model(x), y), optimizer, grad_scaler(torch.device("cpu"), "none"),
                  clip=1e-3)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model[2].parameters()]))
    assert norm == pytest.approx(1e-3, rel=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(frozen, model[0].parameters()))


def test_wrap_ddp_is_the_model_itself_in_one_process():
    model = nn.Linear(2, 2)
    assert wrap_ddp(model, DistEnv()) is model


# ------------------------------------------------------------------------------------------------ progress
@pytest.fixture
def calls(monkeypatch) -> list[float]:
    """Every mean over ranks the monitor asks for."""
    seen: list[float] = []
    real = distributed.mean_over_ranks

    def counting(value: float, env: DistEnv) -> float:
        seen.append(value)
        return real(value, env)

    monkeypatch.setattr(distributed, "mean_over_ranks", counting)
    return seen


def test_rows_at_log_every_and_at_the_last_step_with_means_only_then(tmp_path, calls):
    metrics = MetricsLog(tmp_path, tensorboard=False)
    with Progress(DistEnv(), metrics, log_every=3, last=8, desc="test", rate="items_per_s") as progress:
        due = []
        for step in range(1, 9):
            due.append(progress.update(step, items=4))
            if due[-1]:
                row = progress.row(step, epoch=1, loss=torch.tensor(float(step)), lr=0.5, mean=("loss",))
                assert row["loss"] == float(step) and row["items_per_s"] > 0
    metrics.close()
    assert due == [False, False, True, False, False, True, False, True]
    assert calls == [3.0, 6.0, 8.0]  # one mean a row, none on the other steps
    rows = read_metrics(tmp_path, "train")
    assert [r["step"] for r in rows] == [3, 6, 8]
    assert set(rows[0]) == {"phase", "step", "epoch", "loss", "lr", "items_per_s"}


def test_part_of_a_run_and_no_metrics_log(calls):
    """An epoch's monitor: the bar covers the epoch, the steps are the run's; the main rank alone writes."""
    with Progress(DistEnv(rank=1, world_size=1), None, log_every=10, last=None, start=20, length=5) as progress:
        assert progress.bar.total == 5 and progress.bar.n == 0
        assert [progress.update(s) for s in range(21, 26)] == [False, False, False, False, False]
        assert progress.row(25, loss=1.5, mean=("loss",)) == {"loss": 1.5}
    assert calls == [1.5]
    with pytest.raises(ValueError, match="log_every"):
        Progress(DistEnv(), None, log_every=0)
