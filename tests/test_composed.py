"""Composed queries (X-Modal): reference face + modification sentence -> target face of the same person.

Covers the evaluator with explicit positives and per-query exclusions (against a brute-force ranking),
relevance by dataset index, the metric wrapper, the relevance of composed queries, pair making from a
hand-built attribute table, the train-item wrappers, the datamodule end to end on a generated synthetic
face set (checked against its attribute file, parsed here) and the LFW attribute table.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from xsearch.datamodules import RetrievalDataModule
from xsearch.datamodules.base import TrainImages
from xsearch.datamodules.composed import (
    CHANGE_PHRASES,
    OPENERS,
    AttributeTable,
    ComposedOptions,
    ComposedTrainPairs,
    composed_pairs,
    modification_text,
    reference_candidates,
)
from xsearch.datamodules.files import DatasetFormatError
from xsearch.datamodules.records import CaptionRecord, DatasetIndex, FaceAttributes, ImageRecord
from xsearch.evaluation import RetrievalMetric
from xsearch.evaluation.composed import QueryRelevance, composed_relevance, relevance_metrics
from xsearch.evaluation.retrieval import PositiveLists

KEYS = ("R1", "R5", "R10", "mAP", "mINP")


# ------------------------------------------------------------------------------------ brute force
def brute_force_metrics(scores, positives, excluded=None, ks=(1, 5, 10), skip_missing=False) -> dict[str, float]:
    """Per query: drop the excluded columns, stable descending sort (ties: lower gallery index first),
    then R@K hit rate, AP over all positives and INP = n / position of the last positive, in percent."""
    scores = scores.tolist() if isinstance(scores, torch.Tensor) else scores
    excluded = excluded or [()] * len(scores)
    per_query = []
    for row, wanted, removed in zip(scores, positives, excluded):
        wanted, removed = set(wanted), set(removed)
        kept = [j for j in range(len(row)) if j not in removed]
        ranked = sorted(kept, key=lambda j: (-row[j], j))
        positions = [p + 1 for p, j in enumerate(ranked) if j in wanted]
        if not positions:
            assert skip_missing, "a query without positive"
            continue
        n = len(positions)
        ap = sum((i + 1) / p for i, p in enumerate(positions)) / n
        per_query.append((positions[0], ap, n / positions[-1]))
    out = {f"R{k}": 100.0 * sum(first <= k for first, _, _ in per_query) / len(per_query) for k in ks}
    out["mAP"] = 100.0 * sum(ap for _, ap, _ in per_query) / len(per_query)
    out["mINP"] = 100.0 * sum(inp for _, _, inp in per_query) / len(per_query)
    return out


def assert_metrics_equal(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for key in expected:
        assert actual[key] == pytest.approx(expected[key], abs=1e-9), key


def excluded_cells(excluded: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [q for q, cols in enumerate(excluded) for _ in cols]
    cols = [j for cols in excluded for j in cols]
    return torch.tensor(rows, dtype=torch.int64), torch.tensor(cols, dtype=torch.int64)


def random_relevance(seed: int, num_queries: int, num_gallery: int, max_positives: int, allow_empty: bool,
                     decimals: int | None = 1, dtype: torch.dtype = torch.float32):
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    similarity = torch.randn(num_queries, num_gallery, generator=generator, dtype=torch.float64)
    if decimals is not None:
        similarity = torch.round(similarity, decimals=decimals)
    similarity = similarity.to(dtype)
    positives, excluded = [], []
    for q in range(num_queries):
        n = rng.randint(0 if allow_empty else 1, max_positives)
        chosen = rng.sample(range(num_gallery), n)
        positives.append(chosen)  # any order: from_lists sorts
        for j in chosen:  # positives score a little higher on average (a useful model)
            similarity[q, j] += 0.5 if rng.random() < 0.7 else 0.0
        others = [j for j in range(num_gallery) if j not in chosen]
        excluded.append(rng.sample(others, rng.randint(0, min(3, len(others)))))
    return similarity, positives, excluded


# ------------------------------------------------------------------------------------ 1. relevance_metrics
@pytest.mark.parametrize("seed", range(4))
def test_relevance_metrics_match_brute_force_with_ties_and_exclusions(seed):
    similarity, positives, excluded = random_relevance(seed, 30, 40, 6, allow_empty=False)
    assert similarity.unique().numel() < similarity.numel() / 2  # plenty of exact ties
    before = similarity.clone()
    actual = relevance_metrics(similarity, PositiveLists.from_lists(positives), excluded_cells(excluded))
    assert_metrics_equal(actual, brute_force_metrics(before, positives, excluded))
    assert torch.equal(similarity, before)  # the caller's matrix is not overwritten with -inf
    # exclusions matter: without them the numbers are those of the full gallery
    assert_metrics_equal(relevance_metrics(similarity, PositiveLists.from_lists(positives)),
                         brute_force_metrics(similarity, positives))


def test_relevance_metrics_many_positives_float64_and_skip():
    # > 32 positives on some queries (sorting path), float64 kept, queries without positives skipped
    similarity, positives, excluded = random_relevance(7, 12, 90, 45, allow_empty=True, decimals=1,
                                                       dtype=torch.float64)
    positives[2], positives[9] = [], []
    assert any(len(p) > 32 for p in positives) and any(not p for p in positives)
    ks = (1, 3, 50, 200)
    actual = relevance_metrics(similarity, PositiveLists.from_lists(positives), excluded_cells(excluded), ks,
                               on_missing="skip")
    assert_metrics_equal(actual, brute_force_metrics(similarity, positives, excluded, ks, skip_missing=True))
    with pytest.raises(ValueError, match="no positive"):
        relevance_metrics(similarity, PositiveLists.from_lists(positives), excluded_cells(excluded), ks)


def test_relevance_metrics_hand_computed():
    similarity = torch.tensor([[0.9, 0.5, 0.9, 0.1, 0.7],
                               [0.3, 0.3, 0.3, 0.3, 0.8]])
    positives = PositiveLists.from_lists([[3, 2], [3]])
    excluded = (torch.tensor([0, 1]), torch.tensor([0, 1]))
    # query 0 without item 0: 2 (0.9), 4, 1, 3 -> positives at 1 and 4: AP (1/1 + 2/4) / 2 = .75, INP 2/4
    # query 1 without item 1: 4 (0.8), then the ties 0, 2, 3 by index -> positive at 4: AP 1/4, INP 1/4
    metrics = relevance_metrics(similarity, positives, excluded, ks=(1, 3, 5))
    assert metrics == pytest.approx({"R1": 50.0, "R3": 50.0, "R5": 100.0, "mAP": 50.0, "mINP": 37.5})
    # without the exclusions item 0 wins the 0.9 tie (lower index): query 0 positives at 2 and 5
    # (AP (1/2 + 2/5) / 2 = .45, INP 2/5); query 1's positive at 5 (AP = INP = 1/5)
    metrics = relevance_metrics(similarity, positives, ks=(1, 3, 5))
    assert metrics == pytest.approx({"R1": 0.0, "R3": 50.0, "R5": 100.0, "mAP": 32.5, "mINP": 30.0})


def test_relevance_metrics_rejects_an_excluded_positive():
    similarity = torch.rand(2, 5)
    positives = PositiveLists.from_lists([[2], [3]])
    with pytest.raises(ValueError, match="excluded gallery item is also a positive"):
        relevance_metrics(similarity, positives, (torch.tensor([0, 1]), torch.tensor([1, 3])))
    # the positive of another query may be excluded
    relevance_metrics(similarity, positives, (torch.tensor([1]), torch.tensor([2])))


# ------------------------------------------------------------------------------------ 2. QueryRelevance.resolve
def test_query_relevance_resolves_dataset_indexes_to_positions():
    relevance = QueryRelevance(positives={7: [10, 50, 30], 3: [20], 5: [50]},
                               excluded={7: [40, 50], 5: [10, 20]})
    gallery = torch.tensor([40, 10, 30, 20])  # shuffled; 50 was not evaluated
    positives, (rows, cols) = relevance.resolve(torch.tensor([3, 7, 5]), gallery)
    assert positives.count.tolist() == [1, 2, 0]
    assert positives.start.tolist() == [0, 1, 3]
    assert positives.gallery_order.tolist() == [3, 1, 2]  # 20 -> 3; 10 -> 1, 30 -> 2 (ascending)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(1, 0), (2, 1), (2, 3)]
    assert rows.dtype == cols.dtype == positives.gallery_order.dtype == torch.int64
    with pytest.raises(KeyError, match="query index 9 has no relevance entry"):
        relevance.resolve(torch.tensor([3, 9]), gallery)


# ------------------------------------------------------------------------------------ 3. RetrievalMetric
def test_retrieval_metric_with_relevance_equals_relevance_metrics():
    rng = random.Random(3)
    generator = torch.Generator().manual_seed(3)
    num_queries, dim = 25, 6
    query_indexes = list(range(100, 100 + num_queries))
    gallery_indexes = rng.sample(range(1000), 30)
    query_embeddings = {q: torch.randn(dim, generator=generator) for q in query_indexes}
    gallery_embeddings = {g: torch.randn(dim, generator=generator) for g in gallery_indexes}
    positives, excluded = {}, {}
    for q in query_indexes:
        chosen = rng.sample(gallery_indexes, rng.randint(1, 4))
        positives[q] = chosen + [5000]  # an index outside the evaluated gallery is ignored
        excluded[q] = rng.sample([g for g in gallery_indexes if g not in chosen], rng.randint(0, 2))

    def similarity_fn(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return torch.round(q @ g.T, decimals=0)  # coarse: many exact ties

    metric = RetrievalMetric(similarity_fn=similarity_fn)
    metric.relevance = QueryRelevance(positives, excluded)
    shuffled_queries, shuffled_gallery = query_indexes[::-1], rng.sample(gallery_indexes, len(gallery_indexes))
    for lo in range(0, num_queries, 7):
        batch = shuffled_queries[lo:lo + 7]
        metric.update_queries(torch.stack([query_embeddings[q] for q in batch]), torch.zeros(len(batch)),
                              torch.tensor(batch))
    metric.update_queries(query_embeddings[query_indexes[0]][None], torch.zeros(1), torch.tensor([query_indexes[0]]))
    for lo in range(0, len(shuffled_gallery), 11):
        batch = shuffled_gallery[lo:lo + 11]
        metric.update_gallery(torch.stack([gallery_embeddings[g] for g in batch]), torch.zeros(len(batch)),
                              torch.tensor(batch))
    actual = metric.compute()
    assert not any(key.startswith("i2t_") for key in actual)

    # independently: rows/columns in ascending dataset index order
    gallery_sorted = sorted(gallery_indexes)
    similarity = similarity_fn(torch.stack([query_embeddings[q] for q in query_indexes]),
                               torch.stack([gallery_embeddings[g] for g in gallery_sorted]))
    column = {g: j for j, g in enumerate(gallery_sorted)}
    positive_lists = [[column[g] for g in positives[q] if g in column] for q in query_indexes]
    excluded_lists = [[column[g] for g in excluded[q]] for q in query_indexes]
    assert_metrics_equal(actual, brute_force_metrics(similarity, positive_lists, excluded_lists))
    assert_metrics_equal(actual, relevance_metrics(similarity, PositiveLists.from_lists(positive_lists),
                                                   excluded_cells(excluded_lists)))
    assert metric.skipped_queries == {"t2i": 0}


# ------------------------------------------------------------------------------------ 4. composed_relevance
def test_composed_relevance_hand_built_gallery():
    #        index: 12 pid 1, 10 pid 1, 13 pid 1, 11 pid 1, 14 pid 1, 21 pid 2, 20 pid 2 (shuffled order)
    gallery_indexes = [12, 10, 13, 11, 14, 21, 20]
    gallery_pids = [1, 1, 1, 1, 1, 2, 2]
    attributes = np.array([
        [1, 1, 0],  # 12
        [0, 0, 0],  # 10
        [1, 0, 1],  # 13
        [1, 0, 0],  # 11
        [0, 1, 1],  # 14
        [1, 0, 0],  # 21
        [0, 0, 0],  # 20
    ], dtype=bool)
    relevance = composed_relevance(
        query_indexes=[0, 1, 2, 3],
        references=[10, 10, 13, 20],
        targets=[11, 13, 14, 21],
        changed=[[0], [0, 2], [0, 1], [0]],
        gallery_indexes=gallery_indexes, gallery_pids=gallery_pids, gallery_attributes=attributes,
    )
    # q0: column 0 == 1 among pid 1 images other than 10 -> 11, 12, 13
    # q1: columns (0, 2) == (1, 1) -> 13 only
    # q2: columns (0, 1) == (0, 1) -> 14 (13 is the reference; 10 has (0, 0))
    # q3: pid 2, column 0 == 1 -> 21 only (11, 12, 13 of pid 1 share the value but are other people)
    assert {q: sorted(p) for q, p in relevance.positives.items()} == {0: [11, 12, 13], 1: [13], 2: [14], 3: [21]}
    assert {q: list(e) for q, e in relevance.excluded.items()} == {0: [10], 1: [10], 2: [13], 3: [20]}


# ------------------------------------------------------------------------------------ 5. modification_text
def split_sentence(text: str) -> tuple[str, list[str]]:
    """(opener, phrases) of a modification sentence; checks the ", " / " and " joining and the final "."."""
    assert text.endswith(".") and not text.endswith("..")
    openers = [o for o in OPENERS if text.startswith(o + " ")]
    assert len(openers) == 1, text
    body = text[len(openers[0]) + 1:-1]
    if " and " not in body:
        assert ", " not in body
        return openers[0], [body]
    head, last = body.rsplit(" and ", 1)
    return openers[0], [*head.split(", "), last]


def expected_phrases(names, changed, target_values) -> list[str]:
    return sorted(CHANGE_PHRASES[names[c]][0] if target_values[c] else CHANGE_PHRASES[names[c]][1] for c in changed)


@pytest.mark.parametrize("changed", [(0,), (1, 3), (0, 2, 3), (0, 1, 2, 3)])
def test_modification_text_names_exactly_the_changed_attributes(changed):
    names = ("Eyeglasses", "Wearing_Hat", "Smiling", "No_Beard")
    target = np.array([True, False, False, True])
    texts, orders = set(), set()
    for seed in range(40):
        text = modification_text(names, changed, target, random.Random(seed))
        assert text == modification_text(names, changed, target, random.Random(seed))  # deterministic
        _, phrases = split_sentence(text)
        assert len(phrases) == len(changed)
        assert sorted(phrases) == expected_phrases(names, changed, target)
        texts.add(text)
        orders.add(tuple(phrases))
    assert len(texts) > 1  # opener / order drawn from the generator
    if len(changed) > 1:
        assert len(orders) > 1


def test_modification_text_gained_and_lost_phrases():
    names = ("Eyeglasses", "Wearing_Hat")
    _, phrases = split_sentence(modification_text(names, (0, 1), np.array([True, False]), random.Random(0)))
    assert sorted(phrases) == ["wearing eyeglasses", "without a hat"]
    _, phrases = split_sentence(modification_text(names, (0, 1), np.array([False, True]), random.Random(0)))
    assert sorted(phrases) == ["wearing a hat", "without eyeglasses"]


# ------------------------------------------------------------------------------------ 6. ComposedOptions
def test_composed_options_validation():
    ComposedOptions(min_changes=2, max_changes=2, attributes=["Smiling"])
    with pytest.raises(ValueError, match="min_changes <= max_changes"):
        ComposedOptions(min_changes=3, max_changes=2)
    with pytest.raises(ValueError, match="1 <= min_changes"):
        ComposedOptions(min_changes=0, max_changes=2)
    with pytest.raises(ValueError, match="1 <= min_changes"):
        ComposedOptions(min_changes=0, max_changes=0)
    with pytest.raises(ValueError, match="no change phrase for Big_Nose"):
        ComposedOptions(attributes=["Smiling", "Big_Nose"])


# ------------------------------------------------------------------------------------ 7. table, candidates, pairs
TOY_NAMES = ("Big_Nose", "Eyeglasses", "Smiling", "Male", "Wearing_Hat", "Bangs", "Goatee")
TOY_CHANGEABLE = ("Eyeglasses", "Wearing_Hat", "Smiling", "Goatee", "Bangs")  # CHANGE_PHRASES order
BASE = {"Big_Nose": 0, "Eyeglasses": 0, "Smiling": 0, "Male": 1, "Wearing_Hat": 0, "Bangs": 1, "Goatee": 0}


def _flip(*names: str) -> dict[str, int]:
    return {**BASE, **{n: 1 - BASE[n] for n in names}}


# (pid, attributes or None = no row in the attribute file)
TOY_IMAGES: list[tuple[int, dict[str, int] | None]] = [
    (1, BASE),                                                    # 0
    (1, _flip("Eyeglasses")),                                     # 1: 1 change from 0
    (1, _flip("Smiling", "Wearing_Hat")),                         # 2: 2 changes from 0
    (1, _flip("Eyeglasses", "Wearing_Hat", "Smiling", "Goatee")),  # 3: 4 changes from 0
    (1, _flip("Big_Nose", "Male")),                               # 4: only stable traits differ from 0
    (1, None),                                                    # 5: no attribute row
    (2, _flip("Eyeglasses")),                                     # 6: single-image identity
    (3, _flip("Bangs")),                                          # 7
    (3, _flip("Bangs")),                                          # 8: identical to 7
    (3, _flip("Bangs", "Goatee", "Eyeglasses", "Smiling")),       # 9: 3 changes from 7 and 8
    (4, None),                                                    # 10: no row, and alone
    (3, _flip("Bangs", "Goatee")),                                # 11: 1 change from 7, 2 from 9
]


def toy_index(split: str = "test", attributes: bool = True) -> DatasetIndex:
    images = [ImageRecord(i, f"/x/{i + 1:06d}.jpg", pid, split) for i, (pid, _) in enumerate(TOY_IMAGES)]
    rows = [(f"{i + 1:06d}.jpg", a) for i, (_, a) in enumerate(TOY_IMAGES) if a is not None]
    rows.reverse()  # the attribute file's order need not be the index's
    table = FaceAttributes(TOY_NAMES, {key: r for r, (key, _) in enumerate(rows)},
                           np.array([[a[n] for n in TOY_NAMES] for _, a in rows], dtype=bool))
    captions = [CaptionRecord(i, i, f"caption of {i}", pid, split) for i, (pid, _) in enumerate(TOY_IMAGES)]
    return DatasetIndex("toy", Path("/x"), images, captions, extras={"attributes": table} if attributes else {})


def brute_force_candidates(image_ids, lo: int, hi: int, names=TOY_CHANGEABLE) -> dict[int, list[int]]:
    out = {}
    for t in image_ids:
        pid, target = TOY_IMAGES[t]
        if target is None:
            continue
        refs = [r for r in image_ids if r != t and TOY_IMAGES[r][0] == pid and TOY_IMAGES[r][1] is not None
                and lo <= sum(TOY_IMAGES[r][1][n] != target[n] for n in names) <= hi]
        if refs:
            out[t] = refs
    return out


def test_attribute_table_keeps_the_changeable_columns_of_every_image():
    table = AttributeTable(toy_index(), ComposedOptions())
    assert table.names == TOY_CHANGEABLE
    assert table.present.tolist() == [a is not None for _, a in TOY_IMAGES]
    for i, (_, attributes) in enumerate(TOY_IMAGES):
        if attributes is not None:
            assert table.values[i].tolist() == [bool(attributes[n]) for n in TOY_CHANGEABLE], i
    assert table.changes(0, 4) == ()  # Big_Nose and Male are not changes
    assert table.changes(0, 2) == (1, 2)  # Wearing_Hat, Smiling
    restricted = AttributeTable(toy_index(), ComposedOptions(attributes=["Smiling", "Eyeglasses"]))
    assert restricted.names == ("Smiling", "Eyeglasses") and restricted.values.shape == (len(TOY_IMAGES), 2)


def test_attribute_table_errors():
    with pytest.raises(DatasetFormatError, match=r"toy: .*index\.extras\['attributes'\]"):
        AttributeTable(toy_index(attributes=False), ComposedOptions())
    with pytest.raises(DatasetFormatError, match="Sunglasses are not in the attribute table"):
        AttributeTable(toy_index(), ComposedOptions(attributes=["Smiling", "Sunglasses"]))
    index = toy_index()
    index.extras["attributes"] = FaceAttributes(("Big_Nose", "Male"), {"000001.jpg": 0}, np.ones((1, 2), dtype=bool))
    with pytest.raises(DatasetFormatError, match="none of the changeable attributes"):
        AttributeTable(index, ComposedOptions())


@pytest.mark.parametrize(("lo", "hi"), [(1, 3), (1, 1), (2, 4), (4, 4), (1, 5), (3, 3)])
def test_reference_candidates_match_brute_force(lo, hi):
    index = toy_index()
    options = ComposedOptions(min_changes=lo, max_changes=hi)
    table = AttributeTable(index, options)
    candidates = reference_candidates(index.images, table, options)
    assert {t: sorted(r) for t, r in candidates.items()} == brute_force_candidates(range(len(TOY_IMAGES)), lo, hi)
    for target, references in candidates.items():
        for r in references:
            assert lo <= len(table.changes(r, target)) <= hi
            assert index.images[r].pid == index.images[target].pid and r != target


def test_reference_candidates_hand_checked_and_subset():
    index = toy_index()
    options = ComposedOptions()
    table = AttributeTable(index, options)
    candidates = {t: sorted(r) for t, r in reference_candidates(index.images, table, options).items()}
    # 0: 1 (1 change), 2 (2); 3 is 4 away; 4 equal; 5 has no row. 4 is like 0. 3: 1 (3), 2 (2).
    # 6 alone; 7, 8 identical: 9 (3), 11 (1). 9: 7, 8 (3), 11 (2). 10: no row.
    assert candidates == {0: [1, 2], 1: [0, 2, 3, 4], 2: [0, 1, 3, 4], 3: [1, 2], 4: [1, 2],
                          7: [9, 11], 8: [9, 11], 9: [7, 8, 11], 11: [7, 8, 9]}
    subset = [index.images[i] for i in (0, 3, 4, 7, 9)]
    assert {t: sorted(r) for t, r in reference_candidates(subset, table, options).items()} == {7: [9], 9: [7]}


def test_composed_pairs_are_valid_deterministic_and_seeded():
    index = toy_index()
    table = AttributeTable(index, ComposedOptions())
    expected_candidates = brute_force_candidates(range(len(TOY_IMAGES)), 1, 3)
    runs = []
    for seed in range(12):
        options = ComposedOptions(seed=seed)
        pairs = composed_pairs(index.images, table, options)
        assert pairs == composed_pairs(index.images, table, options)  # same seed -> same queries
        assert [p.target for p in pairs] == sorted(expected_candidates)  # one query per target, in image order
        for p in pairs:
            assert p.reference in expected_candidates[p.target]
            assert p.pid == TOY_IMAGES[p.target][0] == TOY_IMAGES[p.reference][0]
            target, reference = TOY_IMAGES[p.target][1], TOY_IMAGES[p.reference][1]
            changed_names = {n for n in TOY_CHANGEABLE if target[n] != reference[n]}
            assert {TOY_CHANGEABLE[c] for c in p.changed} == changed_names and 1 <= len(p.changed) <= 3
            assert sorted(split_sentence(p.text)[1]) == expected_phrases(TOY_CHANGEABLE, p.changed,
                                                                          [target[n] for n in TOY_CHANGEABLE])
        runs.append([(p.reference, p.text) for p in pairs])
    assert len({tuple(r) for r in runs}) > 1  # the seed changes references and/or wording
    assert len({tuple(ref for ref, _ in r) for r in runs}) > 1  # ... references included


def test_composed_pairs_fewer_changes_allowed():
    index = toy_index()
    options = ComposedOptions(min_changes=1, max_changes=1)
    pairs = composed_pairs(index.images, AttributeTable(index, options), options)
    one_change = {0: {1}, 1: {0, 4}, 4: {1}, 7: {11}, 8: {11}, 11: {7, 8}}  # 0 and 4 differ in stable traits only
    assert [p.target for p in pairs] == sorted(one_change)
    assert all(p.reference in one_change[p.target] for p in pairs)
    assert all(len(p.changed) == 1 for p in pairs)


# ------------------------------------------------------------------------------------ 8. ComposedTrainPairs
class StubTrainPairs:
    """Stands for TrainPairs: images are tensors holding their index, augment adds 1000."""

    def __init__(self, captions: list[CaptionRecord]) -> None:
        self.captions = captions

    def __len__(self) -> int:
        return len(self.captions)

    @staticmethod
    def images(image_index: int) -> torch.Tensor:
        return torch.tensor([image_index])

    @staticmethod
    def augment(image: torch.Tensor) -> torch.Tensor:
        return image + 1000

    def __getitem__(self, i: int) -> dict:
        c = self.captions[i]
        return {"image": self.augment(self.images(c.image_index)), "text": c.text, "pid": c.pid, "index": c.index,
                "image_index": c.image_index}


def test_composed_train_pairs_draw_valid_references():
    torch.manual_seed(0)  # the wrapper's generator follows torch's (per-worker) seed
    index = toy_index("train")
    options = ComposedOptions()
    table = AttributeTable(index, options)
    candidates = reference_candidates(index.images, table, options)
    pairs = ComposedTrainPairs(StubTrainPairs(index.captions), candidates, table, seed=0)
    assert len(pairs) == len(index.captions) and pairs.captions is index.captions
    expected = brute_force_candidates(range(len(TOY_IMAGES)), 1, 3)
    for i, caption in enumerate(index.captions):
        seen = set()
        for _ in range(40):
            item = pairs[i]
            assert item["text"] == caption.text and item["image_index"] == caption.image_index
            assert torch.equal(item["image"], torch.tensor([caption.image_index + 1000]))
            if caption.image_index not in expected:
                assert item["has_reference"] is False and item["modification"] == ""
                assert torch.equal(item["reference_image"], item["image"])
                continue
            assert item["has_reference"] is True
            reference = int(item["reference_image"]) - 1000  # augmented image of the reference
            assert reference in expected[caption.image_index]
            target_attrs, reference_attrs = TOY_IMAGES[caption.image_index][1], TOY_IMAGES[reference][1]
            changed = tuple(c for c, n in enumerate(TOY_CHANGEABLE) if target_attrs[n] != reference_attrs[n])
            assert 1 <= len(changed) <= 3
            assert sorted(split_sentence(item["modification"])[1]) == expected_phrases(
                TOY_CHANGEABLE, changed, [target_attrs[n] for n in TOY_CHANGEABLE])
            seen.add(reference)
        if caption.image_index in expected:
            assert seen == set(expected[caption.image_index])  # drawn afresh at each visit
    assert {c.image_index for c in index.captions} - set(expected) == {5, 6, 10}


# ------------------------------------------------------------------------------------ 9. TrainImages
def test_train_images_one_item_per_image_with_each_of_its_captions():
    torch.manual_seed(0)
    texts = {0: ["a0", "a1", "a2"], 1: ["b0"], 2: ["c0", "c1"]}
    order = [(0, 0), (2, 0), (0, 1), (1, 0), (2, 1), (0, 2)]  # captions of an image are interleaved
    pids = {0: 7, 1: 7, 2: 9}
    captions = [CaptionRecord(i, image, texts[image][k], pids[image], "train") for i, (image, k) in enumerate(order)]
    dataset = TrainImages(captions, {7: 0, 9: 1}, lambda index: torch.tensor([index]), lambda image, caption: image * 2)
    assert len(dataset) == 3
    assert [c.image_index for c in dataset.captions] == [0, 2, 1]  # one caption per item, first-seen order
    for i in range(3):
        drawn = [dataset[i] for _ in range(60)]
        image = dataset.captions[i].image_index
        assert {d["text"] for d in drawn} == set(texts[image])
        assert all(d["image_index"] == image and int(d["image"]) == 2 * image for d in drawn)
        assert all(d["pid"] == {7: 0, 9: 1}[pids[image]] for d in drawn)
        assert all(captions[d["index"]].text == d["text"] for d in drawn)


# ------------------------------------------------------------------------------------ 10. end to end (synth_faces)
def read_celeba_attributes(root: Path) -> tuple[list[str], dict[str, dict[str, bool]]]:
    lines = (root / "Anno" / "list_attr_celeba.txt").read_text().splitlines()
    count, names = int(lines[0]), lines[1].split()
    assert len(names) == 40
    table = {}
    for line in lines[2:]:
        if line.strip():
            fields = line.split()
            assert len(fields) == 41 and set(fields[1:]) <= {"1", "-1"}
            table[fields[0]] = {n: v == "1" for n, v in zip(names, fields[1:])}
    assert len(table) == count
    return names, table


def read_pairs_file(path: Path) -> dict[str, int]:
    return {f: int(v) for f, v in (line.split() for line in path.read_text().splitlines() if line.strip())}


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("composed") / "faces"
    dm = RetrievalDataModule("synth_faces", str(root), image_size=(32, 32), batch_size=8, num_workers=0,
                             generate={"identities": 20, "seed": 0, "progress": False}, composed=ComposedOptions(),
                             query_mode="composed", cache_images=True)
    dm.prepare_data()
    dm.setup("test")
    return dm, root


def test_end_to_end_composed_queries_match_the_attribute_file(faces):
    dm, root = faces
    assert dm.benchmark == "synth_faces:composed"
    names, attributes = read_celeba_attributes(root)
    identity = read_pairs_file(root / "Anno" / "identity_CelebA.txt")
    partition = read_pairs_file(root / "Eval" / "list_eval_partition.txt")
    changeable = [a for a in CHANGE_PHRASES if a in names]
    assert dm.attribute_table().names == tuple(changeable)

    queries, gallery = dm.eval_sets["test"]
    files = {r.index: Path(r.file).name for r in gallery.images}
    assert sorted(files.values()) == sorted(f for f, part in partition.items() if part == 2)
    assert all(r.pid == identity[files[r.index]] for r in gallery.images)

    def differences(a: int, b: int) -> set[str]:
        return {n for n in changeable if attributes[files[a]][n] != attributes[files[b]][n]}

    same_person = {t: [r for r in files if r != t and identity[files[r]] == identity[files[t]]] for t in files}
    expected_targets = sorted(t for t in files if any(1 <= len(differences(r, t)) <= 3 for r in same_person[t]))
    assert len(queries) == len(expected_targets) > 0
    assert [p.target for p in queries.pairs] == expected_targets
    for q, pair in enumerate(queries.pairs):
        changed = differences(pair.reference, pair.target)
        assert pair.reference in same_person[pair.target] and 1 <= len(changed) <= 3
        assert {changeable[c] for c in pair.changed} == changed
        target_attrs = attributes[files[pair.target]]
        assert sorted(split_sentence(pair.text)[1]) == sorted(
            CHANGE_PHRASES[n][0] if target_attrs[n] else CHANGE_PHRASES[n][1] for n in changed)
        expected_positives = sorted(g for g in same_person[pair.target] + [pair.target] if g != pair.reference
                                    and all(attributes[files[g]][n] == target_attrs[n] for n in changed))
        assert sorted(queries.relevance.positives[q]) == expected_positives
        assert pair.target in expected_positives and pair.reference not in expected_positives
        assert list(queries.relevance.excluded[q]) == [pair.reference]
        assert {identity[files[g]] for g in expected_positives} == {identity[files[pair.target]]}
        item = queries[q]
        assert item["index"] == q and item["image_index"] == pair.target and item["text"] == pair.text
        assert item["pid"] == identity[files[pair.target]]
        reference_item = gallery[[r.index for r in gallery.images].index(pair.reference)]
        assert torch.equal(item["reference_image"], reference_item["image"])


def test_end_to_end_metric_through_the_loaders(faces):
    dm, root = faces
    query_loader, gallery_loader = dm.test_dataloader()
    queries = query_loader.dataset
    gallery_indexes = [r.index for r in gallery_loader.dataset.images]
    position = {g: j for j, g in enumerate(sorted(gallery_indexes))}
    width = len(gallery_indexes)
    metric = RetrievalMetric()
    metric.relevance = queries.relevance
    # an oracle that finds the target exactly, all else tied at 0 (ties -> lower gallery index)
    for batch in query_loader:
        assert batch["reference_image"].shape[1:] == (3, 32, 32)
        onehot = torch.zeros(len(batch["index"]), width)
        onehot[torch.arange(len(batch["index"])), torch.tensor([position[int(t)] for t in batch["image_index"]])] = 1
        metric.update_queries(onehot, batch["pid"], batch["index"])
    for batch in gallery_loader:
        onehot = torch.zeros(len(batch["index"]), width)
        onehot[torch.arange(len(batch["index"])), torch.tensor([position[int(g)] for g in batch["index"]])] = 1
        metric.update_gallery(onehot, batch["pid"], batch["index"])
    actual = metric.compute()
    assert set(actual) == set(KEYS)
    scores = [[1.0 if g == p.target else 0.0 for g in sorted(gallery_indexes)] for p in queries.pairs]
    positives = [[position[g] for g in queries.relevance.positives[q]] for q in range(len(queries))]
    excluded = [[position[p.reference]] for p in queries.pairs]
    assert_metrics_equal(actual, brute_force_metrics(scores, positives, excluded))
    assert actual["R1"] == 100.0


def test_end_to_end_fit_items_have_valid_references(faces):
    dm, root = faces
    dm.setup("fit")
    train = dm.train_set
    assert isinstance(train, ComposedTrainPairs)
    _, attributes = read_celeba_attributes(root)
    table = dm.attribute_table()
    files = {r.index: Path(r.file).name for r in dm.index.images}
    seen_with, seen_without = 0, 0
    for i in range(0, len(train), 37):
        item = train[i]
        target = item["image_index"]
        same = [r.index for r in dm.index.split_images("train") if r.pid == dm.index.images[target].pid
                and r.index != target]
        counts = [sum(attributes[files[r]][n] != attributes[files[target]][n] for n in table.names) for r in same]
        assert item["has_reference"] == any(1 <= c <= 3 for c in counts)
        seen_with += item["has_reference"]
        seen_without += not item["has_reference"]
        assert item["reference_image"].shape == (3, 32, 32)
        if not item["has_reference"]:
            assert item["modification"] == "" and torch.equal(item["reference_image"], item["image"])
        else:
            assert item["modification"].endswith(".")
    assert seen_with > 0


def test_query_mode_composed_defaults_the_options_and_names_the_benchmark(tmp_path):
    text = RetrievalDataModule("synth_faces", str(tmp_path / "none"), num_workers=0)
    assert text.benchmark == "synth_faces" and text.composed is None
    composed = RetrievalDataModule("synth_faces", str(tmp_path / "none"), num_workers=0, query_mode="composed")
    assert composed.benchmark == "synth_faces:composed" and composed.composed == ComposedOptions()
    options = ComposedOptions(min_changes=2, max_changes=2, seed=5)
    chosen = RetrievalDataModule("synth_faces", str(tmp_path / "none"), num_workers=0, composed=options)
    assert chosen.benchmark == "synth_faces" and chosen.composed is options


# ------------------------------------------------------------------------------------ 11. LFW attributes
def test_lfw_attribute_table_matches_the_fixture_scores(tmp_path):
    from layouts.lfw import EXTRA_ATTRIBUTE_ROW, NO_ATTRIBUTE_ROW, fixture_scores, write_lfw

    from xsearch.datamodules.lfw import parse
    from xsearch.datamodules.lfw_captions import ATTRIBUTES

    index = parse(write_lfw(tmp_path / "LFW"))
    table = index.extras["attributes"]
    assert isinstance(table, FaceAttributes) and len(table.names) == len(ATTRIBUTES) == 73
    assert all(" " not in n and "'" not in n for n in table.names)
    for raw, name in [("Middle Aged", "Middle_Aged"), ("5 o' Clock Shadow", "5_o_Clock_Shadow"),
                      ("Strong Nose-Mouth Lines", "Strong_Nose-Mouth_Lines"), ("Smiling", "Smiling")]:
        assert table.names[ATTRIBUTES.index(raw)] == name
    assert set(CHANGE_PHRASES) <= set(table.names)  # every changeable attribute is there

    keys = []
    for image in index.images:
        person, file = image.path.parent.name, image.path.name
        key = f"{person}/{file}"
        keys.append(key)
        number = int(file[len(person) + 1:-len(".jpg")])
        if f"{person}_{number:04d}" in NO_ATTRIBUTE_ROW:
            assert key not in table.row
            continue
        scores = fixture_scores(person, number)
        assert table.of(key) == {n: scores[a] > 0 for n, a in zip(table.names, ATTRIBUTES)}, key
    assert set(table.row) == {k for k in keys if k.split("/")[1][:-4] not in NO_ATTRIBUTE_ROW}
    zed = EXTRA_ATTRIBUTE_ROW[0].replace(" ", "_")
    assert not any(k.startswith(zed) for k in table.row)

    values, present = table.for_images(index.images)
    assert present.tolist() == [k in table.row for k in keys]
    for i, key in enumerate(keys):
        if key in table.row:
            assert values[i].tolist() == table.values[table.row[key]].tolist()
        else:
            assert not values[i].any()
    # matched on the last two path parts: another copy of the images maps to the same rows
    moved = [ImageRecord(r.index, f"/elsewhere/lfw-deepfunneled/{k}", r.pid, r.split) for r, k in zip(index.images, keys)]
    moved_values, moved_present = table.for_images(moved)
    assert np.array_equal(moved_values, values) and np.array_equal(moved_present, present)

    composed = AttributeTable(index, ComposedOptions())
    assert composed.names == tuple(CHANGE_PHRASES)
    smiling = composed.names.index("Smiling")
    for i, key in enumerate(keys):
        if key in table.row:
            person, file = key.split("/")
            assert composed.values[i, smiling] == (fixture_scores(person, int(file[-8:-4]))["Smiling"] > 0)
