"""One image of a dataset, before it is written in the prepared MVTec AD layout."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from PIL import Image

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """An image (and its defect mask) from any source, loaded lazily.

    `name` is a file stem unique within (split, defect_type); `origin` names the file (or generator call)
    it came from, for error messages. A normal image has defect_type "good" and no mask. `part` names the
    physical part it shows where the source knows it (several photographs of one part share it), so that
    `data.split_by: part` keeps a part's images on one side of every split; None: the image is its own part.
    """

    name: str
    split: Literal["train", "test"]
    defect_type: str
    load_image: Callable[[], Image.Image]
    load_mask: Callable[[], Image.Image] | None
    origin: str
    part: str | None = None

    @property
    def is_normal(self) -> bool:
        return self.defect_type == GOOD
