"""Id-CLIP: the [TOK] pseudo-word carries the translator output and nothing else changes; only the translator and
the visual prompts learn."""
from __future__ import annotations

import math

import pytest
import torch

from xsearch.losses import entity_info_nce
from xsearch.models.clip import EOT_ID, SOT_ID, CLIPTowers, tiny_clip_config
from xsearch.models.idclip import CONFS, TOKEN_ID, IdCLIP, fill_query, tokenize_with_token


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
    assert with_grad == {"translator.net.0.weight", "translator.net.2.weight", "visual_prompts"}
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
    with pytest.raises(KeyError, match=r"idclip needs face descriptors in the batch \('face'\) for captions with \[TOK\]"):
        _model().encode_queries({"text": ["A [ENTITY] on a bike."]})


def test_confs_fill_the_slot_as_the_authors_test_configurations():
    caption = "A man ([ENTITY]) on the beach."
    expected = {
        "conf1": "A man ([TOK]) on the beach.",
        "conf2": "A man ([TOK] Ada Lovelace) on the beach.",
        "conf3": "A man (Ada Lovelace [TOK]) on the beach.",
        "conf4": "An image with [TOK]. A man (Ada Lovelace) on the beach.",
        "conf5": "[TOK]. A man (Ada Lovelace) on the beach.",
        "conf6": "[TOK]. A man ([TOK]) on the beach.",
        "name": "A man (Ada Lovelace) on the beach.",
        "none": "A man (a person) on the beach.",
    }
    assert set(expected) == set(CONFS)
    for conf, text in expected.items():
        assert fill_query(caption, conf, "Ada Lovelace") == text, conf
    with pytest.raises(KeyError, match="conf 'conf2' puts the identity's name into the caption"):
        fill_query(caption, "conf2")
    with pytest.raises(ValueError, match="conf must be one of conf1, .*, none, got 'conf7'"):
        _model().__class__(CLIPTowers(config=tiny_clip_config(width=32, embed_dim=16), image_size=(64, 64)), conf="conf7")


def test_name_and_none_baselines_are_plain_clip_and_need_no_face():
    model = _model(prompt_tokens=0).eval()
    model.conf = "name"
    with torch.no_grad():
        got = model.encode_queries({"text": ["A picture of [ENTITY]."], "name": ["Ada Lovelace"]})
        plain = model.clip.encode_text(model.clip.tokenize(["A picture of Ada Lovelace."])).global_features
    torch.testing.assert_close(got, torch.nn.functional.normalize(plain, dim=-1))


def test_ensembled_entity_queries_average_text_features_before_normalising():
    model = _model().eval()
    faces = torch.randn(2, 8)
    prompts = [("An image with [ENTITY]", "An image with [ENTITY]"), ("[ENTITY] in the image", "[ENTITY] in the image")]
    with torch.no_grad():
        got = model.encode_queries({"prompts": prompts, "face": faces, "name": ["a", "b"]})
        features = [model.text_features([p.replace("[ENTITY]", "[TOK]") for p in group], faces) for group in prompts]
    torch.testing.assert_close(got, torch.nn.functional.normalize((features[0] + features[1]) / 2, dim=-1))
    assert not torch.allclose(got[0], got[1])  # the faces differ


def test_clip_stage_trains_the_towers_and_its_checkpoint_keys_initialise_the_idclip_stage():
    torch.manual_seed(0)
    clip_stage = IdCLIP(CLIPTowers(config=tiny_clip_config(width=32, embed_dim=16), image_size=(64, 64), context_length=24),
                        face_dim=8, translator_hidden=12, prompt_tokens=5, stage="clip").train()
    assert clip_stage.visual_prompts is None and clip_stage.conf == "none"
    batch = {"image": torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8), "text": ["A [ENTITY] on a bike."] * 3,
             "pid": torch.arange(3)}
    clip_stage.training_losses(batch)["loss"].backward()
    trained = {n for n, p in clip_stage.named_parameters() if p.grad is not None}
    assert not any(n.startswith("translator") for n in trained)
    assert {"clip.text.embeddings.token_embedding.weight", "clip.vision.embeddings.patch_embedding.weight"} <= trained
    idclip = _model(prompt_tokens=5)
    clip_keys = {k for k in idclip.state_dict() if k.startswith("clip.")}
    assert clip_keys == {k for k in clip_stage.state_dict() if k.startswith("clip.")}  # prompts live outside clip.*
    assert set(idclip.state_dict()) - clip_keys == {"translator.net.0.weight", "translator.net.2.weight", "visual_prompts",
                                                    "log_scale"}


def test_entity_aware_infonce_matches_hand_computed_targets():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    pids = torch.tensor([7, 7, 3])
    logits = 2.0 * torch.nn.functional.normalize(image, dim=1) @ torch.nn.functional.normalize(text, dim=1).T
    same = torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]])
    e = math.e
    soft = torch.tensor([[e, e, 1], [e, e, 1], [1, 1, e]])
    soft = soft / soft.sum(1, keepdim=True)
    expected = 0.5 * sum(-(soft[i] * logits[i].log_softmax(0)).sum() / 3 + -(soft[i] * logits.T[i].log_softmax(0)).sum() / 3
                         for i in range(3))
    assert entity_info_nce(image, text, pids, 2.0).item() == pytest.approx(expected.item(), rel=1e-6)
    bce = -(same * torch.sigmoid(logits).log() + (1 - same) * torch.sigmoid(-logits).log()).mean()
    assert entity_info_nce(image, text, pids, 2.0, targets="bce").item() == pytest.approx(bce.item(), rel=1e-6)
    with pytest.raises(ValueError, match="targets must be 'softmax' or 'bce'"):
        entity_info_nce(image, text, pids, 2.0, targets="kl")
    model = _model(prompt_tokens=0)
    model.entity_loss_weight = 0.5
    batch = {"image": torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8), "face": torch.randn(3, 8),
             "text": ["[ENTITY] on a bike."] * 3, "pid": pids}
    terms = model.training_losses(batch)
    assert terms["loss"].item() == pytest.approx((terms["itc"] + 0.5 * terms["entity"]).item(), rel=1e-6)
