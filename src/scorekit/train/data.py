r"""Training data: 2-D toys, sklearn's 8×8 digits, and user files, with a stored normalisation.

Every loader returns a :class:`Dataset` whose ``x`` is normalised,
:math:`\tilde x = (x - \mathrm{loc}) / \mathrm{scale}`, with the affine map kept in a
:class:`Normalizer` that is saved with the checkpoint and undone after sampling.

* 2-D toys (:data:`TOYS`): moons, swiss roll, 8 Gaussians, checkerboard, rings,
  spirals, pinwheel (Grathwohl et al. 2019, FFJORD's toy set; Johnson et al. 2016 for
  the pinwheel), drawn with an explicit ``torch.Generator``.
* ``"digits"``: sklearn's 8×8 digits, shape ``(N, 1, 8, 8)``, pixels 0..16 mapped to [-1, 1].
* user data: ``.npy`` / ``.npz`` arrays (loaded with ``allow_pickle=False``: user files
  are never unpickled), ``.csv`` numeric tables (an optional header row), and folders
  of PNG / JPEG images (Pillow; pixels 0..255 mapped to [-1, 1]).

References:
    Grathwohl et al., "FFJORD", ICLR 2019; Johnson et al., "Composing graphical models
    with neural networks", NeurIPS 2016; Alpaydin & Kaynak, "Optical Recognition of
    Handwritten Digits" (UCI), 1998.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._validate import check_choice, check_generator, check_int, check_range
from ..core.random import rand, randint, randn

__all__ = [
    "TOYS",
    "Dataset",
    "Normalizer",
    "digits",
    "load_data",
    "load_file",
    "split_validation",
    "toy_2d",
]

TOYS = ("moons", "swiss_roll", "8gaussians", "checkerboard", "rings", "spirals", "pinwheel")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NORMALIZE = ("auto", "standard", "minmax", "none")


class Normalizer:
    r"""The affine map :math:`\tilde x = (x - \mathrm{loc}) / \mathrm{scale}` and its inverse.

    ``loc`` and ``scale`` broadcast against one example (shape ``D`` or ``()``).
    """

    def __init__(self, loc: Tensor | float = 0.0, scale: Tensor | float = 1.0):
        self.loc = torch.as_tensor(loc, dtype=torch.float64)
        self.scale = torch.as_tensor(scale, dtype=torch.float64)
        if not (torch.isfinite(self.loc).all() and torch.isfinite(self.scale).all()):
            raise ValueError("normalizer loc and scale must be finite")
        if (self.scale <= 0).any():
            raise ValueError(f"normalizer scale must be > 0, got min {float(self.scale.min())}")

    @classmethod
    def fit(cls, x: Tensor, mode: str = "standard") -> Normalizer:
        r"""Per-feature ``"standard"`` (mean 0, std 1), ``"minmax"`` (to [-1, 1]) or ``"none"``."""
        check_choice("normalize", mode, NORMALIZE[1:])
        x = x.double()
        if mode == "none":
            return cls()
        if mode == "standard":
            loc, scale = x.mean(0), x.std(0) if x.shape[0] > 1 else torch.ones_like(x[0])
        else:
            lo, hi = x.amin(0), x.amax(0)
            loc, scale = (hi + lo) / 2, (hi - lo) / 2
        return cls(loc, torch.where(scale > 0, scale, torch.ones_like(scale)))

    def encode(self, x: Tensor) -> Tensor:
        """Data space to model space."""
        return (x - self.loc.to(x)) / self.scale.to(x)

    def decode(self, x: Tensor) -> Tensor:
        """Model space back to data space."""
        return x * self.scale.to(x) + self.loc.to(x)

    def log_det_for(self, shape: tuple[int, ...]) -> float:
        r""":math:`\log|\det \partial\tilde x/\partial x| = -\sum \log \mathrm{scale}` for one
        example of ``shape``, so that :math:`\log p(x) = \log \tilde p(\tilde x) + ` this."""
        return float(-torch.log(self.scale.expand(shape)).sum())

    def config(self) -> dict:
        return {"loc": self.loc.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_config(cls, config: dict) -> Normalizer:
        if not isinstance(config, dict) or not {"loc", "scale"} <= set(config):
            raise ValueError(f"normalizer config must have 'loc' and 'scale', got {config!r}")
        f64 = torch.float64
        try:
            loc = torch.tensor(config["loc"], dtype=f64)
            scale = torch.tensor(config["scale"], dtype=f64)
            torch.broadcast_shapes(loc.shape, scale.shape)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise ValueError(
                "normalizer config 'loc' and 'scale' must be numbers or nested lists of "
                f"numbers of broadcastable shapes, got {config!r}"
            ) from None
        return cls(loc, scale)

    def check_shape(self, shape: tuple[int, ...], what: str = "normalizer") -> None:
        """Raise ``ValueError`` unless ``loc`` and ``scale`` broadcast to one example of
        ``shape`` without changing it."""
        try:
            ok = torch.broadcast_shapes(self.loc.shape, self.scale.shape, shape) == shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"{what} has loc of shape {tuple(self.loc.shape)} and scale of shape "
                f"{tuple(self.scale.shape)}, which do not fit examples of shape {shape}"
            )


@dataclass
class Dataset(torch.utils.data.Dataset):
    """Normalised examples ``x`` of shape ``(N, *D)`` (float32), optional ``labels`` ``(N,)``,
    the ``normalizer`` that produced them, and a ``name``. A torch ``Dataset`` of ``x[i]``,
    or ``(x[i], labels[i])`` pairs when labelled (what :class:`~scorekit.train.Trainer`
    reads, the labels as the conditioning ``y``)."""

    x: Tensor
    normalizer: Normalizer
    name: str
    labels: Tensor | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def tensors(self) -> tuple[Tensor, ...]:
        """``(x,)`` or ``(x, labels)``, as ``torch.utils.data.TensorDataset`` has them."""
        return (self.x,) if self.labels is None else (self.x, self.labels)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i] if self.labels is None else (self.x[i], self.labels[i])


def split_validation(data: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    r"""Hold out a random ``fraction`` of ``data`` for validation: ``(train, val)``, each a
    :class:`Dataset` with the same normaliser and name (labels split with their examples).
    ``round(fraction N)`` examples go to ``val`` (at least one), drawn by a permutation
    seeded by ``seed``, so the same call gives the same split (what a resumed run needs).

    Example:
        >>> d = Dataset(x=torch.randn(10, 2), normalizer=Normalizer(), name="toy")
        >>> tr, va = split_validation(d, 0.2)
        >>> len(tr), len(va)
        (8, 2)
    """
    if not isinstance(data, Dataset):
        raise ValueError(f"data must be a scorekit Dataset, got {type(data).__name__}")
    check_range("fraction", float(fraction), 0.0, 1.0)
    n = len(data)
    k = max(1, round(float(fraction) * n))
    if not 0 < fraction < 1 or k >= n:
        raise ValueError(
            f"fraction must leave examples on both sides (0 < fraction < 1) of the {n} "
            f"examples, got {fraction}"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    val_idx, train_idx = perm[:k].sort().values, perm[k:].sort().values

    def part(idx: Tensor) -> Dataset:
        labels = None if data.labels is None else data.labels[idx]
        return Dataset(x=data.x[idx], normalizer=data.normalizer, name=data.name, labels=labels)

    return part(train_idx), part(val_idx)


def _u(n: int, g: torch.Generator | None) -> Tensor:
    return rand((n,), g, torch.float64, "cpu")


def _z(n: int, g: torch.Generator | None, d: int = 2) -> Tensor:
    return randn((n, d), g, torch.float64, "cpu")


def toy_2d(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Draw ``n`` points of a 2-D toy distribution, shape ``(n, 2)``, float32, raw scale.

    Example:
        >>> toy_2d("moons", 5, torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2])
    """
    check_choice("name", name, TOYS)
    n = check_int("n", n)
    check_generator("generator", generator)
    g = generator
    if name == "moons":
        upper = _u(n, g) < 0.5
        th = math.pi * _u(n, g)
        x = torch.stack([torch.cos(th), torch.sin(th)], 1)
        x = torch.where(upper[:, None], x, torch.stack([1 - x[:, 0], 0.5 - x[:, 1]], 1))
        x = x + 0.05 * _z(n, g)
    elif name == "swiss_roll":
        t = 1.5 * math.pi * (1 + 2 * _u(n, g))
        x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 5 + 0.1 * _z(n, g)
    elif name == "8gaussians":
        k = randint(8, (n,), g, "cpu")
        ang = 2 * math.pi * k.double() / 8
        x = 2 * torch.stack([torch.cos(ang), torch.sin(ang)], 1) + 0.2 * _z(n, g)
    elif name == "checkerboard":
        x1 = 4 * _u(n, g) - 2
        x2 = _u(n, g) - 2 * randint(2, (n,), g, "cpu").double()
        x = torch.stack([x1, x2 + torch.floor(x1) % 2], 1) * 2
    elif name == "rings":
        r = 0.5 * (1 + randint(4, (n,), g, "cpu").double())
        ang = 2 * math.pi * _u(n, g)
        x = r[:, None] * torch.stack([torch.cos(ang), torch.sin(ang)], 1) + 0.04 * _z(n, g)
    elif name == "spirals":
        r = torch.sqrt(_u(n, g)) * 3 * math.pi
        sign = torch.where(_u(n, g) < 0.5, -1.0, 1.0).double()
        x = sign[:, None] * torch.stack([-torch.cos(r) * r, torch.sin(r) * r], 1)
        x = (x + 0.5 * _u(2 * n, g).reshape(n, 2)) / 3
    else:  # pinwheel: 5 arms, radial std 0.3, tangential std 0.1, rate 0.25
        k = randint(5, (n,), g, "cpu")
        f = _z(n, g) * torch.tensor([0.3, 0.1], dtype=torch.float64) + torch.tensor([1.0, 0.0])
        ang = 2 * math.pi * k.double() / 5 + 0.25 * torch.exp(f[:, 0])
        c, s = torch.cos(ang), torch.sin(ang)
        x = 2 * torch.stack([c * f[:, 0] - s * f[:, 1], s * f[:, 0] + c * f[:, 1]], 1)
    return x.float()


