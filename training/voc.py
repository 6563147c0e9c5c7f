"""PASCAL VOC 2012 loader: the real VOC tree (with SBD's SegmentationClassAug) and the synthetic world's copy.

Layout read under ``root``: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (else
``SegmentationClassAug/<id>.png``), ``Annotations/<id>.xml``, split lists in
``ImageSets/{Segmentation,Main}/<split>.txt`` (or ``<root>/<split>.txt``, or any list file by path) and
optionally ``classes.txt`` (one object class per line, no background). Masks hold raw palette indices:
0 background, 1 + class position for objects, 255 void. Torch-free: it only reads files.
"""

from __future__ import annotations

import copy
import pickle
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import BinaryIO

import numpy as np

from wsvs.runtime.errors import InputError
from wsvs.runtime.io import VOID, read_image_rgb, read_label_png

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip


class VOCDataset:
    """The images of one split, their masks and their image-level labels, indexed 0..len-1."""

    def __init__(
        self,
        root: Path,
        split: str | Path,
        class_names: list[str] | None = None,
        labels_file: Path | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(self.root, "VOC root folder not found")
        self.class_names = list(class_names) if class_names is not None else _read_class_names(self.root)
        self.split_file = _find_split_file(self.root, split)
        self.ids = _read_ids(self.split_file)
        self.labels_file = None if labels_file is None else Path(labels_file)
        self._label_vectors = None if self.labels_file is None else read_cls_labels(self.labels_file)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: list[int]) -> VOCDataset:
        """The same split restricted to the images at ``indices`` (in that order)."""
        view = copy.copy(self)
        view.ids = [self.ids[i] for i in indices]
        return view

    def image(self, i: int) -> np.ndarray:
        """The i-th image, (H, W, 3) uint8 RGB."""
        return read_image_rgb(self.root / "JPEGImages" / f"{self.ids[i]}.jpg")

    def mask_path(self, i: int) -> Path | None:
        """SegmentationClass/<id>.png, else SegmentationClassAug/<id>.png, else None."""
        for folder in ("SegmentationClass", "SegmentationClassAug"):
            path = self.root / folder / f"{self.ids[i]}.png"
            if path.is_file():
                return path
        return None

    def has_masks(self) -> bool:
        """Whether every image of the split has a ground-truth mask (so it can be scored)."""
        return all(self.mask_path(i) is not None for i in range(len(self)))

    def mask(self, i: int) -> np.ndarray:
        """The i-th ground-truth mask, (H, W) uint8 class indices, 255 void."""
        path = self.mask_path(i)
        if path is None:
            raise InputError(
                self.root / "SegmentationClass" / f"{self.ids[i]}.png",
                "mask not found (nor in SegmentationClassAug)",
            )
        mask = read_label_png(path)
        classes = np.unique(mask)
        unknown = classes[(classes > len(self.class_names)) & (classes != VOID)]
        if unknown.size:
            raise InputError(path, f"class index {int(unknown[0])} but only {len(self.class_names)} classes are known")
        return mask

    def labels(self, i: int) -> np.ndarray:
        """Image-level labels (C,) float32 in {0, 1}: from labels_file, else the XML annotation, else the mask."""
        image_id = self.ids[i]
        if self._label_vectors is not None:
            if image_id not in self._label_vectors:
                raise InputError(self.labels_file, f"no labels for image {image_id}")
            vector = self._label_vectors[image_id]
            if vector.shape != (len(self.class_names),):
                raise InputError(
                    self.labels_file,
                    f"labels of {image_id} have {vector.size} entries, expected {len(self.class_names)}",
                )
            return vector.copy()
        annotation = self.root / "Annotations" / f"{image_id}.xml"
        if annotation.is_file():
            return self._labels_from_xml(annotation)
        if self.mask_path(i) is None:
            raise InputError(annotation, "no labels: neither this annotation nor a mask exists")
        classes = np.unique(self.mask(i))
        vector = np.zeros(len(self.class_names), dtype=np.float32)
        vector[classes[(classes > 0) & (classes != VOID)].astype(np.int64) - 1] = 1.0
        return vector

    def label_matrix(self) -> np.ndarray:
        """The labels of every image, (N, C) float32."""
        matrix = np.zeros((len(self), len(self.class_names)), dtype=np.float32)
        for i in range(len(self)):
            matrix[i] = self.labels(i)
        return matrix

    def _labels_from_xml(self, path: Path) -> np.ndarray:
        try:
            # object/name only: person-layout <part> elements carry names too (head, hand, foot).
            names = [(node.text or "").strip() for node in ET.parse(path).getroot().findall("object/name")]
        except ET.ParseError as exc:
            raise InputError(path, f"not valid XML ({exc})") from None
        vector = np.zeros(len(self.class_names), dtype=np.float32)
        for name in names:
            if name not in self.class_names:
                raise InputError(path, f"unknown class {name!r} (known: {', '.join(self.class_names)})")
            vector[self.class_names.index(name)] = 1.0
        return vector


