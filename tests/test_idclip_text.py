"""Id-CLIP's text protocols on the COCO-PFS fixture: the authors' training text ("<prompt>. <caption>", the prompt
drawn afresh), their 11 template queries per caption at test (9 averaged at validation), the dataset key of each
protocol, and the keyword-anchored templates."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import lightning as L
import pytest
import torch
from layouts import coco_pfs as fixture

from xsearch import entity_captions as ec
from xsearch.datamodules import RetrievalDataModule
from xsearch.datamodules.coco_pfs import caption_sources, parse
from xsearch.datamodules.entity_text import EntityTextOptions
from xsearch.models.clip import CLIPTowers, tiny_clip_config
from xsearch.models.idclip import IdCLIP, fill_query

SLOT = ec.SLOT
AUTHORS_TRAIN_PROMPTS = ["An image with [ENTITY]", "An image containing [ENTITY]", "[ENTITY]", "A picture of [ENTITY]",
                         "[ENTITY] in the image", "There is [ENTITY] in the picture"]
AUTHORS_PREFIXES = ["An image with [ENTITY].", "An image with a person whose name is [ENTITY].", "[ENTITY].",
                    "A picture of [ENTITY].", "[ENTITY] in the image.", "There is [ENTITY] in the picture."]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return fixture.build(tmp_path_factory.mktemp("coco_pfs")).root


def _data(root: Path, entity_text: EntityTextOptions | None = None, **options) -> RetrievalDataModule:
    settings = dict(image_size=(64, 64), batch_size=5, eval_batch_size=8, num_workers=0, positives="instance",
                    dataset_options={"entity": "slot"}, cache_index=False, seed=3)
    return RetrievalDataModule("coco_pfs", str(root), entity_text=entity_text, **{**settings, **options})


def _plain(split: str) -> list[str]:
    """The fixture's COCO captions of ``split`` in parse order: first 5 per features key, stripped."""
    coco = fixture.COCO_TRAIN if split == "train" else fixture.COCO_VAL
    return [c.strip() for key in fixture.KEYS[split] for c in coco[int(key.split("_")[0])][:5]]


def _train_texts(data: RetrievalDataModule, epochs: int) -> dict[int, list[str]]:
    """``{caption index: [its text in epoch 0, 1, ...]}`` as the training loader delivers them."""
    loader = data.train_dataloader()
    texts: dict[int, list[str]] = defaultdict(list)
    for epoch in range(epochs):
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            for index, text in zip(batch["index"].tolist(), batch["text"]):
                texts[index].append(text)
    return texts


# --------------------------------------------------------------------------------------
# training text
# --------------------------------------------------------------------------------------
def test_training_text_is_a_prompt_drawn_afresh_then_the_untouched_caption(root):
    data = _data(root)
    data.setup("fit")
    plain = _plain("train")
    texts = _train_texts(data, epochs=4)
    assert sorted(texts) == list(range(len(plain))) and all(len(seen) == 4 for seen in texts.values())
    prompts: dict[int, list[str]] = {}
    for index, seen in texts.items():
        prompts[index] = [text[: -len(f". {plain[index]}")] for text in seen]
        assert all(text.endswith(f". {plain[index]}") for text in seen), seen
    assert {p for drawn in prompts.values() for p in drawn} == set(AUTHORS_TRAIN_PROMPTS)
    assert sum(len(set(drawn)) > 1 for drawn in prompts.values()) >= len(prompts) - 2  # drawn again at every visit
    # what the text tower reads (conf1): "<prompt with [TOK]>. <caption>"
    first = texts[0][0]
    assert fill_query(first, "conf1") == first.replace(SLOT, "[TOK]") and first.count(SLOT) == 1
    # seeded per (seed, epoch, batch, slot): the same run draws the same texts, another seed others
    again = _data(root)
    again.setup("fit")
    assert _train_texts(again, epochs=4) == texts
    other = _data(root, seed=4)
    other.setup("fit")
    assert _train_texts(other, epochs=4) != texts


