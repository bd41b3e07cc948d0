"""Score a folder of chips with a bundle: one row per chip (csv or parquet), and a report where folders name classes.

Chips are found recursively (.png, .jpg, .jpeg, .tif, .tiff; sorted by relative path), decoded by a few threads
while the runtime scores the previous batch, and streamed: only the result table grows with the folder. A chip
that cannot be read, or whose shape or dtype differs from the first readable chip, is skipped and named. A chip
whose parent folder is named after one of the bundle's classes (its name or folder slug, any case; e.g.
``<images>/forest/x.tif`` or ``<images>/train/Forest/x.tif``) has that class as its truth: those chips are also
scored, into ``<out stem>-eval/`` beside the output.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from landcover.atomic import replacing, temp_path
from landcover.datasets.chips import read_chip
from landcover.errors import LandcoverError
from landcover.evaluate import Report, evaluate_predictions, write_report
from landcover.geo.raster import georeferencing_optional
from landcover.predict.runtime import Runtime, open_runtime
from landcover.progress import ProgressBar, progress_bar

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
OUTPUT_SUFFIXES = (".csv", ".parquet")
WARN_LIMIT = 20
"""Skipped chips named one warning line each; the rest are counted in one line."""


@dataclass
class FolderResult:
    """What `predict_folder` did: counts, skipped chips and why, the files written and the evaluation."""

    images: Path
    out: Path
    runtime: str
    predicted: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(file relative to the images folder, reason) for every chip not predicted."""
    scored: int = 0
    """Predicted chips whose folder names a class, so that were evaluated."""
    report: Report | None = None
    report_dir: Path | None = None
    seconds: float = 0.0

    @property
    def n_skipped(self) -> int:
        """How many chips were skipped."""
        return len(self.skipped)

    @property
    def unscored(self) -> int:
        """Predicted chips outside class folders (predicted, not evaluated)."""
        return self.predicted - self.scored

    def summary(self) -> str:
        """A few lines for a person: what was predicted, skipped, written and scored."""
        rate = self.predicted / self.seconds if self.seconds > 0 else float("nan")
        lines = [f"{self.predicted} chips predicted with {self.runtime} in {self.seconds:.1f} s "
                 f"({rate:.0f} chips/s): {self.out}"]
        if self.skipped:
            reasons: dict[str, int] = {}
            for _, reason in self.skipped:
                kind = reason.split(" (")[0].split(":")[0]
                reasons[kind] = reasons.get(kind, 0) + 1
            lines.append(f"{self.n_skipped} skipped: " + ", ".join(f"{n} {k}" for k, n in sorted(reasons.items())))
        if self.report is not None:
            r = self.report
            lines.append(f"{self.scored} chips in class folders evaluated: accuracy {r.accuracy:.3f}, "
                         f"macro F1 {r.macro['f1']:.3f}, kappa {r.kappa:.3f}: {self.report_dir}")
            if self.unscored:
                lines.append(f"{self.unscored} chips outside class folders were predicted but not scored")
        return "\n".join(lines)