def _read_class_names(root: Path) -> list[str]:
    """<root>/classes.txt when present (a leading "background" line is tolerated), else VOC_CLASSES."""
    path = root / "classes.txt"
    if not path.is_file():
        return list(VOC_CLASSES)
    names = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
    if names and names[0].lower() == "background":
        names = names[1:]
    if not names:
        raise InputError(path, "no class names")
    if len(set(names)) != len(names):
        raise InputError(path, "class names repeat")
    return names


def _find_split_file(root: Path, split: str | Path) -> Path:
    """A split name (ImageSets/Segmentation, ImageSets/Main, then the root itself) or a path to a list file."""
    candidates = [root / "ImageSets" / folder / f"{split}.txt" for folder in ("Segmentation", "Main")]
    candidates.append(root / f"{split}.txt")
    for path in [*candidates, Path(split)]:
        if path.is_file():
            return path
    looked = ", ".join(str(path) for path in candidates)
    raise InputError(split, f"unknown split: not a list file, and none of {looked} exists")


def _read_ids(path: Path) -> list[str]:
    """Image ids from a list whose lines are bare ids or psa/irn pairs "/JPEGImages/x.jpg /Seg.../x.png"."""
    ids = []
    for line in _read_text(path).splitlines():
        fields = line.split()
        if fields:
            ids.append(Path(fields[0]).stem if "/" in fields[0] else fields[0])
    if not ids:
        raise InputError(path, "the split list is empty")
    return ids


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(path, "not a UTF-8 text file") from None


def read_cls_labels(path: Path) -> dict[str, np.ndarray]:
    """Read a psa/irn/SEAM ``cls_labels.npy`` (a pickled dict id -> class vector) without general unpickling.

    The pickle may only rebuild numpy arrays, dtypes and scalars; anything else (a pickle that would run
    code) is refused with an InputError. irn's integer ids (2007000032) become VOC ids (2007_000032).
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(file)
            elif version == (2, 0):
                _, _, dtype = np.lib.format.read_array_header_2_0(file)
            else:
                raise InputError(path, f"unsupported .npy format version {version}")
            if dtype != np.dtype(object):
                raise InputError(path, f"expected a pickled dict of label vectors, found a {dtype} array")
            loaded = _NumpyOnlyUnpickler(file, path).load()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except InputError:
        raise
    except Exception as exc:  # a malformed pickle can fail in many ways; all of them are bad input
        raise InputError(path, f"not a readable cls_labels file ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, np.ndarray) and loaded.shape == ():
        loaded = loaded.item()
    if not isinstance(loaded, dict) or not loaded:
        raise InputError(path, f"expected a non-empty dict of label vectors, found {type(loaded).__name__}")
    vectors = {}
    for key, value in loaded.items():
        vector = np.asarray(value, dtype=np.float32) if isinstance(value, np.ndarray) else None
        if vector is None or vector.ndim != 1 or not np.isin(vector, (0.0, 1.0)).all():
            raise InputError(path, f"the labels of {key!r} are not a 1-D array of 0s and 1s")
        vectors[_image_id(key, path)] = vector
    return vectors


def _image_id(key: object, path: Path) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (int, np.integer)) and len(str(int(key))) == 10:
        text = str(int(key))
        return f"{text[:4]}_{text[4:]}"
    raise InputError(path, f"image id {key!r} is neither a string nor a 10-digit irn integer id")


def _latin1_encode(text: str, encoding: str) -> bytes:
    """Stand-in for _codecs.encode, which Python-2-era pickles use for raw array bytes."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# numpy's own array and scalar rebuilders, found where the running numpy keeps them (numpy.core in
# 1.x, numpy._core in 2.x); pickles written by either version name one of the two modules.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_SCALAR = np.int64(0).__reduce__()[0]
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _RECONSTRUCT for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _SCALAR for core in ("core", "_core")},
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals needed to rebuild numpy arrays and scalars."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # numpy's choice for Python-2-era array pickles
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise InputError(self.path, f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        return allowed
