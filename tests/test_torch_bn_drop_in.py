"""bnlib's BatchNorm as a drop-in for torch.nn.BatchNorm1d/2d/3d, at the edges.

Second derivatives (``gradgradcheck``, and torch's own double backward as the oracle), the
empty batch, ``eps`` checks, dtype checks, the ``reset_*`` methods and the meta device,
old checkpoints, torch's utilities that look for BN layers, the converters
:func:`bnlib.torch_bn.to_bnlib` / :func:`bnlib.torch_bn.to_torch`, and ``torch.compile``.
"""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnlib import models
from bnlib.inference import bn_layers, precise_bn
from bnlib.torch_bn import BatchNorm, BatchNormFunction, normalize_batch, to_bnlib, to_torch
from bnlib.variants import BatchRenorm, GhostBatchNorm

pytestmark = pytest.mark.usefixtures("one_torch_thread")
F64 = torch.float64
SHAPES = [(5, 3), (4, 3, 5), (3, 3, 4, 2), (2, 3, 3, 2, 2)]  # 2-D to 5-D, 3 channels
TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def twins(shape, **kw) -> tuple[nn.Module, BatchNorm]:
    """torch's layer for ``shape`` and bnlib's, in float64, with the same random state."""
    gen = torch.Generator().manual_seed(sum(shape))
    theirs = TORCH_BN[len(shape)](shape[1], **kw).double()
    with torch.no_grad():
        for name, t in theirs.named_parameters():
            t.copy_((0.5 if name == "weight" else 0.0) + torch.rand(shape[1], generator=gen))
        if theirs.running_mean is not None:
            theirs.running_mean.copy_(torch.randn(shape[1], generator=gen))
            theirs.running_var.copy_(0.5 + torch.rand(shape[1], generator=gen))
    ours = BatchNorm(shape[1], **kw).double()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def as_function(bn: nn.Module):
    """``bn`` as a function of ``(x, *parameters)``, for gradcheck and gradgradcheck."""
    names = [n for n, _ in bn.named_parameters()]
    return lambda x, *ps: torch.func.functional_call(bn, dict(zip(names, ps)), (x,))


# --------------------------------------------------------------------------- second derivatives


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{len(s)}d" for s in SHAPES])
def test_gradgradcheck(shape, training, affine):
    _, bn = twins(shape, affine=affine)
    bn.train(training)
    x = (3 * torch.randn(shape, dtype=F64) + 1).requires_grad_(True)
    params = [p.detach().clone().requires_grad_(True) for p in bn.parameters()]
    assert torch.autograd.gradgradcheck(as_function(bn), (x, *params))


@pytest.mark.parametrize("shape", SHAPES[2:], ids=["4d", "5d"])
def test_gradgradcheck_channels_last(shape):
    _, bn = twins(shape)
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    x = torch.randn(shape, dtype=F64).contiguous(memory_format=fmt).requires_grad_(True)
    params = [p.detach().clone().requires_grad_(True) for p in bn.parameters()]
    assert torch.autograd.gradgradcheck(as_function(bn), (x, *params))


