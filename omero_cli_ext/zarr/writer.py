"""Write the planned images and plates into DEST, tile by tile, resumable.

Per image: the reader is opened first (no directory is made for an image whose pixels cannot
be read), then the groups and `.zarray` documents, then level 0 one chunk per server tile read,
then each pyramid level from the chunks of the level above, and the `.zattrs` (NGFF metadata)
last. A chunk already on disk is never rewritten: each appears under its final name in one
rename, so after kill -9 a rerun writes exactly the missing chunks. Memory: at most `workers`
chunks in flight at level 0, and four chunks of the level above per pyramid chunk.
"""
from __future__ import annotations

import collections
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from numcodecs import Blosc

from omero_cli_ext import fsops
from omero_cli_ext.server import NotFound, PermissionDenied, ServerError
from omero_cli_ext.zarr import index as index_io
from omero_cli_ext.zarr import ngff, store
from omero_cli_ext.zarr.owner import Effective

BLOSC_OVERHEAD = 16 + 4096    # a Blosc chunk is at most its raw size + 16 bytes (+ margin)
READ_TILE = 1024     # the largest getTile asked of the server (omero.pixeldata.max_tile_length)


def compressor():
    return Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE)


@dataclass
class Options:
    chunk: int = 1024
    workers: int = 1
    sync: bool = False
    dry_run: bool = False
    dir_mode: int = 0o750
    retries: int = 4          # per tile, on transient server errors
    backoff: float = 0.5      # seconds, doubled per retry


@dataclass
class Result:
    actions: collections.Counter = field(default_factory=collections.Counter)
    failed: list = field(default_factory=list)       # (image id, reason)
    skipped: list = field(default_factory=list)      # (image id, reason)
    removed: list = field(default_factory=list)      # paths
    chunks_written: int = 0
    bytes_written: int = 0
    estimated_bytes: int = 0


class ImageFailed(Exception):
    pass


class _Readers:
    """One RawPixelsStore per worker thread for one image (at most `workers` open at once);
    port calls are serialised (the port is one session, not meant for concurrent calls)."""

    def __init__(self, port, image_id: int, first, port_lock):
        self._port = port
        self._port_lock = port_lock
        self._image_id = image_id
        self._spare = [first]
        self._open = [first]
        self._lock = threading.Lock()
        self._local = threading.local()

    def get(self):
        reader = getattr(self._local, "reader", None)
        if reader is None:
            with self._lock:
                reader = self._spare.pop() if self._spare else None
                if reader is None:
                    try:
                        with self._port_lock:
                            reader = self._port.open_pixels(self._image_id)
                    except (NotFound, PermissionDenied) as err:
                        raise ImageFailed("pixels no longer readable: %s" % err) from None
                    except ServerError as err:
                        raise ImageFailed("cannot open the pixels: %s" % err) from None
                    self._open.append(reader)
            self._local.reader = reader
        return reader

    def drop(self) -> None:
        """Close this thread's reader (after an error); the next get() opens a new one."""
        reader = getattr(self._local, "reader", None)
        self._local.reader = None
        if reader is not None:
            with self._lock:
                self._open.remove(reader)
            _close_quietly(reader)

    def close_all(self) -> None:
        with self._lock:
            readers, self._open, self._spare = self._open, [], []
        for reader in readers:
            _close_quietly(reader)
        self._local = threading.local()


def _close_quietly(reader) -> None:
    try:
        reader.close()
    except ServerError:
        pass