def predict_folder(bundle_path: str | Path, images: str | Path, out: str | Path, runtime: str = "auto",
                   batch_size: int = 64, overwrite: bool = False, progress: bool = True,
                   workers: int = 2) -> FolderResult:
    """Predict every chip (PNG/JPG/GeoTIFF) under a folder into a .csv or .parquet table (file, class, confidence,
    p_<class>); chips in class folders named after the bundle's classes are also evaluated (<out>-eval/).
    `runtime` as in `predict_raster` ('auto' by default).
    Unreadable or odd-sized chips are skipped and named.

        result = predict_folder("runs/lite0-lr/bundle", "chips/", "predictions.csv")
    """
    start = time.perf_counter()
    images, out = Path(images), Path(out)
    if batch_size < 1 or workers < 1:
        raise LandcoverError(f"batch_size and workers must be at least 1, got {batch_size} and {workers}")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise LandcoverError("the output must end in .csv or .parquet", out)
    eval_dir = out.with_name(f"{out.stem}-eval")
    if out.exists() and not overwrite:
        raise LandcoverError("the output exists (pass overwrite to replace it)", out)
    if not images.is_dir():
        raise LandcoverError("not a folder of chips", images)
    files = find_chips(images)
    if not files:
        raise LandcoverError(f"no chips ({', '.join(IMAGE_SUFFIXES)}) under the folder", images)
    rt = open_runtime(bundle_path, runtime)
    bundle = rt.bundle
    bundle.require_classifier("prediction")
    names = [c["name"] for c in bundle.classes]
    truth_of = _class_folders(names)
    truths = {rel: truth_of.get(Path(rel).parent.name.lower()) for rel in files}
    if any(t is not None for t in truths.values()) and eval_dir.exists() and not overwrite:
        raise LandcoverError("the evaluation folder exists (pass overwrite to replace it)", eval_dir)

    done, table_probs, skipped = _score_chips(rt, images, files, batch_size, workers, progress)
    _write_table(_table(done, table_probs, names), out)
    result = FolderResult(images, out, rt.name, len(done), skipped)
    truth = np.array([-1 if truths[rel] is None else truths[rel] for rel in done])
    scored = truth >= 0
    if scored.any():
        result.scored = int(scored.sum())
        result.report = evaluate_predictions(truth[scored], table_probs[scored], names,
                                             chip_ids=[rel for rel, s in zip(done, scored, strict=True) if s])
        result.report_dir = _write_report_dir(result.report, eval_dir, _title(Path(bundle_path), images))
        if result.unscored:
            folders = sorted({str(Path(rel).parent) for rel, s in zip(done, scored, strict=True) if not s})
            shown = ", ".join(folders[:5]) + (f" and {len(folders) - 5} more" if len(folders) > 5 else "")
            log.warning("%s: %d chips in folders not named after a class (%s): predicted, not scored", images,
                        result.unscored, shown)
    elif (eval_dir / "report.json").is_file():  # an older run's report would pass for this one's
        shutil.rmtree(eval_dir)
    result.seconds = time.perf_counter() - start
    return result


def find_chips(images: Path) -> list[str]:
    """Chip files under a folder, as sorted POSIX paths relative to it (hidden files and folders left out). A
    landcover chip dataset (a folder with manifest.parquet) is read as its manifest lists it, so its figures are
    never taken for chips; one whose chips are members of shards is refused."""
    if (images / "manifest.parquet").is_file():
        from landcover.datasets.chips import in_shards
        from landcover.manifest import read_manifest

        frame, _ = read_manifest(images / "manifest.parquet")
        if in_shards(frame):
            raise LandcoverError("is a landcover chip dataset whose chips are members of shards, not image files: "
                                 "score it with `landcover evaluate BUNDLE --manifest DIR --split SPLIT`", images)
        return sorted(str(p) for p in frame["path"])
    found = []
    for path in images.rglob("*"):
        rel = path.relative_to(images)
        if path.suffix.lower() in IMAGE_SUFFIXES and not any(p.startswith(".") for p in rel.parts) \
                and path.is_file():
            found.append(rel.as_posix())
    return sorted(found)


def _score_chips(rt: Runtime, images: Path, files: list[str], batch_size: int, workers: int,
                 progress: bool) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """Stream the chips through the runtime: (predicted files, their probabilities, skipped files and why)."""
    need = max(rt.bundle.input.bands) + 1
    done: list[str] = []
    probs: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    reference: tuple | None = None
    batch: list[np.ndarray] = []
    batch_files: list[str] = []
    bar = progress_bar(total=len(files), desc="predict", unit="chip", enabled=progress, leave=False)

    def flush() -> None:
        if batch:
            raw = torch.from_numpy(np.stack(batch).astype(np.float32, copy=False))
            probs.append(np.asarray(rt.predict_proba(raw), dtype=np.float32))
            done.extend(batch_files)
            bar.update(len(batch))
            batch.clear()
            batch_files.clear()

    try:
        with georeferencing_optional():  # once here: the reading threads' own filters could let it through
            for rel, chip in _read_ahead(images, files, workers, depth=2 * batch_size):
                if isinstance(chip, str):
                    _skip(skipped, rel, chip, bar)
                    continue
                if reference is None:
                    if chip.shape[0] < need:
                        raise LandcoverError(f"the bundle reads {need} bands but the chips have {chip.shape[0]}",
                                             images / rel)
                    reference = (chip.shape, chip.dtype)
                elif (chip.shape, chip.dtype) != reference:
                    _skip(skipped, rel, f"other shape: {_describe(chip.shape, chip.dtype)}, the first chip is "
                                        f"{_describe(*reference)}", bar)
                    continue
                batch.append(chip)
                batch_files.append(rel)
                if len(batch) == batch_size:
                    flush()
            flush()
    finally:
        bar.close()
    if len(skipped) > WARN_LIMIT:
        log.warning("%s: %d more chips skipped (%d in all; FolderResult.skipped names them)", images,
                    len(skipped) - WARN_LIMIT, len(skipped))
    if not done:
        raise LandcoverError(f"no chip could be read ({len(skipped)} skipped; first: {skipped[0][0]}: "
                             f"{skipped[0][1]})", images)
    return done, np.concatenate(probs), skipped


