"""OME-NGFF 0.4 documents and arrays: levels, the 2x2 mean, `.zarray`/`.zattrs` contents.

References: the NGFF 0.4 specification (ngff.openmicroscopy.org/0.4: multiscales, omero,
plate, well) and the zarr v2 storage specification (`.zarray`, chunk keys, edge chunks padded
to the full chunk shape with the fill value).
"""
from __future__ import annotations

import string
from typing import Optional, Sequence

import numpy as np

from omero_cli_ext.server import PIXEL_TYPES
from omero_cli_ext.zarr import MAX_SIDE

NGFF = "0.4"
AXES = ("t", "c", "z", "y", "x")


def dtype_of(pixel_type: str) -> np.dtype:
    """Little-endian numpy dtype of a PixelsType value (KeyError for unsupported ones)."""
    return np.dtype(PIXEL_TYPES[pixel_type]).newbyteorder("<")


def level_shapes(info, max_side: int = MAX_SIDE) -> list:
    """(t, c, z, y, x) per level: the image, then halved (rounded up) in y and x until the long
    side is at most `max_side`."""
    y, x = info.size_y, info.size_x
    shapes = [(info.size_t, info.size_c, info.size_z, y, x)]
    while max(y, x) > max_side:
        y, x = (y + 1) // 2, (x + 1) // 2
        shapes.append((info.size_t, info.size_c, info.size_z, y, x))
    return shapes


def chunk_shape(shape: Sequence[int], chunk: int) -> tuple:
    return (1, 1, 1, min(chunk, shape[3]), min(chunk, shape[4]))


def chunk_grid(shape: Sequence[int], chunks: Sequence[int]) -> list:
    """Every chunk index (t, c, z, cy, cx) of an array, in C order."""
    ny = -(-shape[3] // chunks[3])
    nx = -(-shape[4] // chunks[4])
    return [(t, c, z, cy, cx) for t in range(shape[0]) for c in range(shape[1])
            for z in range(shape[2]) for cy in range(ny) for cx in range(nx)]


def downsample(block: np.ndarray) -> np.ndarray:
    """The 2x2 mean of a (h, w) block: output (ceil(h/2), ceil(w/2)); at an odd edge the mean of
    the pixels there are. Integer types round half up, exactly (integer arithmetic)."""
    h, w = block.shape
    floating = block.dtype.kind == "f"
    if not floating and block.dtype.itemsize <= 2 and h % 2 == 0 and w % 2 == 0:
        # the common case, fast: every output pixel has 4 inputs; the sum fits in 32 bits
        acc = block[0::2, 0::2].astype(np.int32)
        acc += block[1::2, 0::2]
        acc += block[0::2, 1::2]
        acc += block[1::2, 1::2]
        acc += 2
        acc >>= 2            # floor division by 4 (arithmetic shift: right for negatives too)
        return acc.astype(block.dtype)
    hh, ww = (h + 1) // 2, (w + 1) // 2
    acc = np.zeros((hh, ww), dtype=np.float64 if floating else np.int64)
    count = np.zeros((hh, ww), dtype=np.int64)
    for dy in (0, 1):
        for dx in (0, 1):
            part = block[dy::2, dx::2]
            acc[:part.shape[0], :part.shape[1]] += part
            count[:part.shape[0], :part.shape[1]] += 1
    if floating:
        return (acc / count).astype(block.dtype)
    return ((2 * acc + count) // (2 * count)).astype(block.dtype)


def zarray(shape, chunks, dtype: np.dtype, compressor: dict) -> dict:
    """The `.zarray` document of a zarr v2 array with "/" chunk keys (NGFF 0.4)."""
    return {"chunks": list(chunks), "compressor": compressor, "dimension_separator": "/",
            "dtype": dtype.str, "fill_value": 0, "filters": None, "order": "C",
            "shape": list(shape), "zarr_format": 2}


def row_name(index: int) -> str:
    """A, B, ..., Z, AA, AB, ... (the letter convention of OMERO's plates)."""
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = string.ascii_uppercase[rest] + name
    return name


def _scale(value: Optional[float]) -> float:
    return float(value) if value else 1.0


def multiscales(info, shapes: Sequence[tuple]) -> dict:
    """The `multiscales` entry: axes t, c, z, y, x; one scale per level from the physical sizes
    (micrometres) when the image has them, else pixels (1.0), times 2**level in y and x."""
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}]
    for name, size in (("z", info.physical_size_z), ("y", info.physical_size_y),
                       ("x", info.physical_size_x)):
        axis = {"name": name, "type": "space"}
        if size:
            axis["unit"] = "micrometer"
        axes.append(axis)
    datasets = []
    for level in range(len(shapes)):
        sy = _scale(info.physical_size_y) * 2 ** level
        sx = _scale(info.physical_size_x) * 2 ** level
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, _scale(info.physical_size_z), sy, sx]}]})
    return {"version": NGFF, "name": info.name, "axes": axes, "datasets": datasets,
            "type": "mean", "metadata": {"description": "2x2 mean of the level above",
                                         "method": "omero-cli-ext"}}


def omero_block(info, rendering) -> dict:
    """The transitional `omero` block from the user's rendering settings."""
    channels = [{"label": ch.label, "color": ch.color, "active": bool(ch.active),
                 "coefficient": float(ch.coefficient), "family": ch.family,
                 "inverted": bool(ch.inverted),
                 "window": {"start": float(ch.start), "end": float(ch.end),
                            "min": float(ch.min), "max": float(ch.max)}}
                for ch in rendering.channels]
    return {"id": info.image_id, "name": info.name, "version": NGFF, "channels": channels,
            "rdefs": {"defaultZ": rendering.default_z, "defaultT": rendering.default_t,
                      "model": rendering.model}}


def image_attrs(info, shapes, rendering) -> dict:
    attrs = {"multiscales": [multiscales(info, shapes)]}
    if rendering is not None:
        attrs["omero"] = omero_block(info, rendering)
    return attrs


def plate_attrs(plate, wells: Sequence[tuple]) -> dict:
    """`wells`: (row, column, [acquisition id or None per field written])."""
    rows = [{"name": row_name(r)} for r in range(plate.rows)]
    columns = [{"name": str(c + 1)} for c in range(plate.columns)]
    doc = {"version": NGFF, "name": plate.name, "rows": rows, "columns": columns,
           "wells": [{"path": "%s/%d" % (row_name(r), c + 1), "rowIndex": r, "columnIndex": c}
                     for r, c, _acqs in wells],
           "field_count": max((len(acqs) for _r, _c, acqs in wells), default=0)}
    if plate.acquisitions:
        doc["acquisitions"] = [
            {"id": aid, "name": name, "maximumfieldcount": max(
                (acqs.count(aid) for _r, _c, acqs in wells), default=0)}
            for aid, name in plate.acquisitions]
    return {"plate": doc}


def well_attrs(fields: Sequence[tuple]) -> dict:
    """`fields`: (path, acquisition id or None) per field written."""
    images = []
    for path, acquisition in fields:
        entry = {"path": path}
        if acquisition is not None:
            entry["acquisition"] = acquisition
        images.append(entry)
    return {"well": {"version": NGFF, "images": images}}
