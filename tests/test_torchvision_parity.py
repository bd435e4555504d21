"""to_bnlib / to_torch on real architectures nobody here wrote: torchvision's models.

Each model is built by torchvision with ``torch.nn.BatchNorm2d``; :func:`to_bnlib` swaps in
this book's layer. The two copies then train side by side in float64 (3 SGD steps on the
same batches, the same dropout and stochastic-depth draws) and we compare the training-mode
outputs, every parameter gradient, every buffer after each step, and the eval-mode output;
finally :func:`to_torch` converts the trained copy back and must restore torch's classes
and the exact state.

Tolerances. Rounding differs between any two correct float64 implementations (torch itself
differs from torch on channels-last input by as much), and a network amplifies it, so the
comparison is not to 1e-12. Some gradients are zero in exact arithmetic (the bias of a BN
whose output feeds a 1x1 convolution and another BN: a per-channel shift is normalized
away), and others are small results of cancelling sums; both are pure rounding noise
relative to themselves. So each gradient is compared relative to the model's largest
gradient entry ``G``, outputs and buffers relative to their own size. Measured worst cases
(bnlib vs torch, and in brackets torch channels-last vs torch), input (4, 3, 64, 64):
ResNet-18 outputs 1e-14 (1e-14), gradients 4e-14 G (4e-14 G); MobileNetV3-small 4e-15
(5e-15), 6e-15 G (6e-15 G); EfficientNet-B0 2e-11 (7e-12), 5e-11 G (5e-11 G). The stated
tolerance, ``TOL = 1e-9``, leaves a margin of 20 over the worst of them.

torchvision's C++ operators (``nms``, ``roi_align``, ...) cannot load beside the CPU build
of torch (PyPI's torchvision wheel is built against the CUDA build); only the model
definitions, which are pure Python, are used here (see :func:`import_torchvision_models`).
"""

from __future__ import annotations

import copy
import sys
import types

import pytest
import torch
from torch import nn

from bnlib.torch_bn import BatchNorm, to_bnlib, to_torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOL = 1e-9
STEPS, LR = 3, 1e-3
F64 = torch.float64


def import_torchvision_models() -> types.ModuleType:
    """``torchvision.models``, even where torchvision's compiled operators cannot load.

    torchvision 0.28 registers fake kernels for its C++ operators when it is imported; when
    its ``_C`` extension does not load (PyPI's wheel is linked against the CUDA build of
    torch, this project installs the CPU build), that registration fails with "operator
    torchvision::nms does not exist". The models need none of those operators, so on that
    failure the import is retried with the two registration modules replaced by empty ones.
    """
    try:
        import torchvision.models
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
            sys.modules[name] = types.ModuleType(name)
        import torchvision.models
    return torchvision.models


tv_models = import_torchvision_models()
ARCHITECTURES = {"resnet18": 20, "mobilenet_v3_small": 34, "efficientnet_b0": 49}  # BN layers


def build(name: str) -> nn.Module:
    """torchvision's model in float64, its BN parameters drawn away from (1, 0)."""
    torch.manual_seed(0)
    model = getattr(tv_models, name)(num_classes=10).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))
    return model


def assert_relative(actual, expected, scale, what) -> None:
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= TOL * scale, f"{what}: difference {err:.2e} > {TOL:.0e} x {scale:.3g}"


@pytest.mark.slow  # real architectures in float64: about 5 to 15 s each on one core
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_converted_model_trains_like_torchvisions(name):
    theirs = build(name)
    ours = to_bnlib(copy.deepcopy(theirs))
    assert sum(type(m) is BatchNorm for m in ours.modules()) == ARCHITECTURES[name]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ours.modules())
    gen = torch.Generator().manual_seed(2)
    for step in range(STEPS):
        x = torch.randn(4, 3, 64, 64, generator=gen, dtype=F64)
        r = torch.randn(4, 10, generator=gen, dtype=F64)
        outputs = []
        for model in (theirs, ours):
            model.train()
            model.zero_grad()
            torch.manual_seed(100 + step)  # the same dropout and stochastic-depth draws
            y = model(x)
            (y * r).sum().backward()
            outputs.append(y.detach())
        assert_relative(outputs[1], outputs[0], outputs[0].abs().max().item(), f"step {step} y")
        largest = max(p.grad.abs().max().item() for p in theirs.parameters())
        for (n, p), q in zip(theirs.named_parameters(), ours.parameters()):
            assert_relative(q.grad, p.grad, largest, f"step {step} gradient of {n}")
        with torch.no_grad():
            for model in (theirs, ours):
                for p in model.parameters():
                    p -= LR * p.grad
        for (n, b), c in zip(theirs.named_buffers(), ours.buffers()):
            if b.is_floating_point():
                assert_relative(c, b, max(1.0, b.abs().max().item()), f"step {step} {n}")
            else:
                assert torch.equal(c, b), n
    theirs.eval(), ours.eval()
    x = torch.randn(4, 3, 64, 64, generator=gen, dtype=F64)
    expected = theirs(x)
    assert_relative(ours(x), expected, expected.abs().max().item(), "eval y")

    back = to_torch(copy.deepcopy(ours))
    assert sum(type(m) is nn.BatchNorm2d for m in back.modules()) == ARCHITECTURES[name]
    assert not any(isinstance(m, BatchNorm) for m in back.modules())
    assert back.state_dict().keys() == theirs.state_dict().keys()
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert_relative(back(x), expected, expected.abs().max().item(), "eval y after to_torch")