@pytest.mark.parametrize("track", [True, False], ids=["track", "no_track"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{len(s)}d" for s in SHAPES])
def test_second_derivatives_equal_torchs(shape, track):
    """Hessian-vector products through x, weight and bias, and the mixed ones with the
    incoming gradient, against torch's own double backward."""
    results = []
    gen = torch.Generator().manual_seed(3)
    x0 = 2 * torch.randn(shape, generator=gen, dtype=F64) + 1
    dy0, v = (torch.randn(shape, generator=gen, dtype=F64) for _ in range(2))
    for bn in twins(shape, track_running_stats=track):
        x, dy = x0.clone().requires_grad_(True), dy0.clone().requires_grad_(True)
        inputs = (x, bn.weight, bn.bias)
        dx, dw, db = torch.autograd.grad(bn(x), inputs, dy, create_graph=True)
        # A scalar of all three first derivatives, differentiated once more.
        s = (dx * v).sum() + (dw * torch.arange(1.0, 4.0, dtype=F64)).sum() + dw.square().sum()
        results.append(torch.autograd.grad(s, (*inputs, dy), allow_unused=True))
    inputs = (x0, x0[0, :, ...].flatten()[:3], x0[0, :, ...].flatten()[:3], dy0)
    for what, ours, theirs, like in zip(("x", "weight", "bias", "dy"), *results[::-1], inputs):
        ours = torch.zeros_like(like) if ours is None else ours  # unused: a zero derivative
        theirs = torch.zeros_like(like) if theirs is None else theirs
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10, msg=what)


def test_create_graph_gives_the_plain_first_derivatives():
    x = (torch.randn(4, 3, 5, 6, dtype=F64) * 3 + 2).requires_grad_(True)
    w, b = torch.rand(3, dtype=F64) + 0.5, torch.randn(3, dtype=F64)
    w.requires_grad_(True), b.requires_grad_(True)
    dy = torch.randn(x.shape, dtype=F64)
    plain = torch.autograd.grad(BatchNormFunction.apply(x, w, b, 1e-5)[0], (x, w, b), dy)
    graph = torch.autograd.grad(BatchNormFunction.apply(x, w, b, 1e-5)[0], (x, w, b), dy,
                                create_graph=True)
    assert graph[0].grad_fn is not None and graph[1].grad_fn is not None  # functions of x
    for p, g in zip(plain, graph):
        torch.testing.assert_close(g, p, rtol=1e-12, atol=1e-12)


def test_gradient_penalty_gradients_match_torch():
    """WGAN-GP: the penalty on ||d out / d x|| trained through a BN network."""
    grads = []
    for norm in ("torch.nn", "bn"):
        torch.manual_seed(0)
        net = models.mlp([6, 8, 8, 1], norm=norm).double()
        x = torch.randn(16, 6, dtype=F64, requires_grad=True)
        (g,) = torch.autograd.grad(net(x).sum(), x, create_graph=True)
        ((g.norm(dim=1) - 1).square().mean()).backward()
        grads.append([p.grad for p in net.parameters()])
    for theirs, ours in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------- empty batch, eps, dtypes


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4), (2, 3, 0), (0, 3, 2, 2), (0, 3, 1, 2, 2)])
def test_empty_batch_matches_torch(shape, training, momentum):
    theirs, ours = twins(shape, momentum=momentum)
    for bn in (theirs, ours):
        bn.train(training)
        x = torch.randn(shape, dtype=F64, requires_grad=True)
        y = bn(x)
        y.sum().backward()
        assert y.shape == shape and x.grad.shape == shape
    for name in ("weight", "bias"):
        torch.testing.assert_close(getattr(ours, name).grad, getattr(theirs, name).grad)
    for k, v in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=0, atol=0, msg=k)
    assert int(ours.num_batches_tracked) == int(training)  # counted, averages unchanged
    # The next real batch uses the count, as torch does with momentum=None.
    x = torch.randn(4, *shape[1:2], *[2] * (len(shape) - 2), dtype=F64)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.running_var, theirs.running_var)


