"""What to write where: objects -> readable images and plates -> DEST paths, sizes, chunk counts.

Resolution asks the port as the acting user; the layout is pure and predictable: the same
objects (and the same index) always give the same paths. Paths already in DEST's index keep
their place (so --sync never moves what analysts already opened)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from omero_cli_ext.export.paths import safe_component
from omero_cli_ext.server import PIXEL_TYPES
from omero_cli_ext.zarr import ngff

ORPHANED = "orphaned"
SUFFIX = ".ome.zarr"
# characters zarr readers take as glob or URL syntax (fsspec: "[0]" is a pattern, "#" and "?"
# end a path): replaced, so that every path opens in ome-zarr-py, napari and zarr as it is
_TOOL_UNSAFE = str.maketrans({c: "_" for c in "[]*?#%"})


@dataclass
class ImageJob:
    info: object                    # server.PixelsInfo
    path: str                       # DEST-relative, "/"-joined
    plate_id: Optional[int] = None
    shapes: list = field(default_factory=list)
    chunks: list = field(default_factory=list)      # chunk shape per level

    @property
    def image_id(self) -> int:
        return self.info.image_id

    def chunk_count(self) -> int:
        return sum(len(ngff.chunk_grid(s, c)) for s, c in zip(self.shapes, self.chunks))

    def raw_bytes(self) -> int:
        itemsize = ngff.dtype_of(self.info.pixel_type).itemsize
        total = 0
        for shape in self.shapes:
            n = itemsize
            for size in shape:
                n *= size
            total += n
        return total


@dataclass
class PlateJob:
    info: object                    # server.PlateInfo
    path: str
    wells: list = field(default_factory=list)   # (row, column, [(field path, acquisition, image id)])


@dataclass
class Plan:
    images: list = field(default_factory=list)   # ImageJob: standalone images and plate fields
    plates: list = field(default_factory=list)   # PlateJob
    skipped: list = field(default_factory=list)  # (image id, reason, plate id or None)
    missing: list = field(default_factory=list)  # refs unknown or unreadable


def resolve(port, refs: Sequence[tuple]):
    """(image ids, plate ids, missing refs), each list in first-seen order without repeats."""
    reached = port.images_and_plates_of(refs)
    images: list = []
    plates: list = []
    missing = []
    for ref in refs:
        if ref not in reached:
            missing.append(ref)
            continue
        image_ids, plate_ids = reached[ref]
        images += [i for i in image_ids if i not in images]
        plates += [p for p in plate_ids if p not in plates]
    return images, plates, missing


def _unique(wanted: str, taken: set, oid: int) -> str:
    if wanted not in taken:
        return wanted
    base = wanted[:-len(SUFFIX)]
    return "%s_%d%s" % (base, oid, SUFFIX)


def _component(name: str) -> str:
    return safe_component(name).translate(_TOOL_UNSAFE)


def _name(name: str) -> str:
    return _component((name or "unnamed") + SUFFIX)


def image_path(info, layout: str) -> str:
    if layout == "flat":
        return "Image_%d%s" % (info.image_id, SUFFIX)
    parts = [_component(str(n)) for n in info.containers[1::2]] or [ORPHANED]
    return "/".join(parts + [_name(info.name)])


def plate_path(info, layout: str) -> str:
    if layout == "flat":
        return "Plate_%d%s" % (info.id, SUFFIX)
    parts = [_component(str(n)) for n in info.containers[1::2]]
    return "/".join(parts + [_name(info.name)])


def skip_reason(info) -> Optional[str]:
    if info.binary_restricted:
        return "restricted"
    if info.pixel_type not in PIXEL_TYPES:
        return "unsupported pixel type %s" % info.pixel_type
    return None


def build(pixels: Mapping[int, object], plates: Mapping[int, object], image_ids: Sequence[int],
          plate_ids: Sequence[int], layout: str, chunk: int, known: Mapping[str, str]) -> Plan:
    """`pixels`: PixelsInfo of every image (standalone and plate fields) that is readable;
    `known`: "image:<id>" / "plate:<id>" -> path already in DEST's index."""
    plan = Plan()
    taken = set(known.values())

    def place(key: str, wanted: str, oid: int) -> str:
        if key in known:
            return known[key]
        path = _unique(wanted, taken, oid)
        taken.add(path)
        return path

    def job(info, path, plate_id=None) -> Optional[ImageJob]:
        reason = skip_reason(info)
        if reason:
            plan.skipped.append((info.image_id, reason, plate_id))
            return None
        shapes = ngff.level_shapes(info)
        return ImageJob(info=info, path=path, plate_id=plate_id, shapes=shapes,
                        chunks=[ngff.chunk_shape(s, chunk) for s in shapes])

    for pid in sorted(plate_ids):
        info = plates.get(pid)
        if info is None:
            continue
        path = place("plate:%d" % pid, plate_path(info, layout), pid)
        pjob = PlateJob(info=info, path=path)
        for well in info.wells:
            fields = []
            for image_id, acquisition in well.fields:
                pinfo = pixels.get(image_id)
                if pinfo is None:
                    plan.skipped.append((image_id, "not readable", pid))
                    continue
                field_path = "%s/%s/%d/%d" % (path, ngff.row_name(well.row), well.column + 1,
                                              len(fields))
                ijob = job(pinfo, field_path, pid)
                if ijob is not None:
                    fields.append((str(len(fields)), acquisition, image_id))
                    plan.images.append(ijob)
            if fields:
                pjob.wells.append((well.row, well.column, fields))
        plan.plates.append(pjob)
    for image_id in sorted(image_ids):
        info = pixels.get(image_id)
        if info is None:
            plan.skipped.append((image_id, "not readable", None))
            continue
        ijob = job(info, place("image:%d" % image_id, image_path(info, layout), image_id))
        if ijob is not None:
            plan.images.append(ijob)
    return plan