def test_a_resumed_epoch_draws_the_same_prompts(root):
    def epoch_texts(data: RetrievalDataModule, state: dict[str, int] | None = None) -> list[list[str]]:
        data.setup("fit")
        loader = data.train_dataloader()
        loader.batch_sampler.set_epoch(2)
        if state is not None:
            loader.load_state_dict(state)
        return [batch["text"] for batch in loader]

    whole = epoch_texts(_data(root))
    assert len(whole) == 3
    assert epoch_texts(_data(root), {"epoch": 2, "delivered": 1, "batches": 3}) == whole[1:]


def test_parsed_training_text_is_the_parsers_caption(root):
    data = _data(root, EntityTextOptions(train="parsed"))
    data.setup("fit")
    parsed = [c.text for c in parse(root, entity="slot").split_captions("train")]
    assert {i: seen[0] for i, seen in _train_texts(data, epochs=1).items()} == dict(enumerate(parsed))


# --------------------------------------------------------------------------------------
# general-retrieval queries
# --------------------------------------------------------------------------------------
def test_test_queries_are_eleven_templates_per_caption_each_with_its_own_image(root):
    data = _data(root)
    data.setup("test")
    queries = data.eval_sets["test"][0]
    captions = data.index.split_captions("test")
    sources = caption_sources(data.index)
    assert len(queries) == len(captions) * 11 == 165 and ec.TEST_TEMPLATES.size == 11
    expected = [(text, c.image_index) for c in captions for text in ec.template_queries(*sources[c.index])]
    assert [(q.text, q.image_index) for q in queries.captions] == expected
    assert [q.index for q in queries.captions] == list(range(165))
    assert queries.relevance.positives == {q.index: [q.image_index] for q in queries.captions}
    item = queries[12]
    assert "prompts" not in item and item["text"].count(SLOT) == 1 and item["face"].shape == (512,)
    assert item["name"] == "Smith, John Jr."
    assert sources[captions[0].index].plain == "A person above the crowd on a skateboard."


def test_validation_queries_are_one_per_caption_with_nine_templates_to_average(root):
    data = _data(root)
    data.setup("validate")
    queries = data.eval_sets["val"][0]
    captions = data.index.split_captions("val")
    assert len(queries) == len(captions) == 15 and ec.VAL_TEMPLATES.size == 9
    sources = caption_sources(data.index)
    for position, caption in enumerate(captions):
        item = queries[position]
        assert item["prompts"] == ec.template_queries(*sources[caption.index], ec.VAL_TEMPLATES)
        assert item["index"] == caption.index and item["text"] == caption.text
    batch = data.val_dataloader()[0].collate_fn([queries[0], queries[1]])
    assert len(batch["prompts"]) == 9 and len(batch["prompts"][0]) == 2  # T lists of B texts, as the method averages


def test_single_and_plain_protocols_are_one_query_per_caption(root):
    single = _data(root, EntityTextOptions(queries="single"))
    single.setup("test")
    captions = single.index.split_captions("test")
    assert [q.text for q in single.eval_sets["test"][0].captions] == [c.text for c in captions]
    plain = _data(root, EntityTextOptions(queries="plain"))
    plain.setup("test")
    assert [q.text for q in plain.eval_sets["test"][0].captions] == _plain("test")
    assert [q.index for q in plain.eval_sets["test"][0].captions] == [c.index for c in captions]


def test_each_protocol_is_stored_under_its_own_dataset_key(root):
    assert _data(root).benchmark == "coco_pfs:instance"  # the authors' protocol
    assert _data(root, EntityTextOptions(queries="templates")).benchmark == "coco_pfs:instance"
    assert _data(root, EntityTextOptions(queries="plain")).benchmark == "coco_pfs:instance"  # their no-name baseline
    assert _data(root, EntityTextOptions(queries="single")).benchmark == "coco_pfs:instance:single-template"
    identity = _data(root, EntityTextOptions(queries="single"), positives="identity")
    assert identity.benchmark == "coco_pfs:single-template"
    with pytest.raises(KeyError, match="unknown Id-CLIP query protocol 'some'; registered: plain, single, templates"):
        _data(root, EntityTextOptions(queries="some")).benchmark
    named = _data(root, EntityTextOptions(), dataset_options={"entity": "name"})
    with pytest.raises(ValueError, match=r"coco_pfs: data.entity_text applies to captions with an \[ENTITY\] slot"):
        named.setup("test")
    plain_names = _data(root, dataset_options={"entity": "name"})  # other methods' captions: untouched
    plain_names.setup("test")
    named_captions = plain_names.index.split_captions("test")
    assert [q.text for q in plain_names.eval_sets["test"][0].captions] == [c.text for c in named_captions]