SPLITS = ("all", "train", "test")
MAX_IMAGE_SIDE = 1024  # pixels; larger images are refused rather than resized for hours


def digits(split: str = "all") -> tuple[Tensor, Tensor]:
    """sklearn's 1797 8×8 digits as ``(images (N, 1, 8, 8) in [0, 16], labels (N,))``: all of
    them, or the ``"train"`` (1257) / ``"test"`` (540) part of the split that the real-data
    benchmark and its reference rows use, ``train_test_split(test_size=0.3,
    random_state=0, stratify=labels)``."""
    check_choice("split", split, SPLITS)
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ValueError("data 'digits' needs scikit-learn: pip install 'scorekit[data]'") from None
    d = load_digits()
    x, y = d.images, d.target
    if split != "all":
        parts = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
        x, y = (parts[0], parts[2]) if split == "train" else (parts[1], parts[3])
    return torch.tensor(x, dtype=torch.float32).unsqueeze(1), torch.tensor(y, dtype=torch.long)


def _numeric(arr: np.ndarray, path: Path) -> Tensor:
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"data file {path} holds dtype {arr.dtype}, expected numbers")
    if arr.ndim == 0 or arr.shape[0] == 0 or arr.size == 0:
        raise ValueError(f"data file {path} holds no examples (shape {arr.shape})")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if x.dim() == 1:
        x = x[:, None]
    if not torch.isfinite(x).all():
        raise ValueError(f"data file {path} contains NaN or infinite values")
    return x


