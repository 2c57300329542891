"""pyquant.models.mobilenet_v2: torchvision's layout without torchvision."""

import pytest
import torch

from pyquant.models.mobilenet_v2 import mobilenet_v2


def test_width_1_has_torchvisions_parameter_count_and_output_shape():
    model = mobilenet_v2()
    assert sum(p.numel() for p in model.parameters()) == 3_504_872  # torchvision.models.mobilenet_v2()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_cifar_stem_keeps_32x32_inputs_at_stride_8():
    model = mobilenet_v2(10, 0.5, cifar_stem=True)
    feats = model.features(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, 1280, 4, 4)


def test_a_torchvision_state_dict_loads_and_gives_the_same_outputs():
    try:
        import torchvision as tv
    except Exception as err:  # absent, or a build whose C++ ops do not load against this torch
        pytest.skip(f"torchvision unavailable: {type(err).__name__}: {err}")
    torch.manual_seed(0)
    ref = tv.models.mobilenet_v2(weights=None, width_mult=0.75).eval()
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours = mobilenet_v2(1000, 0.75, state_dict=ref.state_dict())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
