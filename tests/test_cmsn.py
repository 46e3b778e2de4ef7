"""CMSN-style module: IRRA exactly when its parts are off, IRRA's features at initialisation, gradients
into every new part, ranking never uses the training-only combined representation."""
from __future__ import annotations

import pytest
import torch

from xsearch.models import CMSN, IRRA, CLIPTowers
from xsearch.models.clip import tiny_clip_config

SMALL = {"imfi_layers": (1, 2), "image_windows": (1, 2), "text_kernels": (1, 3), "crl_layers": 1, "cross_layers": 1}
CAPTIONS = ["a man in a red coat", "a man with a red coat and a bag", "a woman in blue jeans", "the woman wears blue"]


def _towers(seed: int = 0) -> CLIPTowers:
    torch.manual_seed(seed)
    return CLIPTowers(config=tiny_clip_config(width=64, embed_dim=64), image_size=(64, 32), context_length=16)


def _batch() -> dict:
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (4, 3, 64, 32), dtype=torch.uint8, generator=generator)
    return {"image": images, "text": CAPTIONS, "pid": torch.tensor([0, 0, 1, 1])}


def _pair(**cmsn_options) -> tuple[IRRA, CMSN]:
    irra = IRRA(_towers(), num_classes=2, cross_layers=1)
    cmsn = CMSN(_towers(), num_classes=2, **{**SMALL, **cmsn_options})
    missing, unexpected = cmsn.load_state_dict(irra.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("image_imfi", "text_imfi", "crl", "centers")) for k in missing)
    return irra, cmsn


def test_with_every_part_off_it_is_irra():
    irra, cmsn = _pair(imfi=False, crl=False, cria_weight=0.0, spt_weight=0.0)
    batch = _batch()
    torch.manual_seed(7)
    expected = irra.training_losses(batch)
    torch.manual_seed(7)  # same MLM masking
    got = cmsn.training_losses(batch)
    assert set(expected) <= set(got)
    for name in ("sdm", "id", "mlm", "loss"):
        assert torch.equal(got[name], expected[name]), name
    assert torch.equal(cmsn.encode_queries(batch), irra.encode_queries(batch))


def test_imfi_starts_at_the_irra_features():
    irra, cmsn = _pair()
    batch = _batch()
    assert torch.allclose(cmsn.encode_gallery(batch), irra.encode_gallery(batch), atol=1e-6)
    assert torch.allclose(cmsn.encode_queries(batch), irra.encode_queries(batch), atol=1e-6)


def test_every_part_gets_gradients_and_losses_are_logged():
    _, cmsn = _pair()
    output = cmsn.training_losses(_batch())
    assert {"sdm", "id", "mlm", "cria", "cria_ce", "cria_center", "spt", "loss"} <= set(output)
    expected = sum(cmsn.loss_weights[k] * output[k] for k in ("sdm", "id", "mlm", "cria", "spt"))
    assert torch.allclose(output["loss"], expected)
    output["loss"].backward()
    with torch.no_grad():  # the fusion's output projections start at zero: step once so everything feeds the loss
        for parameter in cmsn.parameters():
            if parameter.grad is not None:
                parameter -= 0.1 * parameter.grad
    cmsn.zero_grad()
    cmsn.training_losses(_batch())["loss"].backward()
    for name in ("image_imfi.decoder.attn.out_proj.weight", "text_imfi.decoder.mlp.2.weight",
                 "image_imfi.depth.projections.1.1.weight", "text_imfi.phrases.1.weight", "crl.head.1.weight",
                 "centers.weight", "towers.vision.embeddings.position_embedding.weight"):
        grad = dict(cmsn.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_ranking_never_runs_the_combined_representation():
    _, cmsn = _pair()
    cmsn.crl.forward = lambda *a, **k: (_ for _ in ()).throw(AssertionError("CRL used at test time"))
    batch = _batch()
    assert cmsn.encode_queries(batch).shape == (4, 64) and cmsn.encode_gallery(batch).shape == (4, 64)


def test_text_padding_does_not_change_the_fused_feature():
    _, cmsn = _pair()
    with torch.no_grad():
        for module in cmsn.text_imfi.modules():  # leave the zero init so the fusion actually contributes
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=0.1)
        short = cmsn.towers.tokenize(["a man in a red coat"])  # 16-token context
        padded = torch.cat([short, torch.zeros(1, 16, dtype=short.dtype)], dim=1)  # 32 tokens, more padding
        base, again = cmsn.text_features(short).global_features, cmsn.text_features(padded).global_features
    assert torch.allclose(base, again, atol=1e-5)


def test_invalid_combinations_are_explained():
    with pytest.raises(ValueError, match="cria_weight > 0 needs the combined representation"):
        CMSN(_towers(), crl=False, **{k: v for k, v in SMALL.items() if k != "crl_layers"})
    with pytest.raises(ValueError, match=r"IMFI image layers should increase and end at the image tower's last layer 2"):
        CMSN(_towers(), **{**SMALL, "imfi_layers": (1, 3)})
    with pytest.raises(ValueError, match=r"IMFI text layers should .* last layer 2, got \(2, 1\)"):
        CMSN(_towers(), **{**SMALL, "imfi_text_layers": (2, 1)})


@pytest.mark.parametrize("method", ["irra", "cmsn"])
def test_bf16_autocast_training_step_is_finite(method):
    irra, cmsn = _pair()
    model = {"irra": irra, "cmsn": cmsn}[method]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model.training_losses(_batch())
    assert output["loss"].dtype == torch.float32 and torch.isfinite(output["loss"])
    output["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_light_combined_representation_trains():
    _, cmsn = _pair(crl_light=True)
    output = cmsn.training_losses(_batch())
    output["loss"].backward()
    assert torch.isfinite(output["cria"]) and cmsn.crl.mlp[0].weight.grad.abs().sum() > 0
