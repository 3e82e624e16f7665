"""TangentLinear is nn.Linear in value, gradient and JVP, and its JVP does one matrix product, not two."""

import pytest
import torch
from torch import nn
from torch.func import jvp
from torch.utils.flop_counter import FlopCounterMode

from cmt.nets.tangent_linear import TangentLinear


def pair(bias: bool = True, dtype: torch.dtype = torch.float64) -> tuple[nn.Linear, TangentLinear]:
    torch.manual_seed(0)
    plain = nn.Linear(6, 5, bias=bias, dtype=dtype)
    lean = TangentLinear(6, 5, bias=bias, dtype=dtype)
    lean.load_state_dict(plain.state_dict())
    return plain, lean


def net(layer: nn.Module) -> nn.Module:
    """The layer between two nonlinearities, so tangents and gradients are not those of a bare linear map."""
    return nn.Sequential(nn.Tanh(), layer, nn.Tanh())


@pytest.mark.parametrize("bias", [True, False])
def test_values_gradients_and_jvp_are_nn_linear_s(bias):
    plain, lean = pair(bias)
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    v = torch.randn_like(x)
    results = []
    for layer in (plain, lean):
        out, tangent = jvp(net(layer), (x,), (v,))
        grads = torch.autograd.grad((out.square().sum(), tangent.sin().sum()), list(layer.parameters()))
        results.append((out, tangent, grads))
    (out_a, tan_a, grads_a), (out_b, tan_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=1e-14)
    torch.testing.assert_close(tan_b, tan_a, rtol=0, atol=1e-13)  # gradients through the tangent too (above)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)


def test_jvp_matches_a_central_finite_difference():
    _, lean = pair()
    f = net(lean)
    x, v = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    _, tangent = jvp(f, (x,), (v,))
    h = 1e-6
    with torch.no_grad():
        torch.testing.assert_close(tangent, (f(x + h * v) - f(x - h * v)) / (2 * h), rtol=1e-7, atol=1e-9)


def test_input_gradient_and_state_dict_names_are_nn_linear_s():
    plain, lean = pair()
    assert list(lean.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    (ga,) = torch.autograd.grad(net(plain)(x).sum(), x)
    (gb,) = torch.autograd.grad(net(lean)(x).sum(), x)
    torch.testing.assert_close(gb, ga, rtol=0, atol=1e-14)


def test_jvp_does_one_matrix_product_where_pytorch_s_rule_does_two():
    x, v = torch.randn(64, 6), torch.randn(64, 6)
    counts = []
    for layer in pair(dtype=torch.float32):
        with FlopCounterMode(display=False) as forward:
            layer(x)
        with FlopCounterMode(display=False) as tangent:
            jvp(layer, (x,), (v,))
        counts.append(tangent.get_total_flops() / forward.get_total_flops())
    assert counts == [3.0, 2.0]  # nn.Linear: primal + dx·Wᵀ + x·dWᵀ with dW = 0; ours: primal + dx·Wᵀ


def test_gradients_keep_the_parameters_dtype_under_bf16_autocast():
    plain, lean = pair(dtype=torch.float32)
    x = torch.randn(8, 6)
    grads = []
    for layer in (plain, lean):
        with torch.autocast("cpu", torch.bfloat16):
            out = layer(x)
        assert out.dtype == torch.bfloat16
        grads.append(torch.autograd.grad(out.float().square().sum(), list(layer.parameters())))
    for a, b in zip(*grads):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2)