@pytest.mark.parametrize("eps", [0.0, -1.0, float("nan")])
@pytest.mark.parametrize("track", [True, False], ids=["track", "no_track"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_eps_is_checked_as_torch_checks_it(eps, track, training):
    theirs, ours = twins((4, 3), eps=eps, track_running_stats=track)
    before = copy.deepcopy(ours.state_dict())
    x = torch.randn(4, 3, dtype=F64)
    theirs.train(training), ours.train(training)
    if eps != eps:  # torch takes a NaN eps and returns NaN; bnlib refuses it
        with pytest.raises(ValueError, match="eps must be"):
            ours(x)
        return
    try:
        expected = theirs(x)
    except ValueError as e:
        pattern = "must be positive" if "positive" in str(e) else "must be non-negative"
        with pytest.raises(ValueError, match=pattern):
            ours(x)
        for k, v in ours.state_dict().items():  # torch counts the refused batch; we do not
            assert torch.equal(v, before[k]), k
    else:
        torch.testing.assert_close(ours(x), expected, equal_nan=True)


def test_eps_zero_remains_possible_in_the_functional_form():
    """Chapters 2 and 3 show exact invariances with eps = 0: normalize_batch (and the NumPy
    reference) allow it; the module refuses it in training, as torch does, and says where
    to go instead."""
    x = torch.randn(16, 4, dtype=F64, requires_grad=True)
    w = torch.rand(4, dtype=F64) + 0.5
    y1 = normalize_batch(x, w, eps=0.0)
    y2 = normalize_batch(7.0 * x, w, eps=0.0)
    torch.testing.assert_close(y2, y1, rtol=0, atol=1e-13)
    (g1,) = torch.autograd.grad(y1, x, x)
    (g2,) = torch.autograd.grad(y2, x, x)
    torch.testing.assert_close(g2, g1, rtol=0, atol=1e-12)  # BN(7x) is BN(x) as functions
    ones, zeros = torch.ones(4, dtype=F64), torch.zeros(4, dtype=F64)
    torch.testing.assert_close(normalize_batch(x), BatchNormFunction.apply(x, ones, zeros,
                                                                           1e-5)[0])
    with pytest.raises(ValueError, match="eps must be positive.*normalize_batch"):
        BatchNorm(4, eps=0.0)(x)
    with pytest.raises(ValueError, match="eps must be non-negative"):
        normalize_batch(x, eps=-1.0)
    assert normalize_batch(torch.randn(0, 4)).shape == (0, 4)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_mixed_dtypes_refused_as_in_torch(training):
    x_dtypes = (torch.float16, torch.bfloat16, torch.float32, F64)
    for layer_dtype in (torch.float32, F64):
        for x_dtype in x_dtypes:
            theirs = nn.BatchNorm2d(3).to(layer_dtype).train(training)
            ours = BatchNorm(3).to(layer_dtype).train(training)
            x = torch.randn(4, 3, 2, 2).to(x_dtype)
            try:
                expected = theirs(x)
            except RuntimeError:
                before = copy.deepcopy(ours.state_dict())
                with pytest.raises(RuntimeError, match="mixed dtype"):
                    ours(x)
                assert all(torch.equal(v, before[k]) for k, v in ours.state_dict().items())
            else:
                y = ours(x)
                assert y.dtype == expected.dtype
                torch.testing.assert_close(y.float(), expected.float(), atol=2e-2, rtol=2e-2)


def test_renorm_and_ghost_count_an_empty_batch():
    for bn in (BatchRenorm(3), GhostBatchNorm(3, 2)):
        y = bn(torch.randn(0, 3))
        assert y.shape == (0, 3) and int(bn.num_batches_tracked) == 1
        assert torch.equal(bn.running_mean, torch.zeros(3))


# ------------------------------------------------------------------- state: reset, meta, load


def test_reset_methods_and_meta_initialisation():
    bn = BatchNorm(4, momentum=None)
    bn(torch.randn(8, 4) * 3 + 2)
    with torch.no_grad():
        bn.weight.mul_(3)
    bn.reset_running_stats()
    assert torch.equal(bn.running_mean, torch.zeros(4)) and torch.equal(bn.running_var,
                                                                        torch.ones(4))
    assert int(bn.num_batches_tracked) == 0 and not torch.equal(bn.weight, torch.ones(4))
    bn.reset_parameters()
    assert torch.equal(bn.weight, torch.ones(4)) and torch.equal(bn.bias, torch.zeros(4))

    # How large models are built: on the meta device, then materialized and initialised.
    model = nn.Sequential(nn.Linear(5, 4, device="meta"), BatchNorm(4, device="meta"))
    assert all(t.is_meta for t in model.state_dict().values())
    model.to_empty(device="cpu")
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    reference = BatchNorm(4)
    for k, v in reference.state_dict().items():
        assert torch.equal(model[1].state_dict()[k], v), k
    assert model(torch.randn(6, 5)).shape == (6, 4)


@pytest.mark.parametrize("kw", [{}, {"affine": False}, {"track_running_stats": False},
                                {"bias": False}, {"momentum": None, "eps": 1e-3}])
def test_repr_and_factory_kwargs_match_torch(kw):
    theirs = nn.BatchNorm2d(3, **kw, dtype=F64)
    ours = BatchNorm(3, **kw, dtype=F64)
    assert repr(ours).replace("BatchNorm", "BatchNorm2d", 1) == repr(theirs)
    assert [(k, v.dtype, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.dtype, v.shape) for k, v in theirs.state_dict().items()]
    assert ours.state_dict()._metadata[""]["version"] == theirs.state_dict()._metadata[""][
        "version"]


def test_old_checkpoint_without_num_batches_tracked_loads():
    """Checkpoints from before torch 0.4.1 lack the counter; torch's versioning fills it in."""
    old = nn.BatchNorm2d(3)
    old(torch.randn(4, 3, 2, 2))
    state = old.state_dict()
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = 1
    for bn in (nn.BatchNorm2d(3), BatchNorm(3)):
        bn.load_state_dict(state)  # strict: would fail on the missing key
        assert int(bn.num_batches_tracked) == 0
        torch.testing.assert_close(bn.running_mean, old.running_mean)


def test_momentum_out_of_range_is_refused():
    with pytest.raises(ValueError, match="momentum must be in"):
        BatchNorm(3, momentum=1.5)


# --------------------------------------------------------------------------- torch's utilities


def test_recognised_as_torch_batchnorm():
    assert isinstance(BatchNorm(3), _BatchNorm)
    assert issubclass(BatchNorm, nn.modules.batchnorm._NormBase)


def test_convert_sync_batchnorm_finds_it():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), BatchNorm(3, momentum=0.3), nn.ReLU())
    model(torch.randn(4, 1, 5, 5))
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    assert type(synced[1]) is nn.SyncBatchNorm and synced[1].momentum == 0.3
    for k, v in model[1].state_dict().items():
        assert torch.equal(synced[1].state_dict()[k], v), k