class Writer:
    def __init__(self, port, dest_fd: Optional[int], options: Options, emit: Callable,
                 progress: Callable = lambda n: None, sleep: Callable = time.sleep,
                 state_fd: Optional[int] = None, owner: Optional[Effective] = None):
        self.port = port
        self.dest_fd = dest_fd
        self.state_fd = state_fd              # the index and journal (export/state.py)
        self.owner = owner or Effective()     # DEST's work as its owner, the state's as root
        self.options = options
        self.emit = emit
        self.progress = progress
        self.sleep = sleep
        self.codec = compressor()
        self.result = Result()
        self._journal = None
        self._port_lock = threading.Lock()      # one session: one call at a time

    # ------------------------------------------------------------------------------ the run
    def run(self, plan, index, renderings) -> Result:
        """`renderings`: image id -> RenderingSettings (None: no `omero` block)."""
        for image_id, reason, plate_id in plan.skipped:
            self.result.skipped.append((image_id, reason))
            self.emit("skipped", image=image_id, plate=plate_id, reason=reason)
        if self.options.dry_run:
            return self._dry_run(plan, index)
        wanted = {self._key(job) for job in plan.images} | {
            "plate:%d" % p.info.id for p in plan.plates}
        for job in plan.plates:      # record the planned paths before anything is made
            index.entries.setdefault("plate:%d" % job.info.id, self._plate_entry(job, False, ""))
        for job in plan.images:
            index.entries.setdefault(self._key(job), self._image_entry(job, False, "", "", 0))
        store.remove_stale_temps(self.dest_fd, recursive=False)   # of a killed run's index copy
        self._save(index, stale=True)
        with self.owner.privileged():
            self._journal = index_io.Journal(self.state_fd)
        try:
            if self.options.sync:
                self._remove_unwanted(index, wanted)
            outcomes: dict = {}
            small = []      # (job, reader, attrs, keys) of images written side by side
            for job in plan.images:
                few = self.options.workers > 1 and len(ngff.chunk_grid(
                    job.shapes[0], job.chunks[0])) < self.options.workers
                outcome = self._image(job, index, renderings.get(job.image_id),
                                      small if few else None)
                if outcome is not None:
                    outcomes[job.image_id, job.plate_id] = outcome
                if len(small) >= 4 * self.options.workers:
                    outcomes.update(self._write_many(index, small))
                    small = []
            if small:
                outcomes.update(self._write_many(index, small))
            done_fields: dict = {}
            for (image_id, plate_id), ok in outcomes.items():
                if plate_id is not None and ok:
                    done_fields.setdefault(plate_id, set()).add(image_id)
            for pjob in plan.plates:
                try:
                    self._plate(pjob, index, done_fields.get(pjob.info.id, set()))
                except store.NotOurs as err:     # planted where a row or well group goes
                    reason = "%s: %s" % (err.filename, err.strerror)
                    self.result.failed.append(("Plate:%d" % pjob.info.id, reason))
                    self.emit("failed", image=None, plate=pjob.info.id, path=pjob.path,
                              reason=reason)
        finally:
            self._journal.close()
        self._forget_unmade(index)
        fsops.syncfs(self.dest_fd)
        self._save(index)
        return self.result

    def _save(self, index, stale: bool = False) -> None:
        """The index into the state directory (as root), then its copy into DEST (as the DEST
        owner). Called only while no worker thread runs (the switch is process-wide)."""
        with self.owner.privileged():
            if stale:
                store.remove_stale_temps(self.state_fd, recursive=False)
            index_io.save(self.state_fd, index)
        index_io.publish(self.dest_fd, index)

    def _forget_unmade(self, index) -> None:
        """Planned entries that never reached DEST (skipped, failed before their directory was
        made) leave the index: it lists what DEST holds."""
        for key, entry in list(index.entries.items()):
            if entry["complete"]:
                continue
            try:
                fd = store.open_path(self.dest_fd, entry["path"].split("/"), False, 0o700)
            except (FileNotFoundError, store.NotOurs):   # absent, or something not ours there
                index.entries.pop(key)
            else:
                os.close(fd)

    @staticmethod
    def _key(job) -> str:
        if job.plate_id is None:
            return "image:%d" % job.image_id
        return "field:%d:%d" % (job.plate_id, job.image_id)

    def _image_entry(self, job, complete, pkey, rkey, nbytes) -> dict:
        return {"kind": "image", "image": job.image_id, "pixels": job.info.pixels_id,
                "name": job.info.name, "plate": job.plate_id, "path": job.path,
                "pixels_key": pkey, "rendering_key": rkey, "complete": complete,
                "bytes": nbytes}

    def _plate_entry(self, pjob, complete, mkey) -> dict:
        return {"kind": "plate", "plate": pjob.info.id, "name": pjob.info.name,
                "path": pjob.path, "images": sorted(i for _r, _c, fs in pjob.wells
                                                    for _p, _a, i in fs),
                "metadata_key": mkey, "complete": complete}

    def _record(self, index, entry) -> None:
        index.entries[index_io.entry_key(entry)] = entry
        self._journal.append(entry)

    def _dry_run(self, plan, index) -> Result:
        for job in plan.images:
            entry = index.entries.get(self._key(job)) if index else None
            unchanged = bool(entry and entry["complete"]
                             and entry["pixels_key"] == index_io.pixels_key(job.info))
            action = "would-keep" if unchanged else "would-write"
            nbytes = 0 if unchanged else job.raw_bytes()
            self.result.actions[action] += 1
            self.result.estimated_bytes += nbytes
            self.emit("image", image=job.image_id, plate=job.plate_id, path=job.path,
                      action=action, levels=len(job.shapes), chunks=job.chunk_count(),
                      bytes=nbytes)
        for pjob in plan.plates:
            self.emit("plate", plate=pjob.info.id, path=pjob.path, action="would-write",
                      wells=len(pjob.wells), fields=sum(len(f) for _r, _c, f in pjob.wells))
        return self.result

    # ------------------------------------------------------------------------------ removal
    def _remove_unwanted(self, index, wanted: set) -> None:
        """--sync: remove what DEST holds of objects no longer exported (deleted, no longer
        readable, or no longer reached by OBJ...). Fields go with their plate."""
        for key, entry in sorted(index.entries.items()):
            if key in wanted:
                continue
            if key.startswith("field:") and "plate:%s" % key.split(":")[1] not in wanted:
                index.entries.pop(key)   # removed with its plate below
                continue
            try:
                self._remove_path(entry["path"])
            except OSError as err:    # her own modes (chmod 000) keep it: next run again
                reason = "cannot remove %s: %s" % (entry["path"], err.strerror)
                self.result.failed.append(("%s:%s" % (entry.get("kind"), key.split(":")[-1]),
                                           reason))
                self.emit("failed", image=entry.get("image"), plate=entry.get("plate"),
                          path=entry["path"], reason=reason)
                continue
            index.entries.pop(key)
            self._journal.append(dict(entry, removed=True))
            self.result.removed.append(entry["path"])
            self.emit("removed", path=entry["path"], image=entry.get("image"),
                      plate=entry.get("plate"))

    def _remove_path(self, path: str) -> None:
        parts = path.split("/")
        try:
            parent = store.open_path(self.dest_fd, parts[:-1], False, self.options.dir_mode)
        except (FileNotFoundError, store.NotOurs):
            return       # nothing of the export's is there any more (a symlink is not followed)
        try:
            store.remove_tree(parent, parts[-1])
        finally:
            os.close(parent)

    # ------------------------------------------------------------------------------ one image
    def _image(self, job, index, rendering, later: Optional[list] = None):
        """Export one image; True when DEST holds it whole, False when skipped or failed. With
        `later`, an image that needs writing is opened and appended there as (job, reader,
        attrs, keys) for `_write_many`, and None is returned."""
        info = job.info
        key = self._key(job)
        pkey = index_io.pixels_key(info)
        attrs = ngff.image_attrs(info, job.shapes, rendering)
        rkey = index_io.doc_key(attrs)
        entry = index.entries.get(key)
        if entry and entry["path"] != job.path and entry["complete"]:
            self._remove_path(entry["path"])       # a plate field that moved
            entry = None
        if entry and entry["complete"] and entry["pixels_key"] == pkey and self.options.sync \
                and self._on_disk(job):
            if entry["rendering_key"] == rkey:
                self._done(job, "kept", 0, 0)
                return True
            fd = store.open_path(self.dest_fd, job.path.split("/"), False, self.options.dir_mode)
            try:
                store.remove_stale_temps(fd, recursive=False)
                store.write_json(fd, ".zattrs", attrs)
            finally:
                os.close(fd)
            self._record(index, self._image_entry(job, True, pkey, rkey, entry["bytes"]))
            self._done(job, "metadata", 0, 0)
            return True
        if entry and entry["pixels_key"] and entry["pixels_key"] != pkey:
            self._remove_path(job.path)            # other pixels now: start again
        try:
            first = self.port.open_pixels(info.image_id)
        except (NotFound, PermissionDenied) as err:
            self.result.skipped.append((info.image_id, "not readable"))
            self.emit("skipped", image=info.image_id, plate=job.plate_id,
                      reason="not readable: %s" % err)
            return False
        except ServerError as err:
            return self._failed(job, str(err))
        if later is not None:
            later.append((job, first, attrs, (pkey, rkey)))
            return None
        return self._finish(job, index, (pkey, rkey), self._attempt(job, first, attrs))

    def _on_disk(self, job) -> bool:
        """Is the image still in DEST (its `.zattrs`, written last, and each level's
        `.zarray`)? One the DEST owner removed, or a level of it, is written again (its missing
        chunks only), never reported kept."""
        try:
            fd = store.open_path(self.dest_fd, job.path.split("/"), False, self.options.dir_mode)
        except (FileNotFoundError, store.NotOurs):
            return False
        try:
            if not store.exists(fd, ".zattrs"):
                return False
            for level in range(len(job.shapes)):
                try:
                    level_fd = store.open_dir(fd, str(level), False, self.options.dir_mode)
                except (FileNotFoundError, store.NotOurs):
                    return False
                try:
                    if not store.exists(level_fd, ".zarray"):
                        return False
                finally:
                    os.close(level_fd)
            return True
        finally:
            os.close(fd)

    def _attempt(self, job, first, attrs, inline: bool = False):
        """(chunks written, bytes, metadata changed), or the failure's text."""
        try:
            return self._write_image(job, first, attrs, inline)
        except ImageFailed as err:
            return str(err)
        except store.NotOurs as err:
            return "%s: %s" % (err.filename, err.strerror)

    def _finish(self, job, index, keys, outcome) -> bool:
        if isinstance(outcome, str):
            return self._failed(job, outcome)
        written, nbytes, metadata_changed = outcome
        total = self._bytes_on_disk(job)
        self._record(index, self._image_entry(job, True, keys[0], keys[1], total))
        existing = job.chunk_count() - written
        action = "written" if existing == 0 else (
            "resumed" if written else ("metadata" if metadata_changed else "kept"))
        self._done(job, action, written, nbytes)
        return True

    def _write_many(self, index, waiting: list) -> dict:
        """Small images (fewer level-0 chunks than workers: plate fields, thumbnails of a
        screen) written side by side, one per worker, each on its own reader; results are
        recorded here, in order of completion. Returns image id -> True/False."""
        done = {}
        items = iter(waiting)
        pending = {}
        with ThreadPoolExecutor(max_workers=self.options.workers) as pool:
            try:
                while True:
                    while len(pending) < self.options.workers:
                        item = next(items, None)
                        if item is None:
                            break
                        job, first, attrs, keys = item
                        pending[pool.submit(self._attempt, job, first, attrs, True)] = (job, keys)
                    if not pending:
                        break
                    finished, _rest = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        job, keys = pending.pop(future)
                        done[job.image_id, job.plate_id] = self._finish(job, index, keys,
                                                                        future.result())
            except BaseException:
                for future in pending:
                    future.cancel()
                for job, first, _attrs, _keys in items:   # opened, never started
                    _close_quietly(first)
                raise
        return done

    def _done(self, job, action, chunks, nbytes) -> None:
        self.result.actions[action] += 1
        self.result.chunks_written += chunks
        self.result.bytes_written += nbytes
        self.emit("image", image=job.image_id, plate=job.plate_id, path=job.path, action=action,
                  levels=len(job.shapes), chunks=chunks, bytes=nbytes)

    def _failed(self, job, reason: str) -> bool:
        self.result.failed.append((job.image_id, reason))
        self.emit("failed", image=job.image_id, plate=job.plate_id, path=job.path, reason=reason)
        return False

    def _bytes_on_disk(self, job) -> int:
        fd = store.open_path(self.dest_fd, job.path.split("/"), False, self.options.dir_mode)
        total = 0
        try:
            for _root, _dirs, files, root_fd in os.fwalk(dir_fd=fd, follow_symlinks=False):
                for name in files:
                    total += os.stat(name, dir_fd=root_fd, follow_symlinks=False).st_size
        finally:
            os.close(fd)
        return total

    def _write_image(self, job, first_reader, attrs, inline: bool = False) -> tuple:
        mode = self.options.dir_mode
        dtype = ngff.dtype_of(job.info.pixel_type)
        image_fd = store.open_path(self.dest_fd, job.path.split("/"), True, mode)
        level_fds = []
        readers = _Readers(self.port, job.image_id, first_reader, self._port_lock)
        try:
            store.remove_stale_temps(image_fd)
            store.write_json(image_fd, ".zgroup", {"zarr_format": 2})
            for level, (shape, chunks) in enumerate(zip(job.shapes, job.chunks)):
                fd = store.open_dir(image_fd, str(level), True, mode)
                level_fds.append(fd)
                store.write_json(fd, ".zarray", ngff.zarray(shape, chunks, dtype,
                                                            self.codec.get_config()))
            written = nbytes = 0

            def base_chunk(index):
                return self._base_chunk(job, dtype, level_fds[0], index, readers)
            n, b = self._parallel(base_chunk, ngff.chunk_grid(job.shapes[0], job.chunks[0]),
                                  inline)
            written += n
            nbytes += b
            readers.close_all()
            for level in range(1, len(job.shapes)):
                def down_chunk(index, level=level):
                    return self._down_chunk(job, dtype, level_fds[level - 1], level_fds[level],
                                            level, index)
                n, b = self._parallel(down_chunk, ngff.chunk_grid(job.shapes[level],
                                                                  job.chunks[level]), inline)
                written += n
                nbytes += b
            return written, nbytes, store.write_json(image_fd, ".zattrs", attrs)
        finally:
            readers.close_all()
            for fd in level_fds:
                os.close(fd)
            os.close(image_fd)

    def _parallel(self, func, items, inline: bool = False) -> tuple:
        """Run func over items on `workers` threads (Blosc, numpy and Ice calls release the GIL),
        at most 2 x workers in flight (`inline`: here, in this thread); returns (chunks written,
        bytes written)."""
        written = nbytes = 0
        workers = max(1, self.options.workers)
        if workers == 1 or len(items) == 1 or inline:
            for item in items:
                raw, out = func(item)
                self.progress(raw)
                if out:
                    written += 1
                    nbytes += out
            return written, nbytes
        pending = set()
        items = iter(items)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            try:
                while True:
                    while len(pending) < 2 * workers:
                        item = next(items, None)
                        if item is None:
                            break
                        pending.add(pool.submit(func, item))
                    if not pending:
                        break
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        raw, out = future.result()
                        self.progress(raw)
                        if out:
                            written += 1
                            nbytes += out
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        return written, nbytes

    @staticmethod
    def _chunk_name(index) -> tuple:
        """(directory parts, file name) of a chunk key t/c/z/y/x."""
        return [str(i) for i in index[:4]], str(index[4])

    def _chunk_dir(self, level_fd, index, create):
        parts, name = self._chunk_name(index)
        return store.open_path(level_fd, parts, create, self.options.dir_mode), name

    def _region(self, shape, chunks, index):
        y = index[3] * chunks[3]
        x = index[4] * chunks[4]
        return y, x, min(chunks[3], shape[3] - y), min(chunks[4], shape[4] - x)

    def _store_chunk(self, fd, name, block, chunks) -> int:
        if block.shape == tuple(chunks[3:]):
            full = np.ascontiguousarray(block)
        else:   # an edge chunk: zarr stores the full chunk shape, padded with the fill value
            full = np.zeros(chunks[3:], dtype=block.dtype)
            full[:block.shape[0], :block.shape[1]] = block
        data = self.codec.encode(full)
        store.write_file(fd, name, bytes(data))
        return len(data)

    def _base_chunk(self, job, dtype, level_fd, index, readers) -> tuple:
        shape, chunks = job.shapes[0], job.chunks[0]
        y, x, h, w = self._region(shape, chunks, index)
        raw = h * w * dtype.itemsize
        fd, name = self._chunk_dir(level_fd, index, True)
        try:
            if store.exists(fd, name):
                return raw, 0
            t, c, z = index[:3]
            block = np.empty((h, w), dtype=dtype)
            for ty in range(0, h, READ_TILE):
                for tx in range(0, w, READ_TILE):
                    th, tw = min(READ_TILE, h - ty), min(READ_TILE, w - tx)
                    data = self._read_tile(job, readers, (z, c, t, x + tx, y + ty, tw, th))
                    block[ty:ty + th, tx:tx + tw] = np.frombuffer(
                        data, dtype=dtype.newbyteorder(">")).reshape(th, tw)
            return raw, self._store_chunk(fd, name, block, chunks)
        finally:
            os.close(fd)

    def _read_tile(self, job, readers, args) -> bytes:
        delay = self.options.backoff
        for attempt in range(self.options.retries + 1):
            try:
                data = readers.get().tile(*args)
            except (NotFound, PermissionDenied) as err:
                raise ImageFailed("pixels no longer readable: %s" % err) from None
            except ServerError as err:
                if attempt == self.options.retries:
                    raise ImageFailed("tile %s failed %d times: %s"
                                      % (args, attempt + 1, err)) from None
                readers.drop()              # a new RawPixelsStore for the next attempt
                self.sleep(delay)
                delay *= 2
                continue
            expected = args[5] * args[6] * ngff.dtype_of(job.info.pixel_type).itemsize
            if len(data) != expected:
                raise ImageFailed("tile %s: %d bytes, expected %d" % (args, len(data), expected))
            return data
        raise AssertionError("unreachable")

    def _read_chunk(self, fd_level, index, chunks, dtype) -> np.ndarray:
        fd, name = self._chunk_dir(fd_level, index, False)
        raw = int(np.prod(chunks)) * np.dtype(dtype).itemsize
        try:
            data = store.read_file(fd, name, limit=raw + BLOSC_OVERHEAD)
        finally:
            os.close(fd)
        if data is None:
            raise ImageFailed("chunk %s of the level above is missing" % (index,))
        try:
            return np.frombuffer(self.codec.decode(data), dtype=dtype).reshape(chunks)[0, 0, 0]
        except (RuntimeError, ValueError, TypeError):
            raise ImageFailed("chunk %s of the level above is not one the export wrote (remove "
                              "the image's directory and rerun)" % (index,)) from None

    def _down_chunk(self, job, dtype, above_fd, level_fd, level, index) -> tuple:
        shape, chunks = job.shapes[level], job.chunks[level]
        above_shape, above_chunks = job.shapes[level - 1], job.chunks[level - 1]
        y, x, h, w = self._region(shape, chunks, index)
        raw = h * w * dtype.itemsize
        fd, name = self._chunk_dir(level_fd, index, True)
        try:
            if store.exists(fd, name):
                return raw, 0
            y0, x0 = 2 * y, 2 * x
            y1, x1 = min(above_shape[3], 2 * (y + h)), min(above_shape[4], 2 * (x + w))
            block = np.empty((y1 - y0, x1 - x0), dtype=dtype)
            cy0, cy1 = y0 // above_chunks[3], (y1 - 1) // above_chunks[3]
            cx0, cx1 = x0 // above_chunks[4], (x1 - 1) // above_chunks[4]
            for cy in range(cy0, cy1 + 1):
                for cx in range(cx0, cx1 + 1):
                    part = self._read_chunk(above_fd, index[:3] + (cy, cx), above_chunks, dtype)
                    py, px = cy * above_chunks[3], cx * above_chunks[4]
                    sy0, sy1 = max(py, y0), min(py + above_chunks[3], y1)
                    sx0, sx1 = max(px, x0), min(px + above_chunks[4], x1)
                    block[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = part[sy0 - py:sy1 - py,
                                                                       sx0 - px:sx1 - px]
            return raw, self._store_chunk(fd, name, ngff.downsample(block), chunks)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------------------ plates
    def _plate(self, pjob, index, done: set) -> None:
        """Plate, row and well groups and their metadata, after their fields (only fields
        written in this or an earlier run are listed)."""
        mode = self.options.dir_mode
        wells = []
        written = []
        for row, column, fields in pjob.wells:
            present = [(p, a) for p, a, image in fields
                       if image in done or self._field_complete(index, pjob.info.id, image)]
            if present:
                written.append((row, column, present))
        if not written:
            self.emit("skipped", plate=pjob.info.id, path=pjob.path, reason="no field written")
            return
        fd = store.open_path(self.dest_fd, pjob.path.split("/"), True, mode)
        try:
            self._remove_plate_temps(fd, pjob)
            store.write_json(fd, ".zgroup", {"zarr_format": 2})
            for row, column, present in written:
                wells.append((row, column, [a for _p, a in present]))
                row_fd = store.open_dir(fd, ngff.row_name(row), True, mode)
                try:
                    store.write_json(row_fd, ".zgroup", {"zarr_format": 2})
                    well_fd = store.open_dir(row_fd, str(column + 1), True, mode)
                    try:
                        store.write_json(well_fd, ".zgroup", {"zarr_format": 2})
                        store.write_json(well_fd, ".zattrs", ngff.well_attrs(present))
                    finally:
                        os.close(well_fd)
                finally:
                    os.close(row_fd)
            attrs = ngff.plate_attrs(pjob.info, wells)
            store.write_json(fd, ".zattrs", attrs)
        finally:
            os.close(fd)
        entry = self._plate_entry(pjob, True, index_io.doc_key(attrs))
        self._record(index, entry)
        self.emit("plate", plate=pjob.info.id, path=pjob.path, action="written",
                  wells=len(wells), fields=sum(len(a) for _r, _c, a in wells))

    @staticmethod
    def _remove_plate_temps(plate_fd, pjob) -> None:
        """Temporaries of the plate's own documents (plate, rows, wells; the fields clean theirs)."""
        store.remove_stale_temps(plate_fd, recursive=False)
        for row, column, _fields in pjob.wells:
            for parts in ([ngff.row_name(row)], [ngff.row_name(row), str(column + 1)]):
                try:
                    fd = store.open_path(plate_fd, parts, False, 0o700)
                except FileNotFoundError:
                    continue
                try:
                    store.remove_stale_temps(fd, recursive=False)
                finally:
                    os.close(fd)

    @staticmethod
    def _field_complete(index, plate_id, image_id) -> bool:
        entry = index.entries.get("field:%d:%d" % (plate_id, image_id))
        return bool(entry and entry["complete"])
