"""CLIP towers: BPE tokenizer, token outputs, the resized position grid, global features vs transformers."""
from __future__ import annotations

import pytest
import torch

from xsearch.models.clip import EOT_ID, SOT_ID, CLIPTowers, ClipTokenizer, tiny_clip_config


@pytest.fixture(scope="module")
def towers() -> CLIPTowers:
    torch.manual_seed(0)
    return CLIPTowers(config=tiny_clip_config(width=32, embed_dim=24), image_size=(64, 32), context_length=16).eval()


def test_tokenizer_is_clip_bpe_with_zero_padding_and_eot_kept():
    ids = ClipTokenizer(12)(["A man in a RED coat.", "word " * 40])
    assert ids.dtype == torch.int64 and ids.shape == (2, 12)
    # "a", "man", "in", "a", "red", "coat", "." in CLIP's BPE (lower-cased), then EOT and zero padding
    assert ids[0].tolist() == [SOT_ID, 320, 786, 530, 320, 736, 7356, 269, EOT_ID, 0, 0, 0]
    assert ids[1, 0] == SOT_ID and ids[1, -1] == EOT_ID and (ids[1] != 0).all()  # truncated, EOT last


def test_token_outputs_and_global_features(towers):
    images = torch.randint(0, 256, (3, 3, 64, 32), dtype=torch.uint8)
    out = towers.encode_image(images, layers=(1, 2))
    assert out.tokens.shape == (3, 1 + 4 * 2, 24) and torch.equal(out.global_features, out.tokens[:, 0])
    assert set(out.hidden) == {1, 2} and out.hidden[2].shape == (3, 9, 32)
    ids = towers.tokenize(["a man", "a woman in a long red coat"])
    text = towers.encode_text(ids)
    eot = ids.argmax(-1)
    assert text.tokens.shape == (2, 16, 24)
    assert torch.equal(text.global_features, text.tokens[torch.arange(2), eot])
    assert text.padding[0].tolist() == [p > int(eot[0]) for p in range(16)]


def test_global_features_equal_transformers_pooled_projection(towers):
    ids = towers.tokenize(["a man with a backpack"])
    reference = towers.text_projection(towers.text(input_ids=ids).pooler_output)
    assert torch.allclose(towers.encode_text(ids).global_features, reference, atol=1e-6)
    images = torch.randint(0, 256, (2, 3, 64, 32), dtype=torch.uint8)
    pixels = (images.float() - towers.mean) / towers.std
    reference = towers.visual_projection(towers.vision(pixel_values=pixels).pooler_output)
    assert torch.allclose(towers.encode_image(images).global_features, reference, atol=1e-6)


def test_position_grid_is_the_pretrained_table_resized_once():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(1)
    config = tiny_clip_config(width=32, embed_dim=24)
    square = CLIPModel(CLIPConfig(**config)).vision_model.embeddings
    torch.manual_seed(1)
    same = CLIPTowers(config=config, image_size=(224, 224)).vision.embeddings
    assert torch.allclose(same.position_embedding.weight, square.position_embedding.weight)  # 14x14 -> 14x14: identity
    torch.manual_seed(1)
    tall = CLIPTowers(config=config, image_size=(384, 128)).vision.embeddings
    table = tall.position_embedding.weight
    assert table.shape == (1 + 24 * 8, 32) and torch.equal(table[0], square.position_embedding.weight[0])
    grid = square.position_embedding.weight[1:].reshape(14, 14, 32).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(grid, size=(24, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(table[1:], expected[0].permute(1, 2, 0).reshape(192, 32))
    with pytest.raises(ValueError, match=r"does not give the \(24, 8\) patch grid"):
        tall(torch.zeros(1, 3, 224, 224))


def test_wrong_image_size_or_vocabulary_is_rejected():
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        CLIPTowers(config=tiny_clip_config(), image_size=(100, 32))
    config = tiny_clip_config()
    config["text_config"]["vocab_size"] = 1000
    with pytest.raises(ValueError, match="49408 entries"):
        CLIPTowers(config=config)