def test_swa_update_bn_recalibrates_it_like_torchs():
    """torch.optim.swa_utils.update_bn calls reset_running_stats() on every _BatchNorm."""
    batches = [torch.randn(8, 4) * 2 + 1 for _ in range(3)]
    nets = []
    for norm in ("torch.nn", "bn"):
        torch.manual_seed(0)
        net = models.mlp([4, 6, 2], norm=norm)
        net(torch.randn(8, 4) * 5)  # running statistics to be replaced
        torch.optim.swa_utils.update_bn(batches, net)
        nets.append(bn_layers(net)[0])
    assert int(nets[1].num_batches_tracked) == 3
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(nets[1], name), getattr(nets[0], name))


def test_func_replace_all_batch_norm_modules_finds_it():
    net = models.mlp([4, 6, 2], norm="bn")
    torch.func.replace_all_batch_norm_modules_(net)
    (bn,) = [m for m in net.modules() if isinstance(m, BatchNorm)]
    assert bn.running_mean is None and not bn.track_running_stats
    net.eval()
    x = torch.randn(8, 4)
    torch.testing.assert_close(net(x), net.train()(x))  # batch statistics in both modes


def test_no_weight_decay_groups_find_it():
    """The usual recipe: no weight decay on the parameters of normalization layers."""
    model = models.cnn(channels=(4, 8), norm="bn")
    norm_params = {id(p) for m in model.modules() if isinstance(m, _BatchNorm)
                   for p in m.parameters()}
    assert len(norm_params) == 4  # two BN layers, weight and bias each