def _load_npz(path: Path, key: str | None) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        if key is None:
            if len(keys) != 1:
                raise ValueError(
                    f"data file {path} holds arrays {keys}; choose one with key (--key)"
                )
            key = keys[0]
        if key not in keys:
            raise ValueError(f"key {key!r} is not in {path}; it holds {keys}")
        return z[key]


def _load_csv(path: Path) -> np.ndarray:
    with open(path, newline="") as fh:
        rows = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    if rows and not _all_numbers(rows[0]):
        rows = rows[1:]  # a header row
    if not rows:
        raise ValueError(f"data file {path} holds no examples")
    width = len(rows[0])
    out = np.empty((len(rows), width), dtype=np.float64)
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"{path}: row {i + 1} has {len(row)} columns, expected {width}")
        for j, cell in enumerate(row):
            try:
                out[i, j] = float(cell)
            except ValueError:
                raise ValueError(
                    f"{path}: non-numeric cell {cell!r} at data row {i + 1}, column {j + 1}"
                ) from None
    return out


def _all_numbers(row: list[str]) -> bool:
    try:
        [float(c) for c in row]
    except ValueError:
        return False
    return True


def _load_images(folder: Path, image_size: int | None) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise ValueError("image folders need Pillow: pip install 'scorekit[data]'") from None
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image folder {folder} holds no .png/.jpg/.jpeg files")
    images = []
    for p in files:
        try:
            with Image.open(p) as im:
                im.load()
                images.append(im.copy())
        except Exception as e:  # noqa: BLE001 -- Pillow raises OSError, SyntaxError, ...
            raise ValueError(f"cannot read image {p}: {type(e).__name__}: {e}") from None
    grey = all(im.mode in ("1", "L", "LA", "I", "I;16", "F") for im in images)
    mode = "L" if grey else "RGB"
    if image_size is None:
        sizes = {im.size for im in images}
        if len(sizes) > 1:
            ex = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:3])
            raise ValueError(
                f"images in {folder} have mixed sizes ({ex}); choose one with --image-size"
            )
    arrs = []
    for im in images:
        im = im.convert(mode)
        if image_size is not None and im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
        a = np.asarray(im, dtype=np.float32)
        arrs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return np.stack(arrs)


