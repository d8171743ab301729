"""Image files named on a command line: files, and the images directly in folders."""
from __future__ import annotations

from pathlib import Path

from pisa_train.errors import DataError
from pisa_train.files import IMAGE_EXTENSIONS


def find_images(inputs) -> list[Path]:
    """Image files named on the command line, and the images in the folders named there
    (not recursive), in order; a DataError for a path that does not exist or holds no image."""
    images: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not found:
                raise DataError(f"folder {item} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                                f"give image files or a folder of images")
            images.extend(found)
        elif item.is_file():
            images.append(item)
        else:
            raise DataError(f"image or folder {item} not found; give image files or folders of images")
    return images
