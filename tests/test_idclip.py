"""Id-CLIP: the [TOK] pseudo-word carries the translator output and nothing else changes; only the translator and
the visual prompts learn."""
from __future__ import annotations

import pytest
import torch

from xsearch.models.clip import EOT_ID, SOT_ID, CLIPTowers, tiny_clip_config
from xsearch.models.idclip import TOKEN_ID, IdCLIP, tokenize_with_token


def _model(prompt_tokens: int = 5, learnable_temperature: bool = False) -> IdCLIP:
    torch.manual_seed(0)
    clip = CLIPTowers(config=tiny_clip_config(width=32, embed_dim=16), image_size=(64, 64), context_length=24)
    return IdCLIP(clip, face_dim=8, translator_hidden=12, prompt_tokens=prompt_tokens, learnable_temperature=learnable_temperature)


def test_tokenizing_puts_one_token_id_where_tok_is_and_keeps_the_other_tokens():
    model = _model()
    bpe = model.clip.tokenizer._bpe
    ids, positions = tokenize_with_token(bpe, ["A picture of [TOK] riding a horse.", "[TOK]. A dog and [TOK]"], 24)
    plain = model.clip.tokenizer(["A picture of riding a horse."])[0]
    row = ids[0].tolist()
    assert row[:4] == [SOT_ID, *bpe.encode("A picture of")] and row[4] == TOKEN_ID
    assert [t for t in row if t != TOKEN_ID] + [0] == plain.tolist()  # the same BPE ids around it
    assert positions[0].nonzero().flatten().tolist() == [4] and positions[1].sum() == 2
    assert (ids == EOT_ID).sum(1).tolist() == [1, 1]


def test_tok_position_carries_the_translator_output_and_other_positions_are_plain_clip():
    model = _model().eval()
    captured = {}
    handle = model.clip.text.embeddings.register_forward_hook(lambda m, i, out: captured.__setitem__("embeddings", out))
    faces = torch.randn(2, 8)
    texts = ["A picture of [TOK] riding a horse.", "[TOK] in the kitchen."]
    with torch.no_grad():
        model.encode_texts(texts, faces)
        injected = captured["embeddings"]
        ids, positions = tokenize_with_token(model.clip.tokenizer._bpe, texts, 24)
        plain_ids = ids.masked_fill(positions, 0)
        plain = model.clip.text.embeddings(input_ids=plain_ids)
        plain_out = model.clip.encode_text(plain_ids).tokens
        translated = model.translator(faces)
    handle.remove()
    assert torch.equal(injected[~positions], plain[~positions])  # bit-identical elsewhere
    table = model.clip.text.embeddings.position_embedding.weight
    for row, column in positions.nonzero().tolist():
        torch.testing.assert_close(injected[row, column], translated[row] + table[column])
    # causal text tower: the outputs before [TOK] cannot see it
    with torch.no_grad():
        out = model.clip.encode_text(plain_ids)  # plain again
    torch.testing.assert_close(out.tokens, plain_out)
    with torch.no_grad(), model._injected(positions, translated):
        tokens = model.clip.encode_text(plain_ids).tokens
    torch.testing.assert_close(tokens[0, :4], plain_out[0, :4], rtol=0, atol=1e-6)
    assert not torch.allclose(tokens[0, 4:], plain_out[0, 4:])
    # the hook is gone afterwards
    with torch.no_grad():
        torch.testing.assert_close(model.clip.encode_text(plain_ids).tokens, plain_out)


def test_only_the_translator_and_the_visual_prompts_receive_gradients():
    model = _model().train()
    batch = {"image": torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8), "face": torch.randn(3, 8),
             "text": ["A man with [ENTITY] on a bike.", "[ENTITY]. A dog.", "An image with [ENTITY]."], "pid": torch.arange(3)}
    out = model.training_losses(batch)
    out["loss"].backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {"translator.net.0.weight", "translator.net.2.weight", "clip.vision.embeddings.prompts"}
    assert out["itc"].item() > 0
    assert model.log_scale.exp().item() == pytest.approx(1 / 0.07)
    learnable = _model(learnable_temperature=True)
    learnable.training_losses(batch)["loss"].backward()
    assert learnable.log_scale.grad is not None


def test_visual_prompts_are_appended_after_cls_and_patches():
    with_prompts, without = _model(prompt_tokens=5), _model(prompt_tokens=0)
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert with_prompts.clip.encode_image(images).tokens.shape[1] == 1 + 16 + 5
        assert without.clip.encode_image(images).tokens.shape[1] == 1 + 16


def test_queries_without_faces_are_refused():
    with pytest.raises(KeyError, match="idclip needs face descriptors in the batch"):
        _model().encode_queries({"text": ["a man"]})
