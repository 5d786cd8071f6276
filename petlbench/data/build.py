"""Which build of VTAB-1k a task folder holds, told from what is on disk, with the evidence in a short reason.

Why it matters: the builds differ by more than most methods do (PETL_Vision's LoRA on CIFAR-100: 70.2 on NOAH's
JPEGs, 85.3 on clean images), so a run is compared only with published numbers of its build.

- `noah-jpeg`: NOAH's `get_vtab1k.py` extraction (TFDS images saved as JPEG, lists `train800.txt`, `val200.txt`,
  `train800val200.txt`, `test.txt`) and its mirrors (`XiN0919/VTAB-1k`, which `data download` fetches): the four
  lists, and every sampled image's bytes are a JPEG that decodes. The build's format is what is told, not where the
  pictures come from: the demo's synthetic tasks, written the same way, are a noah-jpeg build too.
- `tfds-png`: the lossless build `petlbench data build vtab1k --from tfds` writes: the same layout with PNGs and a
  manifest `petlbench_build.json` holding the sha256 of each list. Needs the manifest, every list matching its
  hash, and every sampled image a PNG that decodes.
- `unknown`: anything else (PNGs without a manifest, a manifest the lists no longer match, mixed formats, a
  layout other than NOAH's), the reason saying why.

Cheap enough for every run: the four lists are read and hashed, the first and last image of each opened and decoded; the
verdict is kept per process for that content of the lists and manifest and that size and mtime of the samples.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from petlbench.data.decode import open_image
from petlbench.data.layouts import absolute, inside
from petlbench.errors import UserError

BUILDS = ("noah-jpeg", "tfds-png", "unknown")
NOAH_LISTS = ("train800.txt", "val200.txt", "train800val200.txt", "test.txt")
MANIFEST = "petlbench_build.json"
MAGIC = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n"}
_SEEN: dict[tuple, "Build"] = {}


@dataclass(frozen=True)
class Build:
    name: str  # one of BUILDS
    reason: str  # the evidence, one short line

    def as_record(self) -> dict[str, str]:
        """The record's `data.build` and `data.build_reason`."""
        return {"build": self.name, "build_reason": self.reason}


def unknown(reason: str) -> Build:
    return Build("unknown", reason)


def identify(task_dir: Path, layout: str = "noah") -> Build:
    """The build of one task folder; never raises (what cannot be read is an `unknown` with the reason)."""
    if layout != "noah":
        return unknown(f"{layout} layout: builds are told apart for VTAB-1k's NOAH layout only")
    if not Path(task_dir).is_dir():
        return unknown("task folder not found")
    lists, missing = {}, []
    for name in NOAH_LISTS:
        try:
            lists[name] = (Path(task_dir) / name).read_bytes()
        except OSError:
            missing.append(name)
    if missing:
        return unknown(f"no {', '.join(missing)}: not NOAH's layout")
    try:
        manifest = (Path(task_dir) / MANIFEST).read_bytes()
    except OSError:
        manifest = None
    try:
        sample = sampled(task_dir, lists)
    except UserError as exc:
        return unknown(str(exc))
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in lists.items()}
    key = (str(absolute(task_dir)), tuple(hashes.values()), manifest, tuple(stamp(p) for _, p in sample))
    if key not in _SEEN:
        _SEEN[key] = judge(hashes, manifest, sample)
    return _SEEN[key]


def sampled(task_dir: Path, lists: dict[str, bytes]) -> list[tuple[str, Path]]:
    """(path as listed, path) of the first and last image of each list, each once."""
    chosen = {}
    for name, data in lists.items():
        try:
            lines = [line for line in data.decode("utf-8-sig").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise UserError(f"{name} is not UTF-8 text") from None
        if not lines:
            raise UserError(f"{name} lists no images")
        for line in dict.fromkeys((lines[0], lines[-1])):
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2:
                raise UserError(f"{name}: {line!r} is not '<image path> <label>'")
            chosen.setdefault(parts[0], inside(task_dir, task_dir, parts[0], name))
    return list(chosen.items())


def stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def image_format(path: Path) -> str:
    """JPEG or PNG when the file's magic bytes say so and PIL decodes it as that; else what is wrong."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    magic = next((fmt for fmt, m in MAGIC.items() if head.startswith(m)), None)
    try:
        decoded = open_image(path).format
        decoded = "JPEG" if decoded == "MPO" else decoded  # PIL's name for a JPEG carrying several pictures
    except UserError as exc:
        return f"does not decode ({str(exc).removeprefix(f'{path}: ')})"
    if magic is None or decoded != magic:
        return f"neither JPEG nor PNG by its bytes (PIL reads {decoded})" if magic is None else \
            f"{magic} bytes that PIL reads as {decoded}"
    return magic


def judge(hashes: dict[str, str], manifest: bytes | None, sample: list[tuple[str, Path]]) -> Build:
    formats = {}
    for rel, path in sample:
        fmt = image_format(path)
        if fmt not in MAGIC:
            return unknown(f"sampled image {rel}: {fmt}")
        formats.setdefault(fmt, []).append(rel)
    seen = f"the {len(sample)} sampled images (first and last of each list)"
    if len(formats) > 1:
        return unknown("mixed formats among the sampled images: " +
                       ", ".join(f"{len(rels)} {fmt} (e.g. {rels[0]})" for fmt, rels in formats.items()))
    fmt = next(iter(formats))
    if manifest is not None:
        problem, tfds = manifest_problem(manifest, hashes)
        if problem:
            return unknown(f"{MANIFEST}: {problem}")
        if fmt != "PNG":
            return unknown(f"{MANIFEST} says tfds-png, but the sampled images are {fmt}")
        return Build("tfds-png", f"{MANIFEST} ({tfds}) matches the four lists; {seen} are PNGs that decode")
    if fmt == "PNG":
        return unknown(f"PNG images without a {MANIFEST} (not NOAH's JPEGs, not petlbench's TFDS build)")
    return Build("noah-jpeg", f"NOAH's four lists; {seen} are JPEGs that decode")


def manifest_problem(manifest: bytes, hashes: dict[str, str]) -> tuple[str | None, str]:
    """(what is wrong with the manifest, or None; the TFDS dataset it names)."""
    try:
        data = json.loads(manifest)
    except ValueError as exc:
        return f"not valid JSON ({exc})", ""
    if not isinstance(data, dict) or data.get("build") != "tfds-png":
        found = data.get("build") if isinstance(data, dict) else data
        return f"build is {found!r:.40}, expected 'tfds-png'", ""
    recorded = data.get("lists")
    if not isinstance(recorded, dict):
        return "no 'lists' mapping of list file to sha256", ""
    for name, now in hashes.items():
        if name not in recorded:
            return f"holds no hash of {name}", ""
        if recorded[name] != now:
            return (f"{name} changed since the build (sha256 {str(recorded[name])[:12]}... recorded, "
                    f"{now[:12]}... now)"), ""
    tfds = data.get("tfds")
    return None, f"tfds {tfds.get('name')}" if isinstance(tfds, dict) and tfds.get("name") else "tfds"
