"""Part-level model: shared tokens, masked words, ranking score, the part-loss warm-up, gradients."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from xsearch.models import PartLevel
from xsearch.models.clip import CLIPTowers, tiny_clip_config
from xsearch.models.partlevel import word_padding

CAPTIONS = ["a man in a red coat", "a man with a red coat and a bag", "a woman in blue jeans", "the woman wears blue"]


def _model(**options) -> PartLevel:
    torch.manual_seed(0)
    towers = CLIPTowers(config=tiny_clip_config(width=64, embed_dim=64), image_size=(64, 32), context_length=16)
    return PartLevel(towers, num_classes=2, cross_layers=1, num_parts=3, decoder_layers=1, **options)


def _batch() -> dict:
    images = torch.randint(0, 256, (4, 3, 64, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    return {"image": images, "text": CAPTIONS, "pid": torch.tensor([0, 0, 1, 1])}


def test_parts_never_read_sot_eot_or_padding():
    model = _model()
    ids = model.towers.tokenize(["a man", "a woman in a long red coat"])
    text = model.towers.encode_text(ids)
    mask = word_padding(text)
    assert mask[0].tolist() == [True, False, False, True] + [True] * 12  # SOT a man EOT pad...
    parts, attention = model.text_parts(text)
    assert parts.shape == (2, 3, 64) and attention.shape == (2, 3, 16)
    assert torch.all(attention[mask.unsqueeze(1).expand_as(attention)] == 0)
    assert torch.allclose(attention.sum(-1), torch.ones(2, 3))


def test_both_modalities_are_read_by_the_same_tokens():
    model = _model()
    image = model.towers.encode_image(_batch()["image"])
    parts, attention = model.image_parts(image)
    assert parts.shape == (4, 3, 64) and attention.shape == (4, 3, 8)  # 4 x 2 patches, CLS excluded
    names = {n for n, _ in model.decoder.named_parameters()}
    assert "queries" in names and {"ln_memory.image.weight", "ln_memory.text.weight"} <= names
    queries = model.decoder.queries.detach()
    gram = (queries @ queries.T) * 64  # orthogonal rows scaled by D^-0.5
    assert torch.allclose(gram, torch.eye(3), atol=1e-5)


def test_ranking_score_is_global_plus_mean_part_cosine():
    model = _model(part_similarity_weight=0.5).eval()
    batch = _batch()
    with torch.no_grad():
        queries, gallery = model.encode_queries(batch), model.encode_gallery(batch)
    assert queries.shape == gallery.shape == (4, 64 + 3 * 64)
    expected = F.normalize(queries[:, :64], dim=-1) @ F.normalize(gallery[:, :64], dim=-1).T
    for k in range(3):
        q = F.normalize(queries[:, 64 * (k + 1): 64 * (k + 2)], dim=-1)
        g = F.normalize(gallery[:, 64 * (k + 1): 64 * (k + 2)], dim=-1)
        expected += 0.5 * (q @ g.T) / 3
    assert torch.allclose(model.similarity(queries, gallery), expected, atol=1e-5)
    model.hparams.global_only = True
    global_scores = F.normalize(queries[:, :64], dim=-1) @ F.normalize(gallery[:, :64], dim=-1).T
    assert torch.allclose(model.similarity(queries, gallery), global_scores, atol=1e-5)


@pytest.mark.parametrize(("epoch", "with_parts"), [(1, False), (2, True)])
def test_part_losses_start_at_the_configured_epoch(epoch, with_parts):
    model = _model(part_start_epoch=2, diversity_weight=0.1)
    model._trainer = SimpleNamespace(current_epoch=epoch)
    output = model.training_losses(_batch())
    assert ({"part", "cmr", "diversity"} <= set(output)) is with_parts
    if with_parts:
        expected = sum(model.loss_weights[k] * output[k] for k in ("sdm", "id", "mlm", "part", "cmr", "diversity"))
        assert torch.allclose(output["loss"], expected)
        output["loss"].backward()
        for name in ("decoder.queries", "decoder.ln_memory.image.weight", "decoder.ln_memory.text.weight"):
            grad = dict(model.named_parameters())[name].grad
            assert grad is not None and grad.abs().sum() > 0, name


def test_plain_margin_ablation_changes_only_the_cmr_term():
    batch = _batch()
    torch.manual_seed(5)
    common = _model(part_start_epoch=0).training_losses(batch)
    torch.manual_seed(5)
    plain = _model(part_start_epoch=0, commonality=False).training_losses(batch)
    for name in ("sdm", "id", "mlm", "part"):
        assert torch.equal(common[name], plain[name]), name
    assert plain["cmr"] >= common["cmr"]  # margins are largest without commonality


def test_coarse_group_is_scored_with_its_own_weight():
    model = _model(coarse_parts=2, coarse_similarity_weight=0.25, part_similarity_weight=0.5).eval()
    batch = _batch()
    with torch.no_grad():
        queries, gallery = model.encode_queries(batch), model.encode_gallery(batch)
    assert queries.shape == (4, 64 * (1 + 2 + 3))

    def unit(x, k):
        return F.normalize(x[:, 64 * (k + 1): 64 * (k + 2)], dim=-1)

    expected = unit(queries, -1) @ unit(gallery, -1).T  # the global feature
    expected += 0.25 * sum(unit(queries, k) @ unit(gallery, k).T for k in (0, 1)) / 2
    expected += 0.5 * sum(unit(queries, k) @ unit(gallery, k).T for k in (2, 3, 4)) / 3
    assert torch.allclose(model.similarity(queries, gallery), expected, atol=1e-5)
