#!/usr/bin/env python
"""Draw the Predict page's sample films at random from the official test split (issue 22).

    python tools/draw_samples.py --data-root ../shared/data/chest_xray            # draw and write
    python tools/draw_samples.py --data-root ../shared/data/chest_xray --check    # verify only

Procedure (also in samples/README.md): the image files of ``test/NORMAL`` and
``test/PNEUMONIA`` are each sorted by name; ``random.Random(SEED)`` draws ``PER_CLASS`` files
from NORMAL with ``sample()``, then, from the same generator, ``PER_CLASS`` from PNEUMONIA; the
same generator then shuffles the 2 x PER_CLASS films into the picker's order (its first film is
the picker's default). Nothing about the model enters the draw: no film is picked, kept or
dropped by its outcome, and the seed was fixed before the draw and never changed. Files are
copied byte for byte (the dataset's stored JPEGs) to ``samples/test_draw/<CLASS>/`` and listed,
in picker order with their SHA-256, in ``samples/test_draw/draw.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "samples" / "test_draw"
SEED = 22  # the number, fixed before the draw
PER_CLASS = 12
CLASSES = ("NORMAL", "PNEUMONIA")
SUFFIXES = {".jpeg", ".jpg", ".png"}


def draw(data_root: Path, seed: int = SEED, per_class: int = PER_CLASS) -> list[dict]:
    """[{file, label, source}] in picker order (see the module docstring)."""
    rng = random.Random(seed)
    picked = []
    for cls in CLASSES:
        files = sorted(p.name for p in (data_root / "test" / cls).iterdir() if p.suffix.lower() in SUFFIXES)
        picked += [{"file": f"{cls}/{name}", "label": cls, "source": f"test/{cls}/{name}"}
                   for name in rng.sample(files, per_class)]
    rng.shuffle(picked)
    return picked


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", type=Path, required=True, help="the dataset (with test/NORMAL, test/PNEUMONIA)")
    ap.add_argument("--check", action="store_true", help="only verify that samples/test_draw is this draw")
    args = ap.parse_args(argv)
    films = draw(args.data_root)
    for f in films:
        f["sha256"] = hashlib.sha256((args.data_root / f["source"]).read_bytes()).hexdigest()
    manifest = {
        "seed": SEED, "per_class": PER_CLASS, "split": "test",
        "procedure": "tools/draw_samples.py: per class, random.Random(seed).sample(sorted file names, per_class) "
                     "(NORMAL first, then PNEUMONIA, one generator), then the same generator's shuffle() gives the "
                     "picker's order; files copied byte for byte",
        "source": "Kermany, Zhang & Goldbaum (2018), Mendeley Data v2, doi:10.17632/rscbjbr9sj.2, CC BY 4.0",
        "films": films,
    }
    if args.check:
        have = json.loads((OUT / "draw.json").read_text())
        same = have["films"] == films and all(
            hashlib.sha256((OUT / f["file"]).read_bytes()).hexdigest() == f["sha256"] for f in films)
        print("samples/test_draw matches the draw" if same else "samples/test_draw differs from the draw")
        return 0 if same else 1
    for cls in CLASSES:
        (OUT / cls).mkdir(parents=True, exist_ok=True)
    for f in films:
        shutil.copyfile(args.data_root / f["source"], OUT / f["file"])
    (OUT / "draw.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(films)} films written to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
