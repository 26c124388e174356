"""Reconstruction examples: per category the clearest detection, the worst miss and the worst false alarm.

Each picks an image from the evaluate stage's `scores.json` and shows its existing panel
`figures/<defect_type>_<image stem>.png` (input | ground truth | anomaly map | reconstruction).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diyt.errors import DiytError
from diyt.report.results import CategoryResults


@dataclass(frozen=True)
class Example:
    kind: str  # "best detection" | "worst miss" | "worst false alarm"
    image: str
    defect_type: str
    score: float
    flagged: bool  # score >= the validation threshold
    panel: Path

    def caption(self, threshold: float) -> str:
        verdict = "flagged anomalous" if self.flagged else "passed as normal"
        return (f"{self.kind}: {self.image} ({self.defect_type}), score {self.score:.4g} vs threshold "
                f"{threshold:.4g}, {verdict}")


# (kind, label, pick the highest score?)
KINDS = (("best detection", 1, True), ("worst miss", 1, False), ("worst false alarm", 0, True))


def panel_path(figures: Path, record: dict) -> Path:
    return Path(figures) / f"{record['defect_type']}_{Path(record['image']).stem}.png"


def pick_examples(result: CategoryResults) -> list[Example]:
    """Up to three examples (a kind is skipped when its label has no test image); ties go to the image path."""
    examples = []
    for kind, label, highest in KINDS:
        pool = sorted((s for s in result.scores if int(s["label"]) == label),
                      key=lambda s: (-s["score"] if highest else s["score"], s["image"]))
        if not pool:
            continue
        s = pool[0]
        panel = panel_path(result.figures, s)
        if not panel.is_file():
            raise DiytError(f"{panel}: missing; run the evaluate stage (dvc repro evaluate@{result.name}) "
                            f"or fetch its figures (dvc pull)")
        examples.append(Example(kind, s["image"], s["defect_type"], float(s["score"]),
                                float(s["score"]) >= result.threshold, panel))
    return examples