def test_every_template_query_is_counted_at_test_and_validation_averages_the_templates(root, tmp_path):
    data = _data(root)
    torch.manual_seed(0)
    clip = CLIPTowers(config=tiny_clip_config(width=32, embed_dim=16), image_size=(64, 64), context_length=40)
    model = IdCLIP(clip, translator_hidden=12, prompt_tokens=2, ks=(1, 2, 5))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    for stage, run in (("test", trainer.test), ("val", trainer.validate)):
        logged = run(model, datamodule=data, verbose=False)[0]
        queries, gallery = data.eval_sets[stage]
        loader = data.test_dataloader()[0] if stage == "test" else data.val_dataloader()[0]
        model.eval()
        with torch.no_grad():
            texts = torch.cat([model.encode_queries(batch) for batch in loader])
            images = model.encode_images(torch.stack([gallery.store(r.index) for r in gallery.images]))
        column = {r.index: n for n, r in enumerate(gallery.images)}
        own = torch.tensor([column[q.image_index] for q in queries.captions])
        r1 = 100.0 * ((texts @ images.T).argmax(1) == own).float().mean().item()
        assert len(texts) == (165 if stage == "test" else 15)
        assert logged[f"{stage}/R1"] == pytest.approx(r1, abs=1e-4), stage


# --------------------------------------------------------------------------------------
# templates (pure functions)
# --------------------------------------------------------------------------------------
def test_prompts_are_the_authors():
    assert list(ec.TRAIN_PROMPTS) == AUTHORS_TRAIN_PROMPTS
    assert list(ec.ENTITY_PROMPTS) == AUTHORS_PREFIXES  # entity retrieval: with the final period, "whose name is"
    assert list(ec.TEST_TEMPLATES.prefixes) == list(ec.VAL_TEMPLATES.prefixes) == AUTHORS_PREFIXES
    assert ec.prompt_caption("A picture of [ENTITY]", " A man on a bike. ") == "A picture of [ENTITY]. A man on a bike."


def test_a_unique_person_keyword_anchors_the_five_keyword_templates():
    caption = "A man riding a horse."
    queries = ec.template_queries(f" {caption} ", "key#0")
    assert queries == [f"{prefix} {caption}" for prefix in AUTHORS_PREFIXES] + [
        "[ENTITY] riding a horse.",
        "A man ([ENTITY]) riding a horse.",
        "A man (whose name is [ENTITY]) riding a horse.",
        "A famous man [ENTITY] riding a horse.",
        "A famous [ENTITY] riding a horse.",
    ]
    assert ec.template_queries(caption, "another seed") == queries  # nothing drawn
    assert ec.template_queries(caption, "key#0", ec.VAL_TEMPLATES) == queries[:9]
    assert ec.template_queries("Cows and a GIRL.", "k")[6:] == [
        "Cows and [ENTITY].", "Cows and a GIRL ([ENTITY]).", "Cows and a GIRL (whose name is [ENTITY]).",
        "Cows and a famous GIRL [ENTITY].", "Cows and a famous [ENTITY].",
    ]


@pytest.mark.parametrize("caption", ["A bunch of cows in a field.", "A man and a woman near a car.",
                                     "A man next to another man."])
def test_without_a_unique_keyword_the_keyword_templates_become_seeded_prefix_ones(caption):
    queries = ec.template_queries(caption, "391895_n000078#2")
    plain = [f"{prefix} {caption}" for prefix in AUTHORS_PREFIXES]
    assert len(queries) == 11 and queries[:6] == plain and set(queries[6:]) <= set(plain)
    assert ec.template_queries(caption, "391895_n000078#2") == queries  # deterministic given the seed
    tails = {tuple(ec.template_queries(caption, f"391895_n000078#{n}")[6:]) for n in range(20)}
    assert len(tails) > 1  # the seed chooses
    assert len(ec.template_queries(caption, "s", ec.VAL_TEMPLATES)) == 9