def test_fuse_conv_bn_eval_folds_it():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(2, 3, 3).eval(), BatchNorm(3)
    bn(torch.randn(8, 3, 4, 4) * 2 + 1)
    bn.eval()
    fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
    x = torch.randn(2, 2, 6, 6)
    torch.testing.assert_close(fused(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_precise_bn_resets_through_reset_running_stats(monkeypatch):
    net = models.mlp([4, 6, 6, 2], norm="bn")
    calls = []
    original = BatchNorm.reset_running_stats
    monkeypatch.setattr(BatchNorm, "reset_running_stats",
                        lambda self: (calls.append(self), original(self))[1])
    precise_bn(net, [torch.randn(8, 4) for _ in range(2)])
    assert len(calls) == 2


# --------------------------------------------------------------------------- the converters


def test_to_bnlib_shares_state_and_to_torch_restores_the_classes():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=None), nn.Flatten(),
                          nn.Linear(36, 5), nn.BatchNorm1d(5, affine=False, eps=1e-3))
    model(torch.randn(8, 1, 5, 5))
    model.eval()
    params = {n: p for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}
    x = torch.randn(3, 1, 5, 5)
    expected = model(x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    assert to_bnlib(model) is model  # in place, like convert_sync_batchnorm
    assert [type(m) for m in model] == [nn.Conv2d, BatchNorm, nn.Flatten, nn.Linear, BatchNorm]
    assert model[1].momentum is None and model[4].eps == 1e-3 and model[4].weight is None
    assert all(p is params[n] for n, p in model.named_parameters())  # the same Parameters
    assert all(b is buffers[n] for n, b in model.named_buffers())
    assert not model[1].training
    torch.testing.assert_close(model(x), expected)
    model.train()
    model(x).sum().backward()
    opt.step()  # the optimizer built before still trains the model's parameters

    assert to_torch(model) is model
    assert [type(m) for m in model] == [nn.Conv2d, nn.BatchNorm2d, nn.Flatten, nn.Linear,
                                        nn.BatchNorm1d]
    assert all(p is params[n] for n, p in model.named_parameters())


def test_converters_on_a_bare_layer_and_a_shared_layer():
    bn = nn.BatchNorm3d(2)
    ours = to_bnlib(bn)
    assert type(ours) is BatchNorm and type(bn) is nn.BatchNorm3d  # the root is returned
    assert type(to_torch(ours)) is nn.BatchNorm3d
    shared = nn.BatchNorm1d(3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    to_bnlib(model)
    assert model[0] is model[2] and type(model[0]) is BatchNorm


def test_to_torch_needs_a_class_for_layers_it_did_not_convert():
    model = models.cnn(channels=(3, 4), norm="bn")
    before = [type(m) for m in model]
    with pytest.raises(ValueError, match="torch class is unknown"):
        to_torch(model)
    assert [type(m) for m in model] == before  # nothing changed
    with pytest.raises(ValueError, match="default must be"):
        to_torch(model, default=nn.LayerNorm)
    to_torch(model, default=nn.BatchNorm2d)
    assert sum(type(m) is nn.BatchNorm2d for m in model) == 2
    assert not any(isinstance(m, BatchNorm) for m in model)


def test_to_torch_leaves_the_variants_alone():
    model = nn.Sequential(GhostBatchNorm(3, 2), BatchRenorm(3), BatchNorm(3))
    to_torch(model, default=nn.BatchNorm1d)
    assert [type(m) for m in model] == [GhostBatchNorm, BatchRenorm, nn.BatchNorm1d]


def test_to_bnlib_refuses_what_bnlib_refuses_before_changing_anything():
    model = nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm1d(3, momentum=2.0))
    with pytest.raises(ValueError, match="momentum"):
        to_bnlib(model)
    assert [type(m) for m in model] == [nn.BatchNorm1d, nn.BatchNorm1d]


# --------------------------------------------------------------------------- torch.compile


def compiled_matches_eager(backend: str) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = models.cnn(channels=(4, 8), norm="bn").double()
    for bn in bn_layers(eager)[:1]:
        bn.momentum = None  # the cumulative average reads num_batches_tracked
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    for _ in range(2):
        x = torch.randn(8, 1, 28, 28, dtype=F64)
        ys = []
        for m, net in ((model, compiled), (eager, eager)):
            m.train()
            m.zero_grad()
            y = net(x)
            y.square().sum().backward()
            ys.append(y)
        torch.testing.assert_close(ys[0], ys[1], rtol=1e-12, atol=1e-12)
        for (name, p), q in zip(model.named_parameters(), eager.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
        for (name, b), c in zip(model.named_buffers(), eager.buffers()):
            torch.testing.assert_close(b, c, rtol=1e-12, atol=1e-12, msg=name)
    model.eval(), eager.eval()
    x = torch.randn(4, 1, 28, 28, dtype=F64)
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-12, atol=1e-12)


def test_compile_fullgraph_captures_a_bnlib_network():
    """Dynamo traces the whole network, the Function's forward and backward included, in
    one graph (``fullgraph=True`` raises on any graph break); ``aot_eager`` runs that
    graph without generating code, so this checks capture and numbers quickly."""
    compiled_matches_eager("aot_eager")


@pytest.mark.slow  # Inductor generates and compiles C++ for the forward and the backward
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile needs a C++ compiler on CPU (apt-get install g++)")
def test_compile_fullgraph_inductor_gives_the_same_numbers():
    compiled_matches_eager("inductor")
