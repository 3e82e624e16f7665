"""What a written figure must look like."""

from pathlib import Path

import numpy as np
from PIL import Image


def assert_plot(path: Path, size: tuple[int, int]) -> None:
    """A real figure: the expected size in pixels, and not one flat colour."""
    with Image.open(path) as image:
        assert image.size == size
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 5 and (pixels < 128).mean() > 0.005
