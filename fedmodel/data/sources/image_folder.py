"""An image folder: one sub-folder per class, PNG or JPEG images inside.

The class ids are the positions of the sub-folder names in sorted order (as
torchvision's ``ImageFolder``; torchvision is not a dependency here). Every image is
converted to ``image-mode`` (``"L"``: 1 channel, ``"RGB"``: 3) and, when ``image-size``
is set, resized to it; otherwise all images must have the same size. Pixels are scaled
to [0, 1]; an example has shape ``(channels, height, width)``. Hidden files (names
starting with ".") are ignored. The public text of an error (:class:`DataError`) names
an image by its position (file ``n`` of class folder ``c``, in sorted order), not by the
folder and file names, which may name the records.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedmodel.data.sources.arrays import labelled_from_arrays
from fedmodel.data.sources.base import DataOptions, LabelledData
from fedmodel.data.sources.validation import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Modes of 8-bit channels, which convert to L or RGB without losing range. 16- and
# 32-bit modes (I;16, I, F) would be clipped to 0..255, silently corrupting the image.
CONVERTIBLE_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)


def load_image_folder(
    path: Path, *, options: DataOptions
) -> tuple[LabelledData, tuple[int, ...], tuple[str, ...]]:
    """Examples, their shape, and the class names (sorted sub-folder names)."""
    from PIL import Image, UnidentifiedImageError

    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    stray = [(n, p) for n, p in enumerate(entries) if not p.is_dir()]
    if stray:
        position, file = stray[0]
        raise DataError(
            f"{file}: an image folder holds only class sub-folders (one per class), not files",
            public=f"{path}: entry {position} (in sorted order) is a file; an image folder "
            "holds only class sub-folders (one per class), not files",
        )
    class_names = tuple(p.name for p in entries)
    if not class_names:
        raise DataError(f"{path}: the dataset is empty (no class sub-folders)")
    images: list[np.ndarray] = []
    labels: list[int] = []
    first_size: tuple[tuple[int, int], Path, str] | None = None
    for label, folder in enumerate(entries):
        files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        for position, file in enumerate(files):
            # Class folder and file names may name the records: the public text gives
            # the positions of both in sorted order instead.
            place = f"{path}: file {position} of class folder {label} (in sorted order)"
            if file.suffix.lower() not in IMAGE_SUFFIXES or not file.is_file():
                raise DataError(
                    f"{file}: not a PNG or JPEG image (unknown format)",
                    public=f"{place}: not a PNG or JPEG image (unknown format)",
                )
            try:
                with Image.open(file) as image:
                    image.load()
                    if image.mode not in CONVERTIBLE_MODES:
                        reason = (
                            f"image mode {image.mode!r} cannot be converted to "
                            f"{options.image_mode!r} without losing values (expected 8-bit "
                            "channels: L, RGB, RGBA, P, ...)"
                        )
                        raise DataError(f"{file}: {reason}", public=f"{place}: {reason}")
                    converted = image.convert(options.image_mode)
            except (UnidentifiedImageError, OSError, ValueError) as error:
                if isinstance(error, DataError):
                    raise
                raise DataError(
                    f"{file}: unreadable image: {error}",
                    public=f"{place}: unreadable image: {type(error).__name__}",
                ) from error
            if options.image_size is not None:
                converted = converted.resize(options.image_size)
            elif first_size is None:
                first_size = (converted.size, file, f"file {position} of class folder {label}")
            elif converted.size != first_size[0]:
                (width, height), other, other_place = first_size
                size = f"{converted.size[0]}x{converted.size[1]}"
                advice = (
                    f"set run-config 'image-size' (e.g. \"{width}x{height}\") to resize all images"
                )
                raise DataError(
                    f"{file}: image is {size} but {other} is {width}x{height}; {advice}",
                    public=f"{place}: image is {size} but {other_place} is {width}x{height}; "
                    f"{advice}",
                )
            pixels = np.asarray(converted, dtype=np.uint8)
            images.append(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DataError(f"{path}: the dataset is empty (no images in {len(entries)} class folders)")
    if options.num_classes and len(class_names) > options.num_classes:
        raise DataError(
            f"{path}: {len(class_names)} class folders but run-config num-classes = "
            f"{options.num_classes}"
        )
    x = np.stack(images).astype(np.float32) / np.float32(255.0)
    data, shape = labelled_from_arrays(
        x, np.asarray(labels, dtype=np.int64), origin=str(path), num_classes=options.num_classes
    )
    return data, shape, class_names
