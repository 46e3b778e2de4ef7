"""``RetrievalDataModule``: one datamodule for every text-to-image retrieval dataset.

Train items are (image, caption, pid) pairs, one per caption. Validation and test are each evaluated by the split's
protocols (:attr:`RetrievalDataModule.eval_suites`, built from the config: identity retrieval always, face
verification with ``verification``, entity retrieval with ``entity_retrieval``), whose loaders come in this order:
the queries (captions) and the gallery (unique images), then the face samples (image + its first caption) of the
verification protocol, then the entity queries. Text stays raw (``list[str]`` in the batch): tokenisation belongs to
the model.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from xsearch.datamodules.coco_pfs import CaptionSource, caption_sources
from xsearch.config_types import NonNegativeInt, PositiveInt
from xsearch.datamodules.composed import (
    AttributeTable,
    ComposedOptions,
    ComposedQuerySet,
    ComposedTrainPairs,
    composed_pairs,
    reference_candidates,
)
from xsearch.datamodules.degrade import DegradeConfig, degrade
from xsearch.datamodules.entity_queries import EntityOptions, entity_queries
from xsearch.datamodules.entity_text import EntityTextOptions, GeneralQueries, query_protocol, train_text
from xsearch.datamodules.face_pairs import FaceSampleSet, VerificationOptions, verification_protocol
from xsearch.datamodules.files import DatasetFormatError
from xsearch.datamodules.image_cache import DiskImageCache
from xsearch.datamodules.loading import load_dataset, resolve_root
from xsearch.datamodules.records import CaptionRecord, DatasetIndex, ImageRecord
from xsearch.datamodules.resumable import ResumableLoader
from xsearch.datamodules.samplers import EpochBatchSampler, IdentityBatchSampler, ShuffledBatchSampler
from xsearch.evaluation import EntityRetrieval, EvaluationSuite, FaceVerification, IdentityRetrieval
from xsearch.evaluation.composed import QueryRelevance
from xsearch.datamodules.transforms import AugmentConfig, Interpolation, UnreadableImage, build_train_augment, load_image
from xsearch.registry import DATASETS, Registry

log = logging.getLogger(__name__)

QUERIES, GALLERY, FACES = 0, 1, 2
"""Dataloader indices of the evaluation loaders (``FACES`` only with ``verification``; the entity queries follow)."""

SYNTHESIZERS: Registry[Callable[..., Path]] = Registry("synthetic dataset generator")
"""Generators of synthetic datasets by dataset name, used when ``generate`` is set and the root is missing."""


class ImageStore:
    """Loads images as resized ``uint8 (3, H, W)`` tensors, optionally keeping them all in RAM.

    An image that cannot be read raises :class:`UnreadableImage` naming it; with ``cache`` and ``skip_unreadable``
    the caching pass goes on, logs the unreadable ones once, and raises their error again whenever one is asked for
    (the training loader then skips the item).
    """

    def __init__(self, images: list[ImageRecord], size: tuple[int, int], cache: bool, desc: str = "caching images",
                 crop: tuple[float, float, float, float] | Literal["center"] | None = None,
                 degraded: DegradeConfig | None = None, disk: DiskImageCache | None = None,
                 skip_unreadable: bool = False, interpolation: Interpolation = "bicubic") -> None:
        self.images, self.size, self.crop, self.degraded, self.disk = images, size, crop, degraded, disk
        self.interpolation = interpolation
        self.by_index = {r.index: r for r in images}
        self.cache: dict[int, torch.Tensor] | None = None
        self.unreadable: dict[int, UnreadableImage] = {}
        if cache:
            self.cache = {}
            for r in tqdm(images, desc=desc, leave=False):
                try:
                    self.cache[r.index] = self.load(r.index)
                except UnreadableImage as error:
                    if not skip_unreadable:
                        raise
                    self.unreadable[r.index] = error
            if self.unreadable:
                log.warning("%d of %d images cannot be read; their training items are skipped (data.bad_samples=skip): %s",
                            len(self.unreadable), len(images), "; ".join(str(e) for e in list(self.unreadable.values())[:5]))

    def load(self, image_index: int) -> torch.Tensor:
        """Read, crop, resize (or read the pre-resized copy of the disk cache), and degrade (seeded by the image index)
        when asked."""
        path = self.by_index[image_index].path
        read = lambda: load_image(path, self.size, self.crop, self.interpolation)  # noqa: E731
        image = read() if self.disk is None else self.disk.get(path, self.size, self.crop, read, self.interpolation)
        return image if self.degraded is None else degrade(image, self.degraded, image_index)

    def __call__(self, image_index: int) -> torch.Tensor:
        if self.cache is not None:
            if image_index in self.unreadable:
                raise self.unreadable[image_index]
            return self.cache[image_index]
        return self.load(image_index)


class TrainPairs(Dataset):
    """One item per training caption: ``{"image", "text", "pid" (0..n-1 label), "index", "image_index"}``, plus
    ``"face"`` (the image's face descriptor) and ``"name"`` (the identity's display name) when ``faces`` maps image
    indices to descriptors and ``names`` dataset pids to names (COCO-PFS). ``"text"`` is the caption's text, or
    ``texts(caption)`` when set (Id-CLIP's training text, :mod:`xsearch.datamodules.entity_text`; drawn at every visit
    of the item)."""

    faces: dict[int, torch.Tensor] | None = None
    names: dict[int, str] | None = None
    texts: Callable[[CaptionRecord], str] | None = None

    def __init__(self, captions: list[CaptionRecord], labels: dict[int, int], images: ImageStore, augment: Callable) -> None:
        self.captions, self.labels, self.images, self.augment = captions, labels, images, augment

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.item(self.captions[i])

    def item(self, caption: CaptionRecord) -> dict[str, Any]:
        text = caption.text if self.texts is None else self.texts(caption)
        item = {
            "image": self.augment(self.images(caption.image_index), text),
            "text": text,
            "pid": self.labels[caption.pid],
            "index": caption.index,
            "image_index": caption.image_index,
        }
        if self.faces is not None:
            item["face"] = self.faces[caption.image_index]
        if self.names is not None:
            item["name"] = self.names.get(caption.pid, str(caption.pid))
        return item


class TrainImages(TrainPairs):
    """One item per training image, with one of its captions drawn at random at each visit (X-Modal's
    recipe: "one random caption per image per step"); ``captions`` holds one caption per item."""

    def __init__(self, captions: list[CaptionRecord], labels: dict[int, int], images: ImageStore, augment: Callable) -> None:
        groups: dict[int, list[CaptionRecord]] = {}
        for caption in captions:
            groups.setdefault(caption.image_index, []).append(caption)
        self.groups = list(groups.values())
        super().__init__([group[0] for group in self.groups], labels, images, augment)

    def __getitem__(self, i: int) -> dict[str, Any]:
        group = self.groups[i]
        return self.item(group[int(torch.randint(len(group), ()))] if len(group) > 1 else group[0])


class QuerySet(Dataset):
    """Evaluation queries: ``{"text", "pid", "index", "image_index"}`` (+ ``"face"``, ``"name"`` as in
    :class:`TrainPairs`); every same-pid image is a positive, or with ``instance`` only the caption's own image
    (instance-level R@K, Id-CLIP's general retrieval). With ``prompts`` (``{caption index: [T texts]}``, the same T
    for all) every item also has ``"prompts"``, the texts whose features the method averages into the query."""

    relevance = None  # the metric's default: positives by pid

    def __init__(self, captions: list[CaptionRecord], faces: dict[int, torch.Tensor] | None = None,
                 instance: bool = False, names: dict[int, str] | None = None,
                 prompts: dict[int, list[str]] | None = None) -> None:
        self.captions, self.faces, self.names, self.prompts = captions, faces, names, prompts
        if instance:  # COCO-style: only the caption's own image is correct
            self.relevance = QueryRelevance({c.index: [c.image_index] for c in captions})

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        c = self.captions[i]
        item = {"text": c.text, "pid": c.pid, "index": c.index, "image_index": c.image_index}
        if self.faces is not None:
            item["face"] = self.faces[c.image_index]  # the identity's face, as seen in the caption's image
        if self.names is not None:
            item["name"] = self.names.get(c.pid, str(c.pid))
        if self.prompts is not None:
            item["prompts"] = self.prompts[c.index]
        return item


class GallerySet(Dataset):
    """Evaluation gallery, one item per unique image: ``{"image", "pid", "index"}``."""

    def __init__(self, images: list[ImageRecord], store: ImageStore) -> None:
        self.images, self.store = images, store

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.images[i]
        return {"image": self.store(r.index), "pid": r.pid, "index": r.index}


class RetrievalDataModule(L.LightningDataModule):
    """Train pairs + (queries, gallery) evaluation loaders for a registered dataset.

    Args:
        dataset: registered dataset name (``synth_pedes``, ``cuhk_pedes``...).
        root: dataset folder in the dataset's official layout; a relative root lives under
            ``$XSEARCH_DATA`` (default ``./data``), so configs name only the folder.
        image_size: ``(H, W)`` every image is resized to.
        crop: ``(top, left, bottom, right)`` box, as fractions of each image's height / width, cut out before
            resizing (e.g. the face region of aligned face images), or ``center``: the largest centred box with the
            aspect ratio of ``image_size`` (CLIP's resize-shorter-side + centre crop); ``None`` keeps the whole image.
        interpolation: the resize filter, ``bicubic`` or ``bilinear``: that of the method's reference code
            (bilinear for IRRA and its family, torchvision ``Resize``'s default; bicubic for CLIP's preprocessing).
        batch_size: training pairs per batch (per device).
        sampler: ``random`` or ``identity`` (P x K batches, ``instances`` pairs per identity).
        val_split: split used for validation and checkpoint selection; a dataset without it
            falls back to ``test`` with a warning (selection on test is then logged).
        cache_images: keep every resized image in RAM as uint8 (fast epochs on small data).
        image_cache: a folder of pre-resized uint8 copies on disk (:mod:`xsearch.datamodules.image_cache`; fill it
            with ``xsearch data cache``): for originals much larger than ``image_size``; relative to the dataset root.
        generate: generator options (``{"identities": 1000, "seed": 0}``) for a synthetic dataset
            whose root does not exist yet; ``None`` never generates.
        dataset_options: keyword options of the dataset's parser.
        drop_missing_images: train and evaluate without images listed in the annotations but
            absent on disk (logged); by default their presence is checked up front and training
            refuses to start, naming the count and the first paths.
        cache_index: reuse the parsed annotations while their files are unchanged (size + mtime).
        degrade: a seeded low-quality transform (:mod:`xsearch.datamodules.degrade`) applied to the images of
            ``degrade_splits`` (default the test split: the degraded-test protocol); ``None``: clean images.
        train_items: ``captions`` (one training item per caption, IRRA's epoch) or ``images`` (one per
            image, with a random caption of it at each visit).
        composed: make composed pairs (reference face + modification sentence -> target face) from the
            dataset's per-image attributes (:mod:`xsearch.datamodules.composed`): train items gain
            ``reference_image`` / ``modification`` / ``has_reference``. ``None``: no pairs.
        query_mode: validation/test queries: ``text`` (captions, positives by pid) or ``composed`` (one
            query per target image, the reference excluded from its ranking; needs ``composed``, defaults
            used when unset). Results are stored under :attr:`benchmark` (``<dataset>:composed``).
        verification: also evaluate face verification (pairs: ROC AUC, EER, TAR@FAR, k-fold accuracy) and
            rank-1 identification on each evaluation split (:mod:`xsearch.datamodules.face_pairs`): a third
            loader of face samples; ``None``: retrieval only.
        positives: text queries' positives: every image of the person (``identity``, person search) or only
            the caption's own image (``instance``, COCO-style; results stored as ``<dataset>:instance``).
        bad_samples: what a training sample that cannot be used does: ``fail`` (default) stops the run naming it, an
            unreadable image (corrupt, truncated, not an image) when it is first loaded, an empty caption before
            training starts; ``skip`` leaves it out with a warning naming it (an unreadable image drops its item
            from the batch, the batch gets smaller; empty captions are removed up front). Evaluation images are
            never skipped: a metric over part of the gallery is not the benchmark's.
        seed: seed of the training batches and of every item's augmentation (a function of ``(seed, epoch,
            batch, slot)`` only: resumable, the same with any number of workers); ``None`` = the run's
            ``seed_everything``.
        entity_retrieval: also evaluate Id-CLIP's entity retrieval (identity-only prompts + a face -> every image
            of the identity; :mod:`xsearch.datamodules.entity_queries`) on each evaluation split, for datasets with
            face descriptors: one more loader; ``None``: no entity queries.
        entity_text: Id-CLIP's training text and general-retrieval queries for captions with an ``[ENTITY]`` slot
            (:mod:`xsearch.datamodules.entity_text`); ``None``: the defaults (the authors' protocols) on such
            captions, nothing on others (setting it for a dataset without the slot is an error). The
            ``single`` query protocol is stored as ``<benchmark>:single-template``.
    """

    def __init__(
        self,
        dataset: str,
        root: str,
        image_size: tuple[PositiveInt, PositiveInt] = (384, 128),
        crop: tuple[float, float, float, float] | Literal["center"] | None = None,
        interpolation: Interpolation = "bicubic",
        batch_size: PositiveInt = 64,
        eval_batch_size: PositiveInt = 256,
        num_workers: NonNegativeInt = 4,
        sampler: Literal["random", "identity"] = "random",
        instances: PositiveInt = 4,
        val_split: str = "val",
        cache_images: bool = False,
        image_cache: str | None = None,
        augment: AugmentConfig | None = None,
        generate: dict[str, Any] | None = None,
        dataset_options: dict[str, Any] | None = None,
        drop_missing_images: bool = False,
        cache_index: bool = True,
        degrade: DegradeConfig | None = None,
        degrade_splits: tuple[str, ...] = ("test",),
        train_items: Literal["captions", "images"] = "captions",
        composed: ComposedOptions | None = None,
        query_mode: Literal["text", "composed"] = "text",
        verification: VerificationOptions | None = None,
        positives: Literal["identity", "instance"] = "identity",
        entity_retrieval: EntityOptions | None = None,
        entity_text: EntityTextOptions | None = None,
        bad_samples: Literal["fail", "skip"] = "fail",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        DATASETS.get(dataset)  # fail early on an unknown name
        self.save_hyperparameters()
        self.dataset, self.root = dataset, resolve_root(root).absolute()
        self.image_size = tuple(image_size)
        if crop not in (None, "center") and not (0 <= crop[0] < crop[2] <= 1 and 0 <= crop[1] < crop[3] <= 1):
            raise ValueError(f"crop must be (top, left, bottom, right) fractions with top < bottom, left < right, got {crop}")
        self.augment_config = augment or AugmentConfig()
        self.index: DatasetIndex | None = None
        self.labels: dict[int, int] = {}
        self.eval_split = val_split
        self.composed = composed if composed is not None or query_mode == "text" else ComposedOptions()
        self.query_mode = query_mode
        # kept as given: LightningCLI replaces ``hparams`` with the parsed config, where dataclasses are dicts
        self.degrade_config, self.verification, self.entity_retrieval = degrade, verification, entity_retrieval
        self.entity_text = entity_text
        self._caption_sources: dict[int, CaptionSource] | None = None
        self._attribute_table: AttributeTable | None = None
        self.eval_sets: dict[str, tuple[Dataset, GallerySet]] = {}
        """Split -> (queries, gallery) sets, after :meth:`setup`."""
        self.eval_suites: dict[str, EvaluationSuite] = {}
        """Split -> its evaluation protocols and the loaders they read, after :meth:`setup`."""
        self.skipped: set[str] = set()
        self._train_loader: ResumableLoader | None = None
        self._train_position: dict[str, int] | None = None

    @property
    def seed(self) -> int:
        """The data seed: ``seed``, else the run's (``PL_GLOBAL_SEED``, set by ``seed_everything``), else 0."""
        if self.hparams.seed is not None:
            return int(self.hparams.seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _degrade(self, split: str) -> DegradeConfig | None:
        return self.degrade_config if split in self.hparams.degrade_splits else None

    @property
    def entity_text_options(self) -> EntityTextOptions:
        """``entity_text``, or the defaults (the authors' protocols) when unset."""
        return self.entity_text if self.entity_text is not None else EntityTextOptions()

    @property
    def benchmark(self) -> str:
        """Name results are stored and compared under: the dataset, then ``:composed`` for composed queries,
        ``:instance`` for instance positives, ``:single-template`` for Id-CLIP's one-template queries, ``:roc-nearest``
        when verification TARs are read at the nearest ROC point (TGFR's code) and ``:degraded`` when the test images
        are degraded (each protocol is its own leaderboard table)."""
        text = self.query_mode == "text"
        protocol = [] if text else [self.query_mode]
        protocol += ["instance"] if self.hparams.positives == "instance" and text else []
        protocol += [suffix] if (suffix := query_protocol(self.entity_text_options).suffix) and text else []
        protocol += ["roc-nearest"] if getattr(self.verification, "tar_rule", "at_most") == "nearest" else []
        protocol += ["degraded"] if self._degrade("test") is not None else []
        return ":".join([self.dataset, *protocol])

    def attribute_table(self) -> AttributeTable:
        """Changeable attributes of every image (composed pairs), built once."""
        if self._attribute_table is None:
            self._attribute_table = AttributeTable(self.load_index(), self.composed or ComposedOptions())
        return self._attribute_table

    # -- preparation ---------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Generate a synthetic dataset if asked and missing (rank 0 only)."""
        if self.hparams.generate is not None and not self.root.exists():
            generator = SYNTHESIZERS.get(self.dataset)
            log.info("generating %s into %s", self.dataset, self.root)
            generator(self.root, **self.hparams.generate)

    def load_index(self) -> DatasetIndex:
        if self.index is None:
            if not self.root.exists():
                hint = " (set data.generate to create it)" if self.dataset in SYNTHESIZERS else ""
                raise FileNotFoundError(f"{self.root}: dataset folder for {self.dataset!r} not found{hint}")
            index = load_dataset(self.dataset, self.root, self.hparams.dataset_options, self.hparams.cache_index)
            for warning in index.warnings:
                log.warning("%s: %s", self.dataset, warning)
            if index.missing_images:
                if not self.hparams.drop_missing_images:
                    first = ", ".join(str(p) for p in index.missing_images[:3])
                    raise DatasetFormatError(
                        f"{self.root}: {len(index.missing_images)} of {len(index.images)} images listed in the "
                        f"annotations are missing, e.g. {first} (set data.drop_missing_images=true to go on without them)"
                    )
                index.drop_images(set(index.missing_images))
                log.warning("%s: dropped %d missing images and their captions", self.dataset, len(index.missing_images))
            self.index = index
            train_pids = sorted({r.pid for r in self.index.split_images("train")})
            self.labels = {pid: label for label, pid in enumerate(train_pids)}
            if not self.index.has_split(self.hparams.val_split):
                self.eval_split = "test"
                log.warning(
                    "%s has no %r split: validation and checkpoint selection use the TEST split",
                    self.dataset, self.hparams.val_split,
                )
        return self.index

    def face_descriptors(self) -> dict[int, torch.Tensor] | None:
        """``{image index: (D,) float32 face descriptor}`` when the dataset ships them (COCO-PFS), else ``None``."""
        index = self.load_index()
        if "face_features" not in index.extras:
            return None
        if getattr(self, "_faces", None) is None:
            from xsearch.datamodules.coco_pfs import face_descriptor

            self._faces = {r.index: torch.from_numpy(face_descriptor(index, r)) for r in index.images}
        return self._faces

    def caption_sources(self) -> dict[int, CaptionSource] | None:
        """``{caption index: CaptionSource}`` when the captions carry an ``[ENTITY]`` slot (COCO-PFS with
        ``entity: slot``), else ``None``; ``entity_text`` set for captions without the slot is refused."""
        index = self.load_index()
        if index.extras.get("entity") != "slot":
            if self.entity_text is not None:
                raise ValueError(f"{self.dataset}: data.entity_text applies to captions with an [ENTITY] slot "
                                 "(coco_pfs or synth_pfs with dataset_options: {entity: slot})")
            return None
        if self._caption_sources is None:
            self._caption_sources = caption_sources(index)
        return self._caption_sources

    def general_queries(self, captions: list[CaptionRecord], averaged: bool) -> GeneralQueries:
        """A split's text queries: the captions, or on captions with an ``[ENTITY]`` slot those of the
        ``entity_text`` query protocol (``averaged`` at validation)."""
        sources = self.caption_sources()
        if sources is None:
            return GeneralQueries(captions)
        return query_protocol(self.entity_text_options).build(captions, sources, averaged)

    def identity_names(self) -> dict[int, str] | None:
        """Display names by dataset pid for datasets with face descriptors (the name-based Id-CLIP configurations)."""
        return self.load_index().identity_names if self.face_descriptors() is not None else None

    @property
    def disk_cache(self) -> DiskImageCache | None:
        """The ``image_cache`` folder (relative to the dataset root), or ``None``."""
        folder = self.hparams.image_cache
        return None if folder is None else DiskImageCache(self.root / folder)

    @property
    def num_train_identities(self) -> int:
        self.load_index()
        return len(self.labels)

    def setup(self, stage: str) -> None:
        index = self.load_index()
        size = self.image_size
        if stage == "fit":
            captions = self._usable_captions(index.split_captions("train"))
            store = ImageStore(index.split_images("train"), size, self.hparams.cache_images, "caching train images", self.hparams.crop,
                               self._degrade("train"), self.disk_cache, skip_unreadable=self.hparams.bad_samples == "skip",
                               interpolation=self.hparams.interpolation)
            items = TrainImages if self.hparams.train_items == "images" else TrainPairs
            self.train_set = items(captions, self.labels, store, build_train_augment(size, self.augment_config))
            self.train_set.faces, self.train_set.names = self.face_descriptors(), self.identity_names()
            if (sources := self.caption_sources()) is not None:
                self.train_set.texts = train_text(self.entity_text_options, sources)
            if self.composed is not None:
                table = self.attribute_table()
                candidates = reference_candidates(index.split_images("train"), table, self.composed)
                self.train_set = ComposedTrainPairs(self.train_set, candidates, table, self.seed)
        splits = {"fit": self.eval_split, "validate": self.eval_split, "test": "test", "predict": "test"}
        self.eval_sets, self.eval_suites = {}, {}
        for split in {splits[stage]} | ({"test"} if stage == "test" else set()):
            images = index.split_images(split)
            store = ImageStore(images, size, self.hparams.cache_images, f"caching {split} images", self.hparams.crop,
                               self._degrade(split), self.disk_cache, interpolation=self.hparams.interpolation)
            if self.query_mode == "composed":
                table = self.attribute_table()
                queries = ComposedQuerySet(composed_pairs(images, table, self.composed), store, images, table)
            else:
                general = self.general_queries(index.split_captions(split), averaged=stage in ("fit", "validate"))
                queries = QuerySet(general.captions, self.face_descriptors(), self.hparams.positives == "instance",
                                   self.identity_names(), general.prompts)
            gallery = GallerySet(images, store)
            self.eval_sets[split] = (queries, gallery)
            protocols = [IdentityRetrieval(queries, gallery, queries.relevance)]
            if self.verification is not None:
                pairs = verification_protocol(images, index.extras, self.verification)
                log.info("%s %s: %d verification pairs (%s), %d identification probes vs %d gallery faces",
                         self.dataset, split, len(pairs), pairs.source, len(pairs.probes), len(pairs.gallery))
                protocols.append(FaceVerification(FaceSampleSet(images, index.split_captions(split), store), pairs))
            if self.entity_retrieval is not None:
                faces = self.face_descriptors()
                if faces is None:
                    raise ValueError(f"{self.dataset}: entity retrieval needs per-image face descriptors, which this "
                                     "dataset does not have (coco_pfs and synth_pfs do)")
                entities = entity_queries(index, images, faces, self.entity_retrieval)
                log.info("%s %s: %d entity queries, %d query-face images left out of the entity gallery", self.dataset,
                         split, len(entities), len(entities.excluded))
                protocols.append(EntityRetrieval(entities, gallery, entities.excluded))
            self.eval_suites[split] = EvaluationSuite(protocols)

    def _usable_captions(self, captions: list[CaptionRecord]) -> list[CaptionRecord]:
        """The training captions with text; empty ones fail (naming their images) or are dropped, per ``bad_samples``."""
        empty = [c for c in captions if not c.text.strip()]
        if not empty:
            return captions
        index = self.load_index()
        where = ", ".join(str(index.images[c.image_index].path) for c in empty[:3])
        if self.hparams.bad_samples != "skip":
            raise DatasetFormatError(f"{self.root}: {len(empty)} of {len(captions)} training captions are empty, e.g. the "
                                     f"captions of {where} (fix the annotations, or set data.bad_samples=skip to train "
                                     "without them)")
        log.warning("%s: %d of %d training captions are empty and left out (data.bad_samples=skip), e.g. on %s",
                    self.dataset, len(empty), len(captions), where)
        return [c for c in captions if c.text.strip()]

    # -- loaders -------------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        """(world size, rank) of the attached trainer; (1, 0) without one."""
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)

    def _loader(self, dataset: Dataset, batch_size: int) -> DataLoader:
        """An evaluation loader of this rank's share: under DDP a ``DistributedSampler`` (padded with repeats, which
        the metrics drop by sample index), since the Trainer runs with ``use_distributed_sampler=False`` so that it
        leaves the training samplers alone."""
        workers = self.hparams.num_workers
        world, rank = self._world()
        sampler = DistributedSampler(dataset, world, rank, shuffle=False) if world > 1 else None
        return DataLoader(dataset, batch_size, sampler=sampler, num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> ResumableLoader:
        """This rank's training batches (:mod:`xsearch.datamodules.samplers`) in a loader that checkpoints keep the
        position of and that seeds every item (:mod:`xsearch.datamodules.resumable`)."""
        world, rank = self._world()
        sampler: EpochBatchSampler
        if self.hparams.sampler == "identity":
            instances = self.hparams.instances
            sampler = IdentityBatchSampler([self.labels[c.pid] for c in self.train_set.captions],
                                           self.hparams.batch_size // instances, instances, self.seed, world, rank)
        else:
            sampler = ShuffledBatchSampler(len(self.train_set), self.hparams.batch_size, self.seed, world, rank)
        sampler.set_epoch(self.trainer.current_epoch if self.trainer else 0)
        workers = self.hparams.num_workers
        self._train_loader = ResumableLoader(self.train_set, sampler, skip_unreadable=self.hparams.bad_samples == "skip",
                                             num_workers=workers, persistent_workers=workers > 0,
                                             pin_memory=torch.cuda.is_available())
        if self._train_position is not None:
            self._train_loader.load_state_dict(self._train_position)
        return self._train_loader

    def state_dict(self) -> dict[str, Any]:
        """Kept in every checkpoint: the training loader's position in its epoch (see :class:`ResumableLoader`)."""
        return {"train_position": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Lightning also keeps stateful loaders in its fit loop, but never hands the state back when the model asks
        # for ``trainer.estimated_stepping_batches`` (its train loader is built before the checkpoint is read)
        self._train_position = state.get("train_position")
        if self._train_loader is not None and self._train_position is not None:
            self._train_loader.load_state_dict(self._train_position)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Report (once per file) and remove the training items skipped because their image cannot be read."""
        if isinstance(batch, dict) and "skipped" in batch:
            new = [reason for reason in batch.pop("skipped") if reason not in self.skipped]
            self.skipped.update(new)
            for reason in new:
                log.warning("skipped a training item: %s (data.bad_samples=skip; %d files so far)", reason, len(self.skipped))
        return batch

    def _eval_loaders(self, split: str) -> list[DataLoader]:
        """One loader per ``(role, dataset)`` the split's protocols read, in :attr:`EvaluationSuite.loaders` order."""
        return [self._loader(dataset, self.hparams.eval_batch_size) for _, dataset in self.eval_suites[split].loaders]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.eval_split)

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")