def _class_folders(names: list[str]) -> dict[str, int]:
    """Folder name (lower case) to class id: each class's name and its slug (`LandClass.slug`)."""
    lookup = {}
    for class_id, name in enumerate(names):
        lookup[name.lower()] = class_id
        lookup[re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")] = class_id
    return lookup


def _read_ahead(root: Path, files: Iterable[str], workers: int, depth: int) -> Iterator[tuple[str, np.ndarray | str]]:
    """(file, pixels) in order, decoded by `workers` threads at most `depth` chips ahead; a reason for failures."""
    pending: deque[tuple[str, Future]] = deque()
    remaining = iter(files)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read-chip") as pool:
        for rel in remaining:
            pending.append((rel, pool.submit(_read, root / rel)))
            if len(pending) >= depth:
                break
        while pending:
            rel, future = pending.popleft()
            nxt = next(remaining, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_read, root / nxt)))
            yield rel, future.result()


def _read(path: Path) -> np.ndarray | str:
    """A chip's pixels, or why it cannot be read (any decoder error: a bad file must not stop the folder)."""
    try:
        chip = read_chip(path)
    except LandcoverError as exc:
        return f"unreadable: {str(exc).removeprefix(f'{path}: ')}"
    except Exception as exc:  # decoders raise many types (SyntaxError, ValueError, ...) for corrupt files
        return f"unreadable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if chip.ndim != 3 or 0 in chip.shape:
        return f"unreadable: pixels of shape {chip.shape}"
    return chip


def _skip(skipped: list[tuple[str, str]], rel: str, reason: str, bar: ProgressBar) -> None:
    """Record a skipped chip; warn by name for the first WARN_LIMIT."""
    skipped.append((rel, reason))
    bar.update(1)
    if len(skipped) <= WARN_LIMIT:
        log.warning("skipped %s: %s", rel, reason)


def _describe(shape: tuple, dtype: np.dtype) -> str:
    """'4x32x32 uint16': bands x height x width and dtype."""
    return f"{'x'.join(map(str, shape))} {dtype}"


def _table(files: list[str], probs: np.ndarray, names: list[str]) -> pd.DataFrame:
    """One row per chip: file, class, class_id, confidence, p_<class> for each class."""
    class_id = probs.argmax(axis=1)
    frame = pd.DataFrame({
        "file": files,
        "class": pd.Series(np.asarray(names, dtype=object)[class_id], dtype="string"),
        "class_id": class_id.astype(np.int64),
        "confidence": probs[np.arange(len(probs)), class_id],
    })
    columns = pd.DataFrame(probs, columns=[f"p_{n}" for n in names])
    return pd.concat([frame, columns], axis=1)


def _write_table(frame: pd.DataFrame, out: Path) -> None:
    """Write the table as csv or parquet (by suffix), atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as tmp:
        if out.suffix.lower() == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)


def _title(bundle_path: Path, images: Path) -> str:
    """'<run> on <folder>': the bundle named by its run folder when it is the usual <run>/bundle."""
    bundle_path, images = bundle_path.resolve(), images.resolve()
    name = bundle_path.parent.name if bundle_path.name == "bundle" else bundle_path.name
    return f"{name} on {images.name}"


def _write_report_dir(report: Report, folder: Path, title: str) -> Path:
    """write_report into a temporary folder, then rename it into place (replacing an older one)."""
    tmp = temp_path(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    write_report(report, tmp, title=title)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder
