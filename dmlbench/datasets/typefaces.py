"""Han typefaces: a many-class retrieval benchmark rendered from the CJK fonts that Debian packages.

One class per Han character (CJK Unified Ideographs, U+4E00-U+9FFF), one grey image per distinct
typeface: the Omniglot idea with real type designs (Ming / Song serif, Hei / Gothic sans, Kai brush,
FangSong, pixel fonts, calligraphic and hand-written Japanese fonts), whose natural hard negatives
are characters that differ by a stroke (己 / 已 / 巳, 未 / 末, 土 / 士).

How it is built (deterministic for given font files; every step is a setting of :class:`BuildSpec`):

1. **Faces.** Every font file of the packages in ``FONT_PACKAGES`` (``dpkg -L``), every face of a
   collection, in the packages' order. A missing package stops with its name and the ``apt-get``
   command; a face FreeType cannot scale (bitmap-only) is left out and listed.
2. **Rendering.** A glyph is set as a typesetter sets it: drawn at 64 px centred on its em box,
   so each face keeps its own glyph size and position; the em square with a 4-px margin is scaled
   to ``image_size``: white ink on black, uint8.
3. **Duplicate typefaces removed by comparing renderings.** On the ``probe`` characters most faces
   cover, the distance of two faces is the median over shared characters of the mean absolute grey
   difference (0-1 scale). A face closer than ``duplicate_threshold`` to an earlier kept face
   (regional and Mono variants, fonts derived from another's outlines, neighbouring weights) is
   removed as its duplicate. Then, per character, a rendering within the same distance of an earlier
   kept rendering of that character (a font borrowing another's glyph) is dropped, as is one without
   ink: every class holds distinct designs only.
4. **Typeface groups** (per fold): whole packages are dealt into a training, a validation and a test
   group (about ``typeface_groups`` of the faces each), stratified by style family (Ming/Song,
   Hei/Gothic/sans, Kai/brush, hand-written, pixel/bitmap: :func:`style_family`) so that every group
   holds every family found in at least three packages.
5. **Characters.** Candidates (covered by at least ``min_typefaces`` kept faces) are visited in a
   seeded random order; a character enters the pool when it keeps at least ``min_typefaces``
   distinct renderings, ``min_held_out`` of them in each group of every fold, until
   ``sum(split_characters)`` have entered. The pool is the same in every fold.
6. **Splits by character and typeface**, class-disjoint, seeded and fixed per fold:
   ``split_characters`` = (train, validation, test), redrawn in each of ``folds`` folds. Training
   characters appear in training typefaces only, validation characters in validation typefaces
   only, test characters in test typefaces only: validation mirrors the test's double shift (new
   characters in new designs), and model selection sees neither test characters nor test designs.

Every fold is its own cached build (``$DMLBENCH_CACHE/han-typefaces/build-<fingerprint>.npz``) under a key of the
spec, the font files (path, size, modification time) and the package versions; :meth:`HanTypefaces.load`'s
``source`` lists every typeface used with its package and version, and the counts, which a run's
metrics.json records.

**A carried build.** Where the font packages are absent (a GPU machine without them, which the GPU
check carries the data to), ``DMLBENCH_HAN_TYPEFACES_BUILD=/path/build-<fingerprint>.npz`` names a
build that :func:`load_build` wrote elsewhere: it is loaded instead of discovering fonts, after
checking that it holds the build's arrays, made with this spec, and ``source`` says so
(``carried_build``, and the fingerprint of the file's name). Unset, nothing changes: the fonts are
discovered, and a missing package is an error naming it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetNotFoundError
from ..fileio import atomic_write_bytes, read_or_set_aside
from .base import Dataset, ImageSet, Splits, cache_dir, register_dataset

log = logging.getLogger("dmlbench")

# The Debian packages whose faces are rendered, in priority order: of two duplicate faces the earlier is kept.
FONT_PACKAGES = (
    "fonts-noto-cjk",          # Noto Sans / Serif CJK (Source Han), regular and bold
    "fonts-arphic-uming",      # AR PL UMing: Ming
    "fonts-arphic-ukai",       # AR PL UKai: Kai
    "fonts-arphic-bsmi00lp", "fonts-arphic-gbsn00lp", "fonts-arphic-bkai00mp", "fonts-arphic-gkai00mp",
    "fonts-cns11643-sung", "fonts-cns11643-kai",  # Taiwan's TW-Sung and TW-Kai
    "fonts-cwtex-ming", "fonts-cwtex-kai", "fonts-cwtex-fs", "fonts-cwtex-heib", "fonts-cwtex-yen",
    "fonts-wqy-zenhei", "fonts-wqy-microhei", "fonts-droid-fallback",
    "fonts-lxgw-wenkai",
    "fonts-ipafont-mincho", "fonts-ipafont-gothic", "fonts-ipaexfont-mincho", "fonts-ipaexfont-gothic",
    "fonts-ipamj-mincho", "fonts-hanazono", "fonts-takao-mincho", "fonts-takao-gothic",
    "fonts-vlgothic", "fonts-horai-umefont", "fonts-umeplus", "fonts-migmix", "fonts-mmcedar",
    "fonts-motoya-l-cedar", "fonts-motoya-l-maruberi", "fonts-konatu", "fonts-komatuna", "fonts-mona",
    "fonts-monapo", "fonts-misaki", "fonts-unifont",
    "fonts-aoyagi-kouzan-t", "fonts-aoyagi-soseki", "fonts-kouzan-mouhitsu",  # brush calligraphy
    "fonts-kiloji", "fonts-seto", "fonts-yozvox-yozfont-standard-kana",        # hand-written
    "fonts-baekmuk", "fonts-unfonts-core", "fonts-nanum",                      # Korean fonts' Hanja
)
FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")
HAN_RANGE = (0x4E00, 0x9FFF)  # CJK Unified Ideographs
RENDER_PX = 64  # the size glyphs are drawn at before they are fitted into image_size
# A build carried to a machine without the font packages (see the module's docstring), and what it must hold.
BUILD_VARIABLE = "DMLBENCH_HAN_TYPEFACES_BUILD"
BUILD_ARRAYS = tuple(f"{part}_{what}" for part in ("train", "val", "test") for what in ("images", "labels", "faces"))


def progress(total: int, what: str, unit: str):
    """A text progress bar on stderr for one step of the build ("han-typefaces: <what>"), shown on a
    terminal only (tqdm's text bar, as the image cache's: an executed notebook stays clean)."""
    from tqdm.std import tqdm

    return tqdm(total=total, desc=f"han-typefaces: {what}", unit=unit, file=sys.stderr, disable=None,
                mininterval=1.0, dynamic_ncols=False, ncols=100)


def install_command(packages) -> str:
    return f"apt-get install {' '.join(packages)}   (or 'make data' as root)"


@dataclass(frozen=True)
class Face:
    """One face of a font file: ``index`` within a collection (.ttc), and the package it comes from."""

    package: str
    version: str
    file: str
    index: int
    name: str = ""

    @property
    def key(self) -> str:
        return f"{Path(self.file).name}#{self.index}"


@dataclass(frozen=True)
class BuildSpec:
    """Everything that decides the images (see the module's docstring)."""

    packages: tuple[str, ...] = FONT_PACKAGES
    image_size: int = 24
    duplicate_threshold: float = 0.10
    min_typefaces: int = 20
    split_characters: tuple[int, int, int] = (1000, 800, 800)  # validation at the test's scale
    seed: int = 0
    probe: int = 100
    characters: tuple[int, int] = HAN_RANGE  # code point range (inclusive)
    min_coverage: int = 1000  # faces covering fewer characters of the range are not Han fonts: left out
    # The second zero-shot axis: the distinct typefaces fall into three groups, whole packages (a design with its
    # sibling weights) at a time, each group holding every style family: training characters are shown in the
    # training group only, validation characters in the validation group only, test characters in the test
    # group only. About these shares of the faces go to (train, validation, test).
    typeface_groups: tuple[float, float, float] = (0.5, 0.25, 0.25)
    min_held_out: int = 6  # a character needs this many distinct renderings in every group of every fold
    folds: int = 3  # character split and typeface groups redrawn per fold (seeded): each fold its own build
    fold: int = 0

    def validate(self) -> "BuildSpec":
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {self.image_size}")
        if not 0 <= self.duplicate_threshold < 1:
            raise ValueError(f"duplicate_threshold is a mean grey difference in [0, 1), got {self.duplicate_threshold}")
        if len(self.typeface_groups) != 3 or min(self.typeface_groups) <= 0 or self.min_held_out < 2:
            raise ValueError(f"typeface_groups must be three positive shares (train, validation, test) and "
                             f"min_held_out be >= 2, got {self.typeface_groups}, {self.min_held_out}")
        if self.folds < 1 or not 0 <= self.fold < self.folds:
            raise ValueError(f"fold must be one of 0..{self.folds - 1} (folds={self.folds}), got {self.fold}")
        if self.min_typefaces < 2 or min(self.split_characters) < 1 or len(self.split_characters) != 3:
            raise ValueError(f"min_typefaces must be >= 2 and split_characters three positive counts, got "
                             f"{self.min_typefaces}, {self.split_characters}")
        return self


# dpkg's database: what 'dpkg-query -W' and 'dpkg -L' read, read here directly (two processes for each of the
# packages cost a second, in every study cell that loads the benchmark)
DPKG_ADMIN = Path("/var/lib/dpkg")


def _installed_versions(admin: Path) -> dict[str, str] | None:
    """{package: version} of the packages dpkg's status file marks "install ok installed"; None unreadable.
    Parsed once per version of the file (its size and modification time)."""
    try:
        stat = (admin / "status").stat()
    except OSError:
        return None
    return _parse_status(str(admin / "status"), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _parse_status(path: str, size: int, mtime_ns: int) -> dict[str, str] | None:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    installed = {}
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if fields.get("Status") == "install ok installed" and "Package" in fields and "Version" in fields:
            installed[fields["Package"]] = fields["Version"]
    return installed


def _listed_files(admin: Path, package: str) -> list[str] | None:
    """The paths dpkg installed for ``package`` (its info/<package>[:<arch>].list); None when it has none."""
    lists = sorted((admin / "info").glob(f"{package}.list")) + sorted((admin / "info").glob(f"{package}:*.list"))
    if not lists:
        return None
    try:
        return [line for path in lists for line in path.read_text(encoding="utf-8", errors="replace").split("\n")]
    except OSError:
        return None


def package_files(package: str, admin: Path | None = None) -> tuple[str, list[str]] | None:
    """(version, font files) of an installed Debian package; None when it is not installed. Read from
    dpkg's database (``admin``, default /var/lib/dpkg) where it is readable, else asked of dpkg itself."""
    admin = DPKG_ADMIN if admin is None else admin
    installed = _installed_versions(admin)
    if installed is not None:
        if package not in installed:
            return None
        listing = _listed_files(admin, package)
        if listing is not None:
            files = sorted({line for line in listing if line.lower().endswith(FONT_SUFFIXES) and os.path.isfile(line)})
            return installed[package], files
    return package_files_from_dpkg(package)


def package_files_from_dpkg(package: str) -> tuple[str, list[str]] | None:
    """:func:`package_files` by running dpkg-query and dpkg -L."""
    if not shutil.which("dpkg-query"):
        return None
    status = subprocess.run(["dpkg-query", "-W", "-f", "${Status}\t${Version}", package],
                            capture_output=True, text=True)
    if status.returncode != 0 or "install ok installed" not in status.stdout:
        return None
    version = status.stdout.split("\t")[-1].strip()
    listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True).stdout.split("\n")
    files = sorted({line for line in listing if line.lower().endswith(FONT_SUFFIXES) and os.path.isfile(line)})
    return version, files


def missing_packages(packages=FONT_PACKAGES) -> list[str]:
    """The font packages not installed ('make data' installs them with apt-get when root)."""
    return [p for p in packages if package_files(p) is None]


def discover_faces(packages) -> list[Face]:
    """Every face of every font file of ``packages``, in their order; a missing package is an error."""
    from fontTools.ttLib import TTCollection

    found, missing = [], []
    for package in packages:
        listed = package_files(package)
        if listed is None:
            missing.append(package)
            continue
        version, files = listed
        for path in files:
            count = len(TTCollection(path, lazy=True).fonts) if path.lower().endswith((".ttc", ".otc")) else 1
            found.extend(Face(package, version, path, i) for i in range(count))
    if missing:
        raise DatasetNotFoundError(
            f"han-typefaces needs the font package(s) {', '.join(missing)}, not installed. Install them: "
            f"{install_command(missing)}")
    return found


def han_coverage(face: Face, lo: int, hi: int) -> tuple[str, set[int]]:
    """(full name, the code points in [lo, hi] the face's character map covers)."""
    from fontTools.ttLib import TTFont

    font = TTFont(face.file, fontNumber=face.index, lazy=True)
    cmap = font["cmap"].getBestCmap() or {}
    return str(font["name"].getDebugName(4) or face.key), {c for c in cmap if lo <= c <= hi}


def render_glyph(font, char: str, size: int) -> np.ndarray | None:
    """The glyph as a typesetter sets it: drawn at 64 px centred on its em box (the face's own size and
    position kept), the em square plus a 4-px margin scaled to ``size``: uint8 (size, size), white on
    black; None when the face draws no ink for it (or FreeType fails)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (2 * RENDER_PX, 2 * RENDER_PX), 0)
    try:
        ImageDraw.Draw(canvas).text((RENDER_PX, RENDER_PX), char, fill=255, font=font, anchor="mm")
    except OSError:
        return None
    if canvas.getbbox() is None:
        return None
    lo, hi = RENDER_PX // 2 - 4, 3 * RENDER_PX // 2 + 4
    return np.asarray(canvas.crop((lo, lo, hi, hi)).resize((size, size), Image.LANCZOS))


def rendering_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute grey difference of two renderings, on the 0-1 scale."""
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() / 255.0)


@dataclass
class _Faces:
    """The usable faces with their fonts and coverage, and what was left out and why."""

    faces: list[Face]
    fonts: list
    coverage: list[set[int]]
    left_out: dict[str, str] = field(default_factory=dict)


def usable_faces(spec: BuildSpec, faces: list[Face]) -> _Faces:
    """Faces FreeType can scale that cover at least ``min_coverage`` characters of the range."""
    kept = _Faces([], [], [])
    with progress(len(faces), "reading the faces' character maps", "face") as bar:
        for face in faces:
            _read_face(spec, face, kept)
            bar.update()
    return kept


def _read_face(spec: BuildSpec, face: Face, kept: _Faces) -> None:
    """Adds ``face`` to ``kept`` when FreeType can scale it and it covers enough of the range, else
    records why it is left out."""
    from PIL import ImageFont

    try:
        name, covered = han_coverage(face, *spec.characters)
        font = ImageFont.truetype(face.file, RENDER_PX, index=face.index)
    except Exception as error:  # noqa: BLE001 - a face fontTools or FreeType cannot read is left out, said why
        kept.left_out[face.key] = f"unreadable: {error}"
        return
    if len(covered) < spec.min_coverage:
        kept.left_out[face.key] = f"covers {len(covered)} characters of the range, fewer than {spec.min_coverage}"
        return
    kept.faces.append(Face(face.package, face.version, face.file, face.index, name))
    kept.fonts.append(font)
    kept.coverage.append(covered)


def remove_duplicate_faces(spec: BuildSpec, usable: _Faces) -> _Faces:
    """Faces whose renderings of the probe characters repeat an earlier kept face's are removed."""
    counts = Counter(c for covered in usable.coverage for c in covered)
    probe = [c for c, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:spec.probe]]
    renders = []
    with progress(len(usable.faces), f"rendering {len(probe)} probe characters per face", "face") as bar:
        for font, covered in zip(usable.fonts, usable.coverage):
            renders.append([render_glyph(font, chr(c), spec.image_size) if c in covered else None for c in probe])
            bar.update()
    kept = _Faces([], [], [], dict(usable.left_out))
    kept_renders: list[list] = []
    for face, font, covered, mine in zip(usable.faces, usable.fonts, usable.coverage, renders):
        if all(r is None for r in mine):
            kept.left_out[face.key] = "draws none of the probe characters"
            continue
        for other, theirs in zip(kept.faces, kept_renders):
            shared = [rendering_distance(a, b) for a, b in zip(mine, theirs) if a is not None and b is not None]
            if shared and float(np.median(shared)) < spec.duplicate_threshold:
                kept.left_out[face.key] = (f"duplicate of {other.key} ({other.name}): median distance "
                                           f"{float(np.median(shared)):.3f} < {spec.duplicate_threshold}")
                break
        else:
            kept.faces.append(face)
            kept.fonts.append(font)
            kept.coverage.append(covered)
            kept_renders.append(mine)
    return kept


def distinct_renderings(spec: BuildSpec, faces: _Faces, char: int) -> tuple[list[np.ndarray], list[int]]:
    """The character's renderings by every kept face covering it, minus those without ink and those
    within ``duplicate_threshold`` of an earlier kept rendering: (images, face indices)."""
    images, owners = [], []
    for i, (font, covered) in enumerate(zip(faces.fonts, faces.coverage)):
        if char not in covered:
            continue
        image = render_glyph(font, chr(char), spec.image_size)
        if image is None or any(rendering_distance(image, kept) < spec.duplicate_threshold for kept in images):
            continue
        images.append(image)
        owners.append(i)
    return images, owners


# Style families (the protocol's five): a face's family from its name where the name says it (a package such as
# Noto CJK or Un fonts holds several designs), else from its package's.
STYLE_FAMILIES = ("ming", "sans", "kai", "hand-written", "pixel")
_PACKAGE_FAMILIES = {
    "ming": ("fonts-arphic-uming", "fonts-arphic-bsmi00lp", "fonts-arphic-gbsn00lp", "fonts-cns11643-sung",
             "fonts-cwtex-ming", "fonts-cwtex-fs", "fonts-ipafont-mincho", "fonts-ipaexfont-mincho",
             "fonts-ipamj-mincho", "fonts-hanazono", "fonts-takao-mincho"),
    "kai": ("fonts-arphic-ukai", "fonts-arphic-bkai00mp", "fonts-arphic-gkai00mp", "fonts-cns11643-kai",
            "fonts-cwtex-kai", "fonts-lxgw-wenkai", "fonts-aoyagi-kouzan-t", "fonts-aoyagi-soseki",
            "fonts-kouzan-mouhitsu"),
    "hand-written": ("fonts-kiloji", "fonts-seto", "fonts-yozvox-yozfont-standard-kana"),
    "pixel": ("fonts-mona", "fonts-monapo", "fonts-misaki", "fonts-unifont"),
}
_NAMED_FAMILIES = ((re.compile(r"serif|ming|mincho|batang|myeongjo|sung\b|song", re.I), "ming"),
                   (re.compile(r"kai|gungseo|brush|soseki|kouzan|mouhitsu", re.I), "kai"))
GROUPS = ("train", "val", "test")


def style_family(package: str, name: str) -> str:
    """The face's style family (one of STYLE_FAMILIES): its name's where the name says it, else its package's
    (sans for a package not listed)."""
    for pattern, family in _NAMED_FAMILIES:
        if pattern.search(name or ""):
            return family
    return next((family for family, packages in _PACKAGE_FAMILIES.items() if package in packages), "sans")


def spread_families(faces: list[Face]) -> list[str]:
    """The families a grouping must put in every group: those found in at least three packages (a family of
    one or two packages cannot be in all three groups when packages stay whole)."""
    packages: dict[str, set[str]] = {}
    for f in faces:
        packages.setdefault(style_family(f.package, f.name), set()).add(f.package)
    return [family for family in STYLE_FAMILIES if len(packages.get(family, ())) >= len(GROUPS)]


def typeface_groups(spec: BuildSpec, faces: list[Face], fold: int) -> list[int]:
    """The group (0 train, 1 validation, 2 test) of each face in ``fold``: whole packages (a design with its
    sibling weights) dealt out in a seeded order, scarcest families first, each to the group that lacks most of
    the package's families and then is furthest below its share (``typeface_groups``) of the faces; redrawn
    until every group holds every family of :func:`spread_families`. Deterministic for the spec and fold."""
    families = [style_family(f.package, f.name) for f in faces]
    packages = sorted({f.package for f in faces})
    held = {p: {fam for f, fam in zip(faces, families) if f.package == p} for p in packages}
    sizes = Counter(f.package for f in faces)
    scarcity = Counter(fam for p in packages for fam in held[p])
    wanted = set(spread_families(faces))
    rng = np.random.default_rng([spec.seed, fold, 2])
    for _ in range(1000):
        order = sorted(rng.permutation(len(packages)), key=lambda i: min(scarcity[fam] for fam in held[packages[i]]))
        group_of, filled, count = {}, [set() for _ in GROUPS], [0.0] * len(GROUPS)
        for i in order:
            package = packages[int(i)]
            need = [len((held[package] & wanted) - filled[g]) for g in range(len(GROUPS))]
            deficit = [spec.typeface_groups[g] * len(faces) - count[g] for g in range(len(GROUPS))]
            g = max(range(len(GROUPS)), key=lambda g: (need[g], deficit[g], rng.random()))
            group_of[package] = g
            filled[g] |= held[package]
            count[g] += sizes[package]
        if all(wanted <= f for f in filled):
            return [group_of[f.package] for f in faces]
    raise DatasetNotFoundError(f"han-typefaces: no grouping of the {len(packages)} font packages puts every style "
                               f"family ({', '.join(sorted(wanted))}) in each of the three typeface groups")


def _enough(spec: BuildSpec, who: list[int], groupings: list[list[int]]) -> bool:
    """Whether a character's renderings (face indices ``who``) give every group of every fold at least
    ``min_held_out`` distinct renderings: then it can take any part in any fold."""
    return all(min(Counter(groups[w] for w in who).get(g, 0) for g in range(len(GROUPS))) >= spec.min_held_out
               for groups in groupings)


def choose_characters(spec: BuildSpec, faces: _Faces, groupings: list[list[int]]
                      ) -> tuple[list[int], list[np.ndarray], list[list[int]]]:
    """The character pool, the same in every fold: characters visited in a seeded order, kept with at least
    ``min_typefaces`` distinct renderings of which at least ``min_held_out`` lie in each typeface group of
    every fold, until ``sum(split_characters)`` are kept."""
    counts = Counter(c for covered in faces.coverage for c in covered)
    candidates = sorted(c for c, n in counts.items() if n >= spec.min_typefaces)
    order = np.random.default_rng(spec.seed).permutation(len(candidates))
    wanted = sum(spec.split_characters)
    chars, images, owners = [], [], []
    with progress(wanted, f"rendering characters in {len(faces.faces)} typefaces", "character") as bar:
        for position in order:
            char = candidates[int(position)]
            rendered, who = distinct_renderings(spec, faces, char)
            if len(rendered) >= spec.min_typefaces and _enough(spec, who, groupings):
                chars.append(char)
                images.append(np.stack(rendered))
                owners.append(who)
                bar.update()
            if len(chars) == wanted:
                break
    if len(chars) < wanted:
        raise DatasetNotFoundError(
            f"han-typefaces: only {len(chars)} characters have {spec.min_typefaces} distinct typefaces, "
            f"{spec.min_held_out} in each typeface group of every fold, among the {len(faces.faces)} distinct "
            f"faces found; {wanted} are needed. Install the font packages ({install_command(spec.packages)}) "
            f"or ask for fewer characters or typefaces per character.")
    return chars, images, owners


def build(spec: BuildSpec, faces: list[Face] | None = None) -> dict:
    """The build of ``spec.fold`` (see :func:`build_folds`)."""
    return build_folds(spec, faces)[spec.fold]


def build_folds(spec: BuildSpec, faces: list[Face] | None = None) -> dict[int, dict]:
    """Render the benchmark once and cut it into every fold: {fold: build}, a build being the arrays
    (images, labels = character code points, face of each image, per part) and the facts (faces kept with
    their style family and group, faces left out and why, the spec with its fold). In a fold, training
    characters show the training typefaces only, validation characters the validation typefaces only and
    test characters the test typefaces only; the character split and the groups are redrawn per fold."""
    spec.validate()
    faces = discover_faces(spec.packages) if faces is None else faces
    kept = remove_duplicate_faces(spec, usable_faces(spec, faces))
    groupings = [typeface_groups(spec, kept.faces, fold) for fold in range(spec.folds)]
    chars, images, owners = choose_characters(spec, kept, groupings)
    return {fold: _cut(dataclasses.replace(spec, fold=fold), kept, faces, groupings[fold], chars, images, owners)
            for fold in range(spec.folds)}


def _cut(spec: BuildSpec, kept: _Faces, faces: list[Face], groups: list[int], chars, images, owners) -> dict:
    """One fold's build from the rendered pool (see :func:`build_folds`)."""
    order = np.random.default_rng([spec.seed, spec.fold, 1]).permutation(len(chars))
    n_train, n_val, _ = spec.split_characters
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    arrays = {}
    for g, (part, members) in enumerate(parts.items()):
        members = sorted(int(m) for m in members)
        side = [[j for j, w in enumerate(owners[m]) if groups[w] == g] for m in members]
        arrays[f"{part}_images"] = np.concatenate([images[m][rows] for m, rows in zip(members, side)])
        arrays[f"{part}_labels"] = np.concatenate([np.full(len(rows), chars[m], np.int64) for m, rows in zip(members, side)])
        arrays[f"{part}_faces"] = np.concatenate([np.asarray(owners[m], np.int64)[rows] for m, rows in zip(members, side)])
    described = [asdict(f) | {"family": style_family(f.package, f.name), "group": GROUPS[groups[i]]}
                 for i, f in enumerate(kept.faces)]
    facts = {"faces": described, "left_out": kept.left_out, "faces_examined": len(faces), "spec": asdict(spec),
             "spread_families": spread_families(kept.faces), "pool": len(chars)}
    return {"arrays": arrays, "facts": facts}


def fingerprint(spec: BuildSpec, faces: list[Face]) -> str:
    """The cache key: the spec, the code's version, each face's package version and file size / mtime."""
    stats = [(f.package, f.version, f.file, f.index, os.stat(f.file).st_size, os.stat(f.file).st_mtime_ns)
             for f in faces]
    text = json.dumps({"spec": asdict(spec), "faces": stats, "version": HanTypefaces.version}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_path(key: str) -> Path:
    """Where :func:`load_build` caches the build of fingerprint ``key``."""
    return cache_dir() / "han-typefaces" / f"build-{key}.npz"


def read_build(path: str | os.PathLike) -> dict:
    """A build as :func:`load_build` writes it: the arrays, and the facts (stored as JSON)."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files if name != "facts"}
        return {"arrays": arrays, "facts": json.loads(str(data["facts"]))}


def load_build(spec: BuildSpec, cache: bool = True) -> tuple[dict, str]:
    """The built benchmark from the cache when current, else built and cached: (build, fingerprint).
    With $DMLBENCH_HAN_TYPEFACES_BUILD set, the build of that file instead (:func:`carried_build`):
    no font is looked for."""
    carried = os.environ.get(BUILD_VARIABLE)
    if carried:
        return carried_build(Path(carried).expanduser(), spec)
    faces = discover_faces(spec.packages)
    key = fingerprint(spec, faces)
    path = build_path(key)
    if cache and path.is_file():
        built = read_or_set_aside(path, read_build, "han-typefaces build", log)
        if built is not None:
            return built, key
    log.info("rendering han-typefaces from %d faces: once for its %d folds, a few minutes (cached in %s)",
             len(faces), spec.folds, path.parent)
    built = build_folds(spec, faces)
    if cache:
        for fold, made in built.items():
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **made["arrays"], facts=np.array(json.dumps(made["facts"])))
            atomic_write_bytes(build_path(fingerprint(dataclasses.replace(spec, fold=fold), faces)), buffer.getvalue())
    return built[spec.fold], key


def carried_build(path: Path, spec: BuildSpec) -> tuple[dict, str]:
    """(build, fingerprint) of a build-<fingerprint>.npz that :func:`load_build` wrote on a machine with
    the fonts, carried to one without them; it must hold the arrays of a build made with ``spec``.
    The build's ``carried`` names the file."""
    where = f"{BUILD_VARIABLE}={path}"
    named = re.fullmatch(r"build-([0-9a-f]{16})\.npz", path.name)
    if named is None:
        raise DatasetNotFoundError(f"{where}: expected a file named build-<16 hex digits>.npz, as load_build "
                                   f"writes into $DMLBENCH_CACHE/han-typefaces/ on a machine with the fonts")
    if not path.is_file():
        raise DatasetNotFoundError(f"{where}: no such file (unset the variable to render from the installed fonts)")
    try:
        built = read_build(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise DatasetNotFoundError(f"{where}: not a readable han-typefaces build "
                                   f"({type(error).__name__}: {error})") from None
    problem = build_problem(built, spec)
    if problem:
        raise DatasetNotFoundError(f"{where}: not the han-typefaces build this code asks for: {problem}")
    built["carried"] = str(path)
    return built, named.group(1)


def build_problem(built: dict, spec: BuildSpec) -> str | None:
    """What is wrong with a build read from a file, for ``spec`` (None: nothing)."""
    arrays, facts = built["arrays"], built["facts"]
    missing = [name for name in BUILD_ARRAYS if name not in arrays]
    if missing:
        return f"it lacks the arrays {', '.join(missing)}"
    for part in ("train", "val", "test"):
        images, labels, faces = (arrays[f"{part}_{what}"] for what in ("images", "labels", "faces"))
        if images.dtype != np.uint8 or images.shape[1:] != (spec.image_size, spec.image_size):
            return f"{part}_images are {images.dtype} {images.shape}, not uint8 (n, {spec.image_size}, {spec.image_size})"
        if not len(labels) == len(faces) == len(images) or len(images) == 0:
            return f"{part}: {len(images)} images, {len(labels)} labels and {len(faces)} faces"
    if not isinstance(facts, dict) or not {"faces", "left_out", "faces_examined", "spec"} <= set(facts):
        return "its facts lack the faces kept and left out, or the spec"
    wanted, made = json.loads(json.dumps(asdict(spec))), facts["spec"]
    differ = sorted(k for k in wanted if not isinstance(made, dict) or made.get(k) != wanted[k])
    if differ:
        return f"it was built with other settings ({', '.join(differ)} differ from this code's BuildSpec)"
    return None


def counts(built: dict) -> dict:
    """Characters, images and typefaces per character of each split, and the typefaces in all."""
    out = {"typefaces": len(built["facts"]["faces"]), "faces_examined": built["facts"]["faces_examined"]}
    for part in ("train", "val", "test"):
        labels = built["arrays"][f"{part}_labels"]
        per_class = np.unique(labels, return_counts=True)[1]
        out[part] = {"characters": int(len(per_class)), "images": int(len(labels)),
                     "typefaces_per_character": {"min": int(per_class.min()), "median": float(np.median(per_class)),
                                                 "max": int(per_class.max())}}
    return out


def pixel_statistics(key: str, train_images: np.ndarray) -> tuple[float, float]:
    """The mean and standard deviation of the training pixels (in [0, 1], float64) that normalise the
    images. Computing them takes half a second in every run, so the two numbers are kept beside the
    build they come from (build-<key>.stats.json, exact: JSON keeps every bit of a float)."""
    store = build_path(key).with_suffix(".stats.json")
    try:
        saved = json.loads(store.read_text())
        if saved.get("images") == int(train_images.size):
            return float(saved["mean"]), float(saved["std"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # absent or damaged: computed again
        pass
    pixels = train_images.astype(np.float64) / 255.0
    mean, std = float(pixels.mean()), float(pixels.std())
    try:
        atomic_write_bytes(store, json.dumps({"images": int(train_images.size), "mean": mean, "std": std}).encode())
    except OSError:  # a read-only cache (a carried build): computed again next time
        pass
    return mean, std


@register_dataset
class HanTypefaces(Dataset):
    name = "han-typefaces"
    description = ("Han characters rendered in every distinct typeface of Debian's CJK font packages: one class "
                   "per character, split by character into train / validation / test (grey, 24x24).")
    spec: BuildSpec = BuildSpec()
    folds = spec.folds  # a study runs every cell on every fold (RunConfig.fold)
    version = 2  # 2: three typeface groups and folds (1: validation in the training typefaces, one split)
    num_classes = spec.split_characters[0], spec.split_characters[2]
    channels = 1
    default_image_size = spec.image_size
    packages = FONT_PACKAGES  # what 'make data' installs

    @classmethod
    def load(cls, root: str | os.PathLike | None = None, cache: bool = True, fold: int = 0) -> Splits:
        if root is not None:
            raise DatasetNotFoundError(
                "han-typefaces is rendered from installed Debian font packages, not read from a data root; "
                f"leave data_root unset. Install the fonts with: {install_command(cls.spec.packages)}")
        if not isinstance(fold, int) or not 0 <= fold < cls.spec.folds:
            raise DatasetNotFoundError(f"han-typefaces has folds 0..{cls.spec.folds - 1}; got fold={fold!r}")
        built, key = load_build(dataclasses.replace(cls.spec, fold=fold), cache=cache)
        arrays, facts = built["arrays"], built["facts"]
        sets = {part: ImageSet(arrays[f"{part}_images"], arrays[f"{part}_labels"]) for part in ("train", "val", "test")}
        mean, std = pixel_statistics(key, sets["train"].images)
        names = {int(c): chr(int(c)) for part in sets.values() for c in np.unique(part.labels)}
        typefaces = [{"name": f["name"], "package": f["package"], "version": f["version"], "file": f["file"],
                      "index": f["index"], "family": f.get("family"), "group": f.get("group")} for f in facts["faces"]]
        # what a run records of its data (metrics.json): the typefaces and counts; the faces left out and why
        # are listed by 'dmlbench data prepare han-typefaces' (HanTypefaces.left_out)
        where = f"{len(typefaces)} distinct typefaces of {len(cls.spec.packages)} Debian font packages"
        source = {"where": where, "fingerprint": key, "fold": fold, "counts": counts(built), "typefaces": typefaces,
                  "faces_left_out": len(facts["left_out"]), "spec": facts["spec"]}
        if built.get("carried"):  # rendered elsewhere, carried here ($DMLBENCH_HAN_TYPEFACES_BUILD)
            source |= {"where": f"a carried build (build-{key}.npz, {BUILD_VARIABLE}) of {where}",
                       "carried_build": built["carried"]}
        return Splits(name=cls.name, train=sets["train"], val=sets["val"], test=sets["test"], class_names=names,
                      mean=mean, std=std, source=source)

    @staticmethod
    def describe(splits: Splits) -> str:
        """What 'dmlbench data prepare' prints: the counts of each split."""
        c = splits.source["counts"]
        lines = [f"han-typefaces: {c['typefaces']} distinct typefaces (of {c['faces_examined']} faces examined)"]
        for part in ("train", "val", "test"):
            p = c[part]
            per = p["typefaces_per_character"]
            lines.append(f"  {part:5s} {p['characters']:5d} characters  {p['images']:6d} images  typefaces per "
                         f"character min {per['min']} median {per['median']:g} max {per['max']}")
        return "\n".join(lines)
