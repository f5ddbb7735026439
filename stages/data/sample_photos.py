"""The ``sample_photos`` source: color photos that installed packages ship.

scikit-learn ships two (china, flower), matplotlib one (grace_hopper), and
scikit-image, when installed, five more. Without labels, for calibration and
for comparing float and int8 outputs. The split is by photo, so no photo
gives crops to both sides; ``test_size`` counts photos. Each photo is resized
so its shorter side is ``resize`` (default ``image_size``), then
``crops_per_image`` random crops of ``image_size`` are taken, scaled to
[0, 1] and normalized by ``mean`` and ``std``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import StageError
from stages.data.dataset import Dataset, normalize
from stages.data.spec import DatasetSpec
from stages.data.split import CROP_STREAM, limit_indices, rng_for, split_indices

if TYPE_CHECKING:
    from PIL import Image as PILImage

# (package, folder inside the package, photo files). Only natural color
# photos; drawings, microscopy and gray images are left out.
PHOTO_SOURCES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("sklearn", "datasets/images", ("china.jpg", "flower.jpg")),
    ("matplotlib", "mpl-data/sample_data", ("grace_hopper.jpg",)),
    ("skimage", "data", ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")),
)


def photo_files() -> list[Path]:
    """Return the photos found in the installed packages, in a fixed order.

    Packages are located without importing them, so listing the files for a
    cache key stays cheap.
    """
    found = []
    for package, folder, names in PHOTO_SOURCES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        base = Path(next(iter(spec.submodule_search_locations))) / folder
        found.extend(base / name for name in names if (base / name).is_file())
    return found


def load(spec: DatasetSpec) -> Dataset:
    import numpy as np
    from PIL import Image

    if spec.image_size is None:
        raise StageError(f"data set '{spec.name}': image_size is missing; set the side of each crop")
    resize = spec.resize or spec.image_size
    if resize < spec.image_size:
        raise StageError(
            f"data set '{spec.name}': resize {resize} is smaller than image_size {spec.image_size}; "
            f"the shorter side must be at least the crop size"
        )

    photos = photo_files()
    if len(photos) < 2 and spec.split != "all":
        raise StageError(
            f"data set '{spec.name}': found {len(photos)} sample photos, too few to split by photo; "
            f"use split: all or install scikit-image for more photos"
        )
    if not photos:
        raise StageError(f"data set '{spec.name}': no sample photos found; install scikit-learn or matplotlib")
    chosen = split_indices(len(photos), None, spec.split, spec.test_size, spec.seed, spec.name)

    rng = rng_for(spec.seed, CROP_STREAM)
    crops = []
    for index in chosen:
        with Image.open(photos[index]) as opened:
            image = _resize_shorter_side(opened.convert("RGB"), resize)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        height, width = pixels.shape[:2]
        for _ in range(spec.crops_per_image):
            top = int(rng.integers(0, height - spec.image_size + 1))
            left = int(rng.integers(0, width - spec.image_size + 1))
            crop = pixels[top : top + spec.image_size, left : left + spec.image_size]
            crops.append(crop.transpose(2, 0, 1))

    inputs = np.stack(crops)
    inputs = inputs[limit_indices(np.arange(len(inputs)), spec.limit, spec.seed)]
    inputs = normalize(inputs, spec.mean, spec.std, spec.name)
    return Dataset(spec.name, np.ascontiguousarray(inputs), None, spec.batch_size)


def _resize_shorter_side(image: PILImage.Image, size: int) -> PILImage.Image:
    from PIL import Image

    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    return image.resize(new_size, Image.Resampling.BILINEAR)
