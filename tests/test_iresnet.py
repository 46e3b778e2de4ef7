"""iResNet in insightface's layout: shapes, parameter names, checkpoint loading."""
from __future__ import annotations

import pytest
import torch

from xsearch.models.iresnet import DEPTHS, IResNet, iresnet


def test_shapes_of_the_embedding_and_the_local_map():
    model = iresnet(18).eval()
    faces = torch.randint(0, 255, (2, 3, 112, 112), dtype=torch.uint8)
    with torch.no_grad():
        embedding, local = model(faces)
    assert embedding.shape == (2, 512) and local.shape == (2, 256, 14, 14)
    assert model.features.weight.requires_grad is False and bool((model.features.weight == 1).all())


def test_parameter_names_and_counts_follow_insightface():
    model = IResNet(18)
    keys = set(model.state_dict())
    for key in ("conv1.weight", "bn1.running_mean", "prelu.weight", "layer1.0.bn1.weight", "layer1.0.conv1.weight",
                "layer1.0.bn2.weight", "layer1.0.prelu.weight", "layer1.0.conv2.weight", "layer1.0.bn3.weight",
                "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var", "layer4.1.conv2.weight",
                "bn2.weight", "fc.weight", "fc.bias", "features.running_mean"):
        assert key in keys, key
    assert "layer1.1.downsample.0.weight" not in keys  # only the first block of a stage projects
    for depth, blocks in DEPTHS.items():
        if depth <= 34:
            stages = [len(getattr(IResNet(depth), f"layer{i}")) for i in range(1, 5)]
            assert tuple(stages) == blocks
    # iResNet-18's published size: about 24.0 M parameters (11.0 M in the convolutions, 12.8 M in the fc)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(24.0e6, rel=0.02)


def test_loads_an_insightface_state_dict_and_names_a_mismatch(tmp_path):
    source = IResNet(18).eval()
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)
    loaded = IResNet(18, weights=str(path)).eval()
    faces = torch.randint(0, 255, (1, 3, 112, 112), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(faces)[0], source(faces)[0])
    torch.save(IResNet(34).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="r34.pth: not an insightface iResNet checkpoint"):
        IResNet(18, weights=str(tmp_path / "r34.pth"))
    with pytest.raises(ValueError, match="depth must be one of"):
        IResNet(20)
