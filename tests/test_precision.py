"""The GPU path, tested on the CPU: autocast dtype per card (faked devices), activation
checkpointing equal to the plain path, the compile fallback and the per-stage benchmark."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from cxrlib.bench import stages as bench_stages
from cxrlib.training import precision
from cxrlib.model import DualEncoderMTUNet, blocks, set_activation_checkpointing

CUDA = torch.device("cuda")


def fake_cuda(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    # what misled the old code: counting emulation, a T4 "supports" bf16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)


def test_t4_gets_fp16_with_a_scaler(monkeypatch):
    fake_cuda(monkeypatch, (7, 5))
    assert not precision.bf16_native(CUDA)
    setting = precision.autocast_settings(CUDA)
    assert setting == precision.Autocast(True, torch.float16, True) and setting.name == "fp16"


def test_hopper_gets_bf16_without_a_scaler(monkeypatch):
    fake_cuda(monkeypatch, (9, 0))
    assert precision.bf16_native(CUDA)
    assert precision.autocast_settings(CUDA) == precision.Autocast(True, torch.bfloat16, False)


def test_explicit_dtype_and_switches(monkeypatch):
    fake_cuda(monkeypatch, (9, 0))
    assert precision.autocast_settings(CUDA, None, "fp16") == precision.Autocast(True, torch.float16, True)
    assert not precision.autocast_settings(CUDA, False).enabled
    fake_cuda(monkeypatch, (7, 5))
    assert precision.autocast_settings(CUDA, True, "bf16").dtype is torch.bfloat16  # asked for: emulated
    cpu = precision.autocast_settings(torch.device("cpu"), True, "bf16")
    assert not cpu.enabled and cpu.dtype is torch.float32 and cpu.name == "fp32"
    with pytest.raises(ValueError, match="amp_dtype"):
        precision.autocast_settings(CUDA, None, "fp8")


def test_channels_last_defaults_to_cuda_only():
    assert precision.use_channels_last(CUDA) and not precision.use_channels_last(torch.device("cpu"))
    assert precision.use_channels_last(torch.device("cpu"), True)
    x = precision.to_memory_format(torch.zeros(2, 3, 4, 5), True)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert precision.to_memory_format(torch.zeros(2, 3), True).shape == (2, 3)


def _step(net, x, y, target):
    out = net(x)
    loss = F.cross_entropy(out["logits"], y) + F.kl_div(out["saliency_log"].flatten(1), target.flatten(1),
                                                         reduction="batchmean")
    loss.backward()
    return loss.detach()


def _pair():
    torch.manual_seed(0)
    plain = DualEncoderMTUNet(base_width=4).train()
    checkpointed = copy.deepcopy(plain)
    assert set_activation_checkpointing(checkpointed, True) == 2  # the Res-SE encoder and the decoder
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 64, 64, generator=gen)
    target = torch.rand(2, 1, 64, 64, generator=gen)
    return plain, checkpointed, (x, torch.tensor([0, 2]), target / target.sum(dim=(2, 3), keepdim=True))


def _buffers(net):
    return {k: v for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}


def test_checkpointing_gives_the_plain_loss_gradients_and_batchnorm_buffers():
    plain, checkpointed, batch = _pair()
    torch.manual_seed(2)
    loss_plain = _step(plain, *batch)
    torch.manual_seed(2)
    loss_ckpt = _step(checkpointed, *batch)
    assert torch.equal(loss_plain, loss_ckpt)
    grads = dict(checkpointed.named_parameters())
    for name, p in plain.named_parameters():
        assert torch.allclose(p.grad, grads[name].grad, rtol=1e-5, atol=1e-7), name
    a, b = _buffers(plain), _buffers(checkpointed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), \
        [k for k in a if not torch.equal(a[k], b[k])]


def test_without_the_guard_recomputation_moves_batchnorm_twice(monkeypatch):
    """The guard is what keeps the buffers equal: without it the statistics move twice."""
    from contextlib import nullcontext

    monkeypatch.setattr(blocks, "batchnorm_stats_frozen", lambda module: nullcontext())
    plain, checkpointed, batch = _pair()
    _step(plain, *batch)
    _step(checkpointed, *batch)
    a, b = _buffers(plain), _buffers(checkpointed)
    assert any(not torch.equal(a[k], b[k]) for k in a if "res_se" in k and "running_mean" in k)


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken(fn):
        def call(*a, **k):
            raise RuntimeError("no C++ compiler found\nmore detail")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    step = precision.compile_step(lambda x: x * 2, True)
    with pytest.warns(UserWarning, match="torch.compile of the training step failed .*no C\\+\\+ compiler"):
        assert step(3) == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: from then on eager, silently
        assert step(4) == 8
    assert precision.compile_step(abs, False) is abs


@pytest.mark.parametrize("stage", ["stage2", "stage3"])
def test_stage_benchmark_runs_the_trainer_step(stage):
    row = bench_stages.benchmark_stage(stage, "smoke", steps=1, warmup=0, device="cpu", base_width=4,
                                       image_size=(64, 64), batch_size=2, activation_checkpointing=True)
    assert row["train_img_s"] > 0 and row["eval_img_s"] > 0 and row["epoch_s"] > 0
    assert "cached features" in row["options"] and "checkpointing" in row["options"]
    assert row["amp"] == "fp32" and row["batch_size"] == 2 and row["image_size"] == "64x64"
    table = bench_stages.format_stage_rows([row, row])
    assert stage in table and "cooperative chain" in table


def test_stage_benchmark_rejects_unknown_stage():
    with pytest.raises(ValueError, match="--stage must be one of"):
        bench_stages.benchmark_stage("explain", "smoke", device="cpu")


def _one_step_trainer(**fields):
    from cxrlib.training import stages
    from cxrlib.config import make_config

    config = make_config("stage2", "smoke", device="cpu", base_width=4, image_size=(64, 64), batch_size=2,
                         init_from="none", run_dir="unused", **fields)
    torch.manual_seed(0)
    model = stages.build_stage_model(config)
    trainer = stages.stage_trainer(config, model, progress=False)  # the stage registry's set-up
    return trainer, bench_stages._random_samples(config, 4)


def test_trainer_channels_last_on_cpu_gives_the_same_loss():
    plain, data = _one_step_trainer(channels_last=False)
    nhwc, _ = _one_step_trainer(channels_last=True)
    assert not plain.channels_last and nhwc.channels_last
    assert nhwc.model.res_se.levels[0][0].conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    a, b = plain.train_epoch(data, 0), nhwc.train_epoch(data, 0)
    assert a == pytest.approx(b, rel=1e-4)


@pytest.mark.parametrize("setting, what", [("step", "training step"), (True, "model's blocks")])
def test_trainer_compile_failure_trains_eagerly(monkeypatch, setting, what):
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: (lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))))
    trainer, data = _one_step_trainer(compile=setting)
    with pytest.warns(UserWarning, match=f"torch.compile of the {what} failed"):
        loss = trainer.train_epoch(data, 0)
    assert loss > 0


def _res_se_chain():
    torch.manual_seed(0)
    return torch.nn.Sequential(blocks.ResSEBlock(1, 4), torch.nn.MaxPool2d(2), blocks.ResSEBlock(4, 4),
                               torch.nn.MaxPool2d(2), blocks.ResSEBlock(4, 4))


def test_compiled_blocks_give_the_eager_outputs_and_gradients():
    """One block kind, and the aot_eager backend (graph capture and AOT autograd without
    inductor's C++ code generation, which takes minutes on a small CPU): the test stays short."""
    eager = _res_se_chain()
    compiled = copy.deepcopy(eager)
    assert precision.compile_blocks(compiled, backend="aot_eager") == 3
    assert list(compiled.state_dict()) == list(eager.state_dict())  # names and keys unchanged
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    out_e, out_c = eager(x), compiled(x)
    (out_e ** 2).sum().backward()
    (out_c ** 2).sum().backward()
    assert torch.allclose(out_e, out_c, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name


def test_dense_layers_compile_one_by_one_and_share_their_graph():
    """DenseNet's blocks are compiled layer by layer, each layer given one concatenated tensor:
    the outputs, gradients and BatchNorm statistics equal eager's, the keys stay, and the seven
    layers of two blocks (each layer another channel count) share far fewer graphs than seven."""
    import torchvision
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    eager = torchvision.models.DenseNet(growth_rate=4, block_config=(3, 4), num_init_features=8, bn_size=2,
                                        num_classes=3)
    compiled = copy.deepcopy(eager)
    torch._dynamo.reset()
    counters.clear()
    assert precision.compile_blocks(compiled, backend="aot_eager") == 7  # the seven dense layers
    assert list(compiled.state_dict()) == list(eager.state_dict())
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    out_e, out_c = eager(x), compiled(x)
    out_e.square().sum().backward()
    out_c.square().sum().backward()
    assert torch.allclose(out_e, out_c, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name
    for (name, b), c in zip(eager.named_buffers(), compiled.buffers()):
        assert torch.equal(b, c), name
    assert counters["stats"]["unique_graphs"] <= 3
    assert torch._dynamo.config.force_parameter_static_shapes  # the switch was scoped to those calls


def test_block_compile_failure_falls_back_to_eager_once(monkeypatch):
    def broken(fn, **kwargs):
        def call(*a, **k):
            raise RuntimeError("no C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    net = _res_se_chain()
    expected = copy.deepcopy(net)(torch.ones(1, 1, 8, 8))
    precision.compile_blocks(net)
    with pytest.warns(UserWarning, match="torch.compile of the model's blocks failed .*no C\\+\\+ compiler"):
        assert torch.equal(net(torch.ones(1, 1, 8, 8)), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net(torch.ones(1, 1, 8, 8))


def test_repeated_blocks_of_the_dual_network_and_the_compile_setting(monkeypatch, tmp_path):
    from torchvision.models.densenet import _DenseBlock

    from cxrlib.config import ParameterError, make_config

    net = DualEncoderMTUNet(base_width=4, densenet_arch="densenet121")
    found = precision.repeated_blocks(net)
    kinds = {type(m).__name__: sum(type(n) is type(m) for n in found) for m in found}
    assert kinds == {"_DenseBlock": 4, "ResSEBlock": 5, "Up": 5, "DoubleConv": 5}
    assert sum(isinstance(m, _DenseBlock) for m in net.modules()) == 4
    calls = []
    monkeypatch.setattr(precision, "compile_blocks", lambda model, **k: calls.append(model))
    step = lambda batch: batch  # noqa: E731
    assert precision.compile_setting(net, step, True) is step and calls == [net]
    assert precision.compile_setting(net, step, "step") is not step
    assert precision.compile_setting(net, step, "step", distributed=True) is step
    assert precision.compile_setting(net, step, False) is step and len(calls) == 1
    with pytest.raises(ParameterError, match="compile"):
        make_config("stage2", "smoke", run_dir=str(tmp_path), compile="graph")
