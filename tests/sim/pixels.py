"""Pixels in the simulated server: Bio-Formats FakeReader's names and values, rendering settings,
physical sizes, plates with wells, fields and acquisitions, and RawPixelsStore-like tile reads.

Every image's pixels are FakeReader's (ome/bioformats
`components/formats-bsd/src/loci/formats/in/FakeReader.java`, read at df36e691):
- a `.fake` main file's name carries the keys: the name without `.fake` split at `&`, the first
  token the image name, then `key=value` tokens (`initFile`); the keys read here are `sizeX`,
  `sizeY` (default 512), `sizeZ`, `sizeC`, `sizeT` (default 1), `pixelType` (default uint8),
  `series`, `physicalSizeX/Y/Z` (micrometres unless a unit follows), `color` and `color_N`
  (`parseColor`: decimal or 0x-hex RGBA), and the SPW keys `screens`, `plates`, `plateRows`,
  `plateCols`, `fields`, `plateAcqs` (any of them makes a plate; missing ones count 1, and the
  series count becomes screens*plates*rows*cols*fields*acqs: `initFile`, `populateSPW`);
- any other main file is read as FakeReader's defaults (512 x 512 uint8, one plane);
- values (`openBytes`): pixel (x, y) is `min + x` (min = the type's lowest value for signed
  integers, else 0), cut to the type's width as `DataTools.unpackBytes` does; in the first 10
  rows (`BOX_SIZE`) the 10-pixel boxes 0..4 hold the series, the plane number (dimension order
  XYZCT: z + sizeZ * (c + sizeC * t)), z, c and t; floats are the same numbers as floats;
- series s of an SPW fake sits at well sample s % (acqs*fields), well (s // (acqs*fields)) %
  (rows*cols), plate s // (acqs*fields*rows*cols) (`toSPWCoordinates`), wells row-major.

The simulated server stores rendering settings only once someone changes them (`set_rendering`);
until then an image has the server's defaults (ome/omero-server
`src/main/java/ome/logic/RenderingSettingsImpl.java`, `resetChannelBindings`): the first three
channels active, the file's channel colour when it has one (`hasOriginalColor`), window = the
pixel type's range when the channel has no StatsInfo (`initPixelsRange`), linear family,
coefficient 1. Colours without one are red, green, blue, then white by index (the sim's stand-in
for `ColorsFactory`, which picks by emission wavelength). PlateAcquisition rows live in the
table `sim_plate_acquisition` (the server schema is kept as it is).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from omero_cli_ext import server as port_api

BOX_SIZE = 10
DEFAULT_SIZE = 512
DTYPES = {"int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4",
          "uint32": "u4", "float": "f4", "double": "f8"}
_UNITS_TO_UM = {"nm": 1e-3, "µm": 1.0, "um": 1.0, "mm": 1e3, "m": 1e6}
_DEFAULT_COLORS = ("FF0000", "00FF00", "0000FF")

PIXELS_SCHEMA = """
CREATE TABLE IF NOT EXISTS sim_rendering (image INTEGER PRIMARY KEY, settings TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sim_plate_acquisition (id INTEGER PRIMARY KEY AUTOINCREMENT,
    plate INTEGER NOT NULL, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sim_wellsample_acquisition (wellsample INTEGER PRIMARY KEY,
    acquisition INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class FakeSpec:
    """What a FakeReader name says about its images."""
    name: str = ""
    size_x: int = DEFAULT_SIZE
    size_y: int = DEFAULT_SIZE
    size_z: int = 1
    size_c: int = 1
    size_t: int = 1
    pixel_type: str = "uint8"
    series: int = 1
    physical: tuple = (None, None, None)      # micrometres x, y, z
    color: Optional[str] = None               # RRGGBB for every channel ('color')
    colors: dict = field(default_factory=dict)   # channel -> RRGGBB ('color_N', wins)
    spw: Optional[tuple] = None               # (screens, plates, rows, cols, fields, acqs)

    @property
    def image_count(self) -> int:
        if self.spw is None:
            return self.series
        screens, plates, rows, cols, fields, acqs = self.spw
        return max(screens, 1) * plates * rows * cols * fields * acqs

    def spw_position(self, series: int) -> tuple:
        """(plate index, row, column, field, acquisition index) of a series (toSPWCoordinates)."""
        _screens, _plates, rows, cols, fields, acqs = self.spw
        sample = series % (acqs * fields)
        well = (series // (acqs * fields)) % (rows * cols)
        plate = series // (acqs * fields * rows * cols)
        return plate, well // cols, well % cols, sample % fields, sample // fields


def _length_um(value: str) -> Optional[float]:
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([a-zµ]*)\s*", value)
    if not match:
        raise ValueError("Invalid physical size: %s" % value)
    number = float(match.group(1))
    unit = match.group(2) or "µm"
    if unit not in _UNITS_TO_UM:
        raise ValueError("Invalid physical size unit: %s" % value)
    return number * _UNITS_TO_UM[unit] if number > 0 else None   # not positive: warned, unset


def _color(value: str) -> str:
    try:
        rgba = int(value[2:], 16) if value.lower().startswith("0x") else int(value)
    except ValueError:
        rgba = 0
    return "%06X" % ((rgba >> 8) & 0xFFFFFF)


def parse_fake(file_name: str) -> FakeSpec:
    """The FakeReader keys of a main file's name (defaults for anything not `.fake`)."""
    base = file_name.rsplit("/", 1)[-1]
    if not base.endswith(".fake"):
        return FakeSpec(name=base)
    tokens = base[:-len(".fake")].split("&")
    values: dict = {}
    colors: dict = {}
    spw_keys = ("screens", "plates", "plateRows", "plateCols", "fields", "plateAcqs")
    for token in tokens[1:]:
        key, sep, value = token.partition("=")
        if not sep:
            continue    # FakeReader: "ignoring token"
        if key.startswith("color_"):
            colors[int(key[len("color_"):])] = _color(value)
        else:
            values[key] = value

    def number(key, default):
        if key not in values:
            return default
        try:
            return int(float(values[key]))
        except ValueError:
            return -1
    spec = dict(name=tokens[0], size_x=number("sizeX", DEFAULT_SIZE),
                size_y=number("sizeY", DEFAULT_SIZE), size_z=number("sizeZ", 1),
                size_c=number("sizeC", 1), size_t=number("sizeT", 1),
                pixel_type=values.get("pixelType", "uint8"), series=number("series", 1),
                physical=tuple(_length_um(values[k]) if k in values else None
                               for k in ("physicalSizeX", "physicalSizeY", "physicalSizeZ")),
                color=_color(values["color"]) if "color" in values else None, colors=colors)
    for key in ("size_x", "size_y", "size_z", "size_c", "size_t", "series"):
        if spec[key] < 1:
            raise ValueError("Invalid %s: %s" % (key, spec[key]))
    if spec["pixel_type"] not in DTYPES:
        raise ValueError("pixelType %r is not simulated" % spec["pixel_type"])
    if any(k in values for k in spw_keys):
        counts = [number(k, 0) for k in spw_keys]
        spec["spw"] = (max(counts[0], 0),) + tuple(max(n, 1) for n in counts[1:])
    return FakeSpec(**spec)


def plane_number(spec: FakeSpec, z: int, c: int, t: int) -> int:
    """The plane index in FakeReader's default dimension order XYZCT."""
    return z + spec.size_z * (c + spec.size_c * t)


def fake_tile(spec: FakeSpec, series: int, z: int, c: int, t: int,
              x: int, y: int, w: int, h: int, byteorder: str = "=") -> np.ndarray:
    """FakeReader's values (openBytes) of one region, as a (h, w) array of the pixel type
    (`byteorder` ">" gives them as the server sends them)."""
    dtype = np.dtype(DTYPES[spec.pixel_type]).newbyteorder(byteorder)
    signed = dtype.kind == "i"
    low = -(1 << (8 * dtype.itemsize - 1)) if signed else 0
    xs = np.arange(x, x + w, dtype=np.int64)
    row = (low + xs).astype(dtype)   # integer casts wrap, as unpackBytes keeps the low bytes
    values = np.empty((h, w), dtype=dtype)
    values[:] = row
    box_rows = max(0, min(y + h, BOX_SIZE) - y)
    if box_rows:
        special = (series, plane_number(spec, z, c, t), z, c, t)
        grid = xs // BOX_SIZE
        for index, value in enumerate(special):
            values[:box_rows, grid == index] = value
    return values


# --------------------------------------------------------------------------- the server's side

def spw_layout(main_name: str, planned: int):
    """For a `.fake` main file with SPW keys: [(plate index, row, col, field, acq index)] per
    series, else None (the builder's own grid)."""
    spec = parse_fake(main_name)
    if spec.spw is None:
        return None
    return [spec.spw_position(s) for s in range(planned)]


def add_acquisitions(server, plate_id: int, samples: Sequence[tuple]) -> None:
    """Record PlateAcquisitions ("Run <n>") and link each (wellsample id, acq index) to one."""
    acq_ids: dict = {}
    for sample, index in samples:
        if index not in acq_ids:
            acq_ids[index] = server._db.execute(
                "INSERT INTO sim_plate_acquisition (plate, name) VALUES (?, ?)",
                (plate_id, "Run %d" % index)).lastrowid
        server._db.execute("INSERT INTO sim_wellsample_acquisition (wellsample, acquisition) "
                           "VALUES (?, ?)", (sample, acq_ids[index]))


def _image_rows(port, image_ids: Iterable[int]) -> dict:
    """Readable image id -> (name, series, main file name, owner, group)."""
    ids = sorted(set(image_ids))
    if not ids:
        return {}
    cond, params = port._readable_sql("i")
    rows = port._db.execute(
        "SELECT i.id, i.name, i.series, i.owner_id, i.group_id, "
        "(SELECT fe.clientPath FROM FilesetEntry fe WHERE fe.fileset = i.fileset "
        " ORDER BY fe.id LIMIT 1) FROM Image i WHERE i.id IN (SELECT value FROM json_each(?)) "
        "AND " + cond, (json.dumps(ids),) + params).fetchall()
    return {r[0]: (r[1], r[2], r[5] or "", r[3], r[4]) for r in rows}


def images_and_plates_of(port, refs: Sequence[tuple]) -> Mapping[tuple, tuple]:
    port._check_open()
    db = port._db
    found = {}
    queries = {
        "Image": ("Image", "i", "SELECT ?"),
        "Dataset": ("Dataset", "d", "SELECT child FROM DatasetImageLink WHERE parent = ?"),
        "Project": ("Project", "p", "SELECT dil.child FROM ProjectDatasetLink pdl JOIN "
                    "DatasetImageLink dil ON dil.parent = pdl.child WHERE pdl.parent = ?"),
        "Plate": ("Plate", "p", "SELECT ?"),
        "Screen": ("Screen", "s", "SELECT child FROM ScreenPlateLink WHERE parent = ?"),
    }
    kinds = {r[0] for r in refs}
    port._server._count(max(1, len(kinds)))
    for kind, oid in refs:
        if kind not in queries:
            raise ValueError("cannot export %s to zarr" % kind)
        table, alias, children = queries[kind]
        cond, params = port._readable_sql(alias)
        if not db.execute("SELECT 1 FROM %s %s WHERE %s.id = ? AND %s" % (table, alias, alias, cond),
                          (oid,) + params).fetchone():
            continue
        ids = [r[0] for r in db.execute(children, (oid,))]
        if kind in ("Plate", "Screen"):
            cond, params = port._readable_sql("p")
            plates = [r[0] for r in db.execute(
                "SELECT p.id FROM Plate p WHERE p.id IN (SELECT value FROM json_each(?)) AND "
                + cond + " ORDER BY p.id", (json.dumps(ids),) + params)]
            found[(kind, oid)] = ((), tuple(plates))
        else:
            found[(kind, oid)] = (tuple(sorted(_image_rows(port, ids))), ())
    return found


def _containers(db, image_ids: Sequence[int]) -> dict:
    result: dict = {}
    for image, project, dataset in db.execute(
            "SELECT dil.child, pr.name, d.name FROM DatasetImageLink dil "
            "JOIN Dataset d ON d.id = dil.parent LEFT JOIN ProjectDatasetLink pdl ON pdl.child = d.id "
            "LEFT JOIN Project pr ON pr.id = pdl.parent WHERE dil.child IN "
            "(SELECT value FROM json_each(?))", (json.dumps(list(image_ids)),)):
        entry = (("Project", project) if project is not None else ()) + ("Dataset", dataset)
        result[image] = min(result.get(image, entry), entry)
    return result


def pixels_info(port, image_ids: Iterable[int]) -> Mapping[int, port_api.PixelsInfo]:
    port._check_open()
    rows = _image_rows(port, image_ids)
    port._server._count(1)
    containers = _containers(port._db, sorted(rows))
    policies = port._binary_policies()
    result = {}
    for image_id, (name, series, main, owner, group) in rows.items():
        spec = parse_fake(main)
        result[image_id] = port_api.PixelsInfo(
            image_id=image_id, name=name, pixels_id=image_id, size_x=spec.size_x,
            size_y=spec.size_y, size_z=spec.size_z, size_c=spec.size_c, size_t=spec.size_t,
            pixel_type=spec.pixel_type, physical_size_x=spec.physical[0],
            physical_size_y=spec.physical[1], physical_size_z=spec.physical[2],
            containers=containers.get(image_id, ()),
            binary_restricted=port._binary_restricted_for(owner, group, "", policies))
    return result


def _type_range(pixel_type: str) -> tuple:
    dtype = np.dtype(DTYPES[pixel_type])
    if dtype.kind == "f":
        return (float(np.finfo(dtype).min), float(np.finfo(dtype).max))
    info = np.iinfo(dtype)
    return (float(info.min), float(info.max))


def default_rendering(image_id: int, spec: FakeSpec) -> dict:
    low, high = _type_range(spec.pixel_type)
    channels = []
    for c in range(spec.size_c):
        color = spec.colors.get(c) or spec.color or (
            _DEFAULT_COLORS[c] if c < len(_DEFAULT_COLORS) and spec.size_c > 1 else "FFFFFF")
        channels.append(dict(label=str(c), color=color, start=low, end=high, min=low, max=high,
                             active=c < 3, inverted=False, family="linear", coefficient=1.0))
    return dict(default_z=spec.size_z // 2, default_t=0,
                model="greyscale" if spec.size_c == 1 else "color", channels=channels)


def _settings(port, image_id: int, main: str) -> dict:
    row = port._db.execute("SELECT settings FROM sim_rendering WHERE image = ?",
                           (image_id,)).fetchone()
    return json.loads(row[0]) if row else default_rendering(image_id, parse_fake(main))


def rendering_settings(port, image_ids: Iterable[int]) -> Mapping[int, port_api.RenderingSettings]:
    port._check_open()
    rows = _image_rows(port, image_ids)
    port._server._count(1)
    result = {}
    for image_id, (_name, _series, main, _owner, _group) in rows.items():
        s = _settings(port, image_id, main)
        result[image_id] = port_api.RenderingSettings(
            image_id=image_id, default_z=s["default_z"], default_t=s["default_t"], model=s["model"],
            channels=tuple(port_api.ChannelRendering(**c) for c in s["channels"]))
    return result


def set_rendering(server, image_id: int, *, channel: Optional[int] = None, **changes) -> None:
    """Change an image's rendering settings (as `omero render set` would): a channel's fields
    (label, color, start, end, active, ...) when `channel` is given, else default_z/default_t/model."""
    main = server._db.execute(
        "SELECT (SELECT fe.clientPath FROM FilesetEntry fe WHERE fe.fileset = i.fileset "
        "ORDER BY fe.id LIMIT 1) FROM Image i WHERE i.id = ?", (image_id,)).fetchone()[0]
    row = server._db.execute("SELECT settings FROM sim_rendering WHERE image = ?",
                             (image_id,)).fetchone()
    settings = json.loads(row[0]) if row else default_rendering(image_id, parse_fake(main))
    target = settings["channels"][channel] if channel is not None else settings
    unknown = set(changes) - set(target)
    if unknown:
        raise ValueError("unknown rendering fields: %s" % sorted(unknown))
    target.update(changes)
    with server.transaction():
        server._db.execute("INSERT OR REPLACE INTO sim_rendering (image, settings) VALUES (?, ?)",
                           (image_id, json.dumps(settings)))


def plates(port, plate_ids: Iterable[int]) -> Mapping[int, port_api.PlateInfo]:
    port._check_open()
    ids = sorted(set(plate_ids))
    port._server._count(1)
    cond, params = port._readable_sql("p")
    db = port._db
    result = {}
    for pid, name in db.execute("SELECT p.id, p.name FROM Plate p WHERE p.id IN "
                                "(SELECT value FROM json_each(?)) AND " + cond,
                                (json.dumps(ids),) + params).fetchall():
        screen = db.execute("SELECT s.name FROM ScreenPlateLink l JOIN Screen s ON s.id = l.parent "
                            "WHERE l.child = ? ORDER BY s.id LIMIT 1", (pid,)).fetchone()
        wcond, wparams = port._readable_sql("w")
        wells: dict = {}
        for row, col, image, acq in db.execute(
                'SELECT w."row", w."column", ws.image, a.acquisition FROM Well w '
                "JOIN WellSample ws ON ws.well = w.id LEFT JOIN sim_wellsample_acquisition a "
                "ON a.wellsample = ws.id WHERE w.plate = ? AND " + wcond + " ORDER BY w.id, ws.id",
                (pid,) + wparams):
            wells.setdefault((row, col), []).append((image, acq))
        readable = set(_image_rows(port, [i for fields in wells.values() for i, _ in fields]))
        well_infos = tuple(port_api.WellInfo(row=r, column=c, fields=tuple(
            f for f in fields if f[0] in readable)) for (r, c), fields in sorted(wells.items()))
        # the plate's size as the server has it: rows and columns up to the last well
        all_wells = db.execute('SELECT MAX("row"), MAX("column") FROM Well WHERE plate = ?',
                               (pid,)).fetchone()
        acquisitions = tuple(db.execute("SELECT id, name FROM sim_plate_acquisition WHERE plate = ? "
                                        "ORDER BY id", (pid,)).fetchall())
        result[pid] = port_api.PlateInfo(
            id=pid, name=name, rows=(all_wells[0] or 0) + 1, columns=(all_wells[1] or 0) + 1,
            wells=tuple(w for w in well_infos if w.fields), acquisitions=acquisitions,
            containers=("Screen", screen[0]) if screen else ())
    return result


class SimPixelsReader:
    """RawPixelsStore.getTile on FakeReader values: big-endian bytes, bounds checked as the
    server's PixelBuffer does (`DimensionsOutOfBoundsException`)."""

    def __init__(self, spec: FakeSpec, series: int):
        self.spec = spec
        self.series = series
        self.closed = False

    def tile(self, z, c, t, x, y, w, h) -> bytes:
        if self.closed:
            raise port_api.ServerError("RawPixelsStore is closed")
        s = self.spec
        if not (0 <= z < s.size_z and 0 <= c < s.size_c and 0 <= t < s.size_t and 0 <= x
                and 0 <= y and w > 0 and h > 0 and x + w <= s.size_x and y + h <= s.size_y):
            raise port_api.ServerError("DimensionsOutOfBoundsException: tile (%d,%d,%d) %d,%d %dx%d"
                                       % (z, c, t, x, y, w, h))
        return fake_tile(s, self.series, z, c, t, x, y, w, h, byteorder=">").tobytes()

    def close(self) -> None:
        self.closed = True


def open_pixels(port, image_id: int) -> SimPixelsReader:
    """Readability as any read; BINARYACCESS is not checked here, as RawPixelsBean does not
    (only RawFileBean calls checkRestriction): honouring it is the client's job."""
    port._check_open()
    port._server._count(1)
    rows = _image_rows(port, [image_id])
    if image_id not in rows:
        raise port_api.NotFound("Image:%d not found" % image_id, [image_id])
    _name, series, main, _owner, _group = rows[image_id]
    return SimPixelsReader(parse_fake(main), series or 0)


def pixels_readable(port, image_ids: Sequence[int]) -> Mapping[int, Optional[str]]:
    """RawPixelsStore.setPixelsId(id, False, ...) per readable image: the server builds a
    Bio-Formats pixel buffer on the fileset's main file (the first used file), whose setId reads
    it: a missing or unreadable file fails with ResourceError "Error instantiating pixel buffer".
    The simulated pixel data has no pyramid and no ROMIO file, so the original is always read.
    Round trips: the pixels query per page, then create, setPixelsId and close per image."""
    port._check_open()
    rows = _image_rows(port, image_ids)
    port._server._count(max(1, math.ceil(len(rows) / 500)) + 3 * len(rows))
    result = {}
    for image_id in image_ids:
        if image_id not in rows:
            continue
        fileset = port._db.execute("SELECT fileset FROM Image WHERE id = ?",
                                   (image_id,)).fetchone()[0]
        main = port._db.execute(
            "SELECT o.path, o.name FROM FilesetEntry fe JOIN OriginalFile o "
            "ON o.id = fe.originalFile WHERE fe.fileset = ? ORDER BY fe.id LIMIT 1",
            (fileset,)).fetchone()
        on_disk = os.path.join(port._server.repo_dir, main[0].lstrip("/"), main[1])
        try:
            with open(on_disk, "rb") as f:
                f.read(1)
            result[image_id] = None
        except OSError:
            result[image_id] = "ResourceError: Error instantiating pixel buffer: " + on_disk
    return result


def create_spw(server, main: str, image_ids: Sequence[int], uid: int, gid: int, ev: int,
               ttype, tid) -> None:
    """Plates, wells and well samples of a FakeReader SPW name (inside the builder's transaction)."""
    layout = spw_layout(main, len(image_ids))
    db = server._db
    plate_ids: dict = {}
    wells: dict = {}
    samples: dict = {}
    for image, (plate_index, row, col, _field, acq) in zip(image_ids, layout):
        if plate_index not in plate_ids:
            name = main if layout[-1][0] == 0 else "%s [%d]" % (main, plate_index)
            plate_ids[plate_index] = db.execute(
                "INSERT INTO Plate (name, owner_id, group_id, creation_id) VALUES (?, ?, ?, ?)",
                (name, uid, gid, ev)).lastrowid
            server._log(ev, "Plate", [plate_ids[plate_index]], "INSERT")
            if ttype == "Screen":
                link = db.execute("INSERT INTO ScreenPlateLink (parent, child) VALUES (?, ?)",
                                  (tid, plate_ids[plate_index])).lastrowid
                server._log(ev, "ScreenPlateLink", [link], "INSERT")
        key = (plate_index, row, col)
        if key not in wells:
            wells[key] = db.execute('INSERT INTO Well (plate, "row", "column", owner_id, group_id) '
                                    "VALUES (?, ?, ?, ?, ?)",
                                    (plate_ids[plate_index], row, col, uid, gid)).lastrowid
            server._log(ev, "Well", [wells[key]], "INSERT")
        sample = db.execute("INSERT INTO WellSample (well, image, owner_id, group_id) "
                            "VALUES (?, ?, ?, ?)", (wells[key], image, uid, gid)).lastrowid
        server._log(ev, "WellSample", [sample], "INSERT")
        samples.setdefault(plate_index, []).append((sample, acq))
    for plate_index, pairs in samples.items():
        add_acquisitions(server, plate_ids[plate_index], pairs)