def load_file(path: str | Path, *, key: str | None = None, image_size: int | None = None) -> Tensor:
    r"""Load a user data set in its raw scale: shape ``(N, *D)``, float32.

    ``.npy`` / ``.npz`` (``allow_pickle=False``), ``.csv`` (numbers, optional header) or a
    folder of PNG / JPEG images (shape ``(N, C, H, W)``, pixel values 0..255; ``image_size``
    resizes every image to a square side).
    """
    if not str(path).strip():
        raise ValueError(f"data must name a toy ({', '.join(TOYS)}), 'digits' or a file; got ''")
    path = Path(path)
    if not path.exists():
        raise ValueError(
            f"data file not found: {str(path)!r} (the named data sets: {', '.join(TOYS)}, digits)"
        )
    if image_size is not None:
        image_size = check_int("image_size", image_size)
        if image_size > MAX_IMAGE_SIDE:
            raise ValueError(
                f"image_size must be at most {MAX_IMAGE_SIDE} pixels a side, got {image_size}"
            )
    if path.is_dir():
        if key is not None:
            raise ValueError(f"key (--key) names an array inside an .npz file; {path} is a folder")
        return _numeric(_load_images(path, image_size), path)
    suffix = path.suffix.lower()
    if image_size is not None:
        raise ValueError(
            f"image_size (--image-size) resizes a folder of images; {path} is a {suffix} file"
        )
    if key is not None and suffix != ".npz":
        raise ValueError(f"key (--key) names an array inside an .npz file; {path} is {suffix}")
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            arr = _load_npz(path, key)
        elif suffix == ".csv":
            arr = _load_csv(path)
        else:
            raise ValueError(
                f"data file {path} has unknown type {suffix!r}; expected .npy, .npz, .csv "
                "or a folder of images"
            )
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read data file {path}: {e}") from None
    except ValueError as e:
        if "Object arrays" in str(e):
            raise ValueError(
                f"data file {path} holds Python objects (dtype=object); refusing to unpickle"
            ) from None
        if "pickle" in str(e):
            raise ValueError(
                f"data file {path} is not a valid .npy/.npz file (pickles are never loaded)"
            ) from None
        if str(path) in str(e):
            raise
        raise ValueError(f"cannot read data file {path}: {e}") from None
    except Exception as e:  # noqa: BLE001 -- a damaged file may fail anywhere in the parser
        raise ValueError(f"cannot read data file {path}: {type(e).__name__}: {e}") from None
    return _numeric(arr, path)


def load_data(
    spec: str | Path,
    *,
    n: int = 10_000,
    generator: torch.Generator | None = None,
    normalize: str = "auto",
    normalizer: Normalizer | None = None,
    key: str | None = None,
    image_size: int | None = None,
    split: str = "all",
) -> Dataset:
    r"""Load a data set by name (a toy of :data:`TOYS`, ``"digits"``) or path, normalised.

    Arguments:
        spec: toy name, ``"digits"`` or a path (see :func:`load_file`).
        n: number of toy points to draw (toys only).
        generator: randomness of the toys.
        normalize: ``"auto"`` (per-feature standardisation for toys and tables, the fixed
            map to [-1, 1] for images and digits), ``"standard"``, ``"minmax"``, ``"none"``.
        normalizer: use this map instead of fitting one (e.g. the one in a checkpoint).
        split: for ``"digits"``, ``"all"`` (default) or the ``"train"`` / ``"test"`` part of
            the reference split (:func:`digits`); toys and files have no split.

    Returns:
        A :class:`Dataset` with ``x`` of shape ``(N, *D)`` in model space.
    """
    check_choice("normalize", normalize, NORMALIZE)
    check_generator("generator", generator)
    labels, name = None, str(spec)
    images = False
    if name in TOYS:
        raw = toy_2d(name, n, generator)
    elif name == "digits":
        raw, labels = digits(split)
        images = "digits"
    else:
        raw = load_file(spec, key=key, image_size=image_size)
        images = Path(spec).is_dir()
    if normalizer is None:
        if normalize == "auto" and images:
            half = 8.0 if images == "digits" else 127.5
            normalizer = Normalizer(half, half)
        else:
            normalizer = Normalizer.fit(raw, "standard" if normalize == "auto" else normalize)
    x = normalizer.encode(raw.double()).float()
    return Dataset(x=x, normalizer=normalizer, name=name, labels=labels)
