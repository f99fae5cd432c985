"""What checking artifacts against their seals costs (`calib-assets verify`, and every reuse of an artifact):
bytes hashed and seconds, per asset, over a study's artifacts under a root.

    .venv/bin/python benchmarks/verify.py [--study default] [--root artifacts] [--repeats 3]

Every reuse checks the sizes of an artifact's files and hashes them (sha256), so a run that reuses
everything pays about this once per artifact, plus the upstream reads that check again. Figures:
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calib_assets.artifacts import CONTENTS_FILE, read_json, verify_contents  # noqa: E402
from calib_assets.steps import study_artifacts  # noqa: E402
from calib_assets.study import load_study  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="default")
    parser.add_argument("--root", default="artifacts", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    study = load_study(args.study)
    sealed = [(asset, directory) for asset, _, directory in study_artifacts(study, args.root.resolve())
              if (directory / CONTENTS_FILE).is_file()]
    if not sealed:
        parser.error(f"no sealed artifact of study {args.study!r} under {args.root}: run the study first")
    sizes: defaultdict[str, int] = defaultdict(int)
    seconds: defaultdict[str, list[float]] = defaultdict(list)
    for asset, directory in sealed:
        sizes[asset] += sum(f["bytes"] for f in read_json(directory / CONTENTS_FILE)["files"].values())
    for _ in range(args.repeats):
        totals: defaultdict[str, float] = defaultdict(float)
        for asset, directory in sealed:
            started = time.perf_counter()
            problems = verify_contents(directory)
            totals[asset] += time.perf_counter() - started
            if problems:
                print(f"{asset}: {problems}")
        for asset, value in totals.items():
            seconds[asset].append(value)
    print(f"{'asset':<22} {'artifacts':>9} {'MB':>9} {'median s':>9} {'MB/s':>8}")
    count: defaultdict[str, int] = defaultdict(int)
    for asset, _ in sealed:
        count[asset] += 1
    for asset in count:
        median = statistics.median(seconds[asset])
        mb = sizes[asset] / 2**20
        print(f"{asset:<22} {count[asset]:>9} {mb:>9.1f} {median:>9.3f} {mb / median if median else 0:>8.0f}")
    total = sum(statistics.median(v) for v in seconds.values())
    print(f"{'all':<22} {len(sealed):>9} {sum(sizes.values()) / 2**20:>9.1f} {total:>9.3f}")


if __name__ == "__main__":
    main()
