"""Face descriptors from your own face model: the pluggable extractor interface of Id-CLIP's identities.

COCO-PFS ships its descriptors precomputed (512-d per ``<COCO image id>_<class id>`` key, read by the
``coco_pfs`` parser). To use another face model, or your own photos, register an extractor::

    @FACE_EXTRACTORS.register("my_model")
    class MyExtractor:
        def __call__(self, faces: list[PIL.Image.Image]) -> np.ndarray:  # (N, 512) float32
            ...

An extractor is built without arguments and maps RGB face photos (crops or whole photos: detection is its job)
to one row each. :func:`write_features_json` then writes a features file in the COCO-PFS format (nested
``[[512 floats]]``, atomically), which the parser reads like the original; entity retrieval can also compute its
query faces from the identities' crops (``data.entity_retrieval: {query_face: extractor, extractor: NAME}``).

Registered: ``facenet`` (facenet-pytorch: MTCNN, 160 px, margin 0, then ``InceptionResnetV1`` trained on
VGGFace2, L2-normalised: the combination COCO-PFS's descriptors point to, see
docs/methods.md#id-clip-face-descriptors; ``pip install facenet-pytorch``, downloads its weights on first use).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Protocol, Sequence

import numpy as np

from xsearch.atomic import write_text_atomic
from xsearch.registry import Registry

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["FACE_EXTRACTORS", "FaceExtractor", "FacenetExtractor", "write_features_json"]


class FaceExtractor(Protocol):
    """RGB face photos -> ``(N, D)`` float32 descriptors, one row per photo."""

    def __call__(self, faces: Sequence[Image.Image]) -> np.ndarray: ...


FACE_EXTRACTORS: Registry[Callable[[], FaceExtractor]] = Registry("face extractor")


@FACE_EXTRACTORS.register("facenet")
class FacenetExtractor:
    """facenet-pytorch MTCNN (160 px, margin 0; the whole photo resized when no face is found) +
    InceptionResnetV1 (VGGFace2) -> ``(N, 512)`` L2-normalised."""

    def __init__(self, device: str = "cpu") -> None:
        try:
            from facenet_pytorch import MTCNN, InceptionResnetV1
        except ImportError as error:
            raise ImportError("the facenet face extractor needs facenet-pytorch: pip install facenet-pytorch") from error
        self.detector = MTCNN(image_size=160, margin=0, device=device)
        self.model = InceptionResnetV1(pretrained="vggface2").eval().to(device)
        self.device = device

    def __call__(self, faces: Sequence[Image.Image]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        crops = []
        for face in faces:
            crop = self.detector(face)
            if crop is None:  # no detection: the photo is taken as the crop
                pixels = torch.from_numpy(np.asarray(face.convert("RGB").resize((160, 160)), dtype=np.float32))
                crop = (pixels.permute(2, 0, 1) - 127.5) / 128.0
            crops.append(crop)
        with torch.no_grad():
            vectors = self.model(torch.stack(crops).to(self.device))
        return F.normalize(vectors, dim=-1).cpu().numpy().astype(np.float32)


def write_features_json(path: str | Path, photos: Mapping[str, str | Path], extractor: FaceExtractor,
                        batch_size: int = 64) -> Path:
    """Describe ``photos`` (``{key: image path}``, keys ``"<COCO image id>_<class id>"``) and write them as a
    COCO-PFS features file ``{key: [[D floats]]}``; written to a temporary sibling and renamed, so a failure
    leaves no partial file."""
    from xsearch.datamodules.transforms import read_rgb

    path = Path(path)
    keys = list(photos)
    features: dict[str, list[list[float]]] = {}
    for start in range(0, len(keys), batch_size):
        chunk = keys[start:start + batch_size]
        faces = []
        for key in chunk:
            faces.append(read_rgb(photos[key]))
        vectors = np.asarray(extractor(faces), dtype=np.float32)
        if vectors.shape[0] != len(chunk) or vectors.ndim != 2:
            raise ValueError(f"face extractor returned shape {vectors.shape} for {len(chunk)} photos; expected (N, D)")
        features.update({key: [[round(float(v), 6) for v in row]] for key, row in zip(chunk, vectors)})
    write_text_atomic(path, json.dumps(features))
    return path
