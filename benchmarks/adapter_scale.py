"""The omero-py adapter at facility scale: `Port.filesets` on one HCS fileset of 10 000 files and on
100 000 filesets, against autospec'd Ice proxies that answer each HQL as a server would.

Prints, per case, the round trips (queries sent) and the largest answer in bytes (the rows or
objects of one answer, sized field by field as Ice's encoding writes them: an estimate of one
message), for the adapter's
plan (filesets alone, then entries in answers of at most ENTRY_PAGE_SIZE) and for the plan it
replaced (one `select distinct` fetching entries and annotation links with the filesets, pages of
1000). Target: the largest answer stays bounded whatever the fileset size (the client's
Ice.MessageSizeMax is 250 000 KB, the server's omero.query.timeout 1000 s).

    .venv/bin/python benchmarks/adapter_scale.py [--files 10000] [--filesets 100000]
"""
from __future__ import annotations

import argparse
import os
import sys
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]

import omero  # noqa: E402
import omero.api  # noqa: E402
import omero.clients  # noqa: E402,F401
import omero.model  # noqa: E402
from omero.rtypes import rlong, rstring, rtime  # noqa: E402

from omero_cli_ext import omero_adapter as adapter  # noqa: E402

OLD_HQL_FILESETS = "old: select distinct fs ... left outer join fetch fs.usedFiles ..."


def _size(value, seen) -> int:
    """Bytes a value takes on the wire, roughly: strings their length, numbers 8, each object a
    type id and its fields (Ice's class encoding writes each instance once, hence `seen`)."""
    if value is None:
        return 1
    if isinstance(value, (bool, int, float)):
        return 8
    if isinstance(value, (str, bytes)):
        return len(value) + 1
    if isinstance(value, (list, tuple)):
        return 4 + sum(_size(v, seen) for v in value)
    if isinstance(value, dict):
        return 4 + sum(_size(k, seen) + _size(v, seen) for k, v in value.items())
    if id(value) in seen:
        return 4
    seen.add(id(value))
    fields = getattr(value, "__dict__", {})
    return 16 + sum(_size(v, seen) for k, v in fields.items() if not k.startswith("__"))


def wire_bytes(answer) -> int:
    """About the bytes of one answer as one Ice message (see `_size`)."""
    return _size(list(answer), set())


class World:
    """`sizes[fileset id]` = number of used files; objects are made per query, never kept."""

    def __init__(self, sizes: dict):
        self.sizes = sizes
        self.calls = 0
        self.largest = 0

    def original_file(self, fs_id, k):
        f = omero.model.OriginalFileI(fs_id * 100000 + k, True)
        f.path = rstring("alice_7/2026-11/27/15-58-01.%03d/plate/Well%05d/" % (fs_id % 1000, k))
        f.name = rstring("field%05d.tif" % k)
        f.size = rlong(5 << 20)
        f.hash = rstring("ab" * 20)
        f.mimetype = rstring("application/octet-stream")
        f.repo = rstring("4c6e1a8a-repo-uuid")
        hasher = omero.model.ChecksumAlgorithmI(1, True)
        hasher.value = rstring("SHA1-160")
        f.hasher = hasher
        return f

    def entry(self, fs_id, k):
        e = omero.model.FilesetEntryI(fs_id * 100000 + k, True)
        e.clientPath = rstring("data/facility/screens/run%d/plate/Well%05d/field%05d.tif"
                               % (fs_id, k, k))
        e.originalFile = self.original_file(fs_id, k)
        e.fileset = omero.model.FilesetI(fs_id, False)
        return e

    def fileset(self, fs_id, with_entries):
        fs = omero.model.FilesetI(fs_id, True)
        fs.templatePrefix = rstring("alice_7/2026-11/27/15-58-01.%03d/" % (fs_id % 1000))
        owner = omero.model.ExperimenterI(7, True)
        owner.omeName = rstring("alice")
        group = omero.model.ExperimenterGroupI(3, True)
        group.name = rstring("lab")
        group.details.setPermissions(omero.model.PermissionsI("rwr---"))
        event = omero.model.EventI(fs_id, True)
        event.time = rtime(1_700_000_000_000)
        fs.details.setOwner(owner)
        fs.details.setGroup(group)
        fs.details.setCreationEvent(event)
        if with_entries:
            for k in range(self.sizes[fs_id]):
                fs.addFilesetEntry(self.entry(fs_id, k))
        return fs

    def answer(self, hql, params, ctx):
        self.calls += 1
        ids = [x.val for x in params.map["ids"].val]
        known = [i for i in ids if i in self.sizes]
        if hql == OLD_HQL_FILESETS:
            rows = [self.fileset(i, True) for i in known]
        elif hql == adapter.HQL_FILESETS:
            rows = [self.fileset(i, False) for i in known]
        elif hql == adapter.HQL_ENTRY_COUNTS:
            rows = [[rlong(i), rlong(self.sizes[i])] for i in known if self.sizes[i]]
        elif hql == adapter.HQL_FILESET_ENTRIES:
            f = params.theFilter
            rows = []
            for i in sorted(known):
                ks = range(self.sizes[i])
                if f is not None and f.limit is not None:
                    ks = ks[f.offset.val:f.offset.val + f.limit.val]
                rows += [self.entry(i, k) for k in ks]
        elif hql == adapter.HQL_IMAGE_COUNTS:
            rows = [[rlong(i), rlong(1)] for i in known]
        else:   # HQL_FILESET_TRANSFERS: in-place imports carry one comment
            rows = [[rlong(i), rlong(i), rstring("ome.formats.importer.transfers.SymlinkFileTransfer")]
                    for i in known]
        self.largest = max(self.largest, wire_bytes(rows))
        return rows


def run(sizes: dict, old: bool) -> tuple:
    """(round trips, largest answer in bytes, filesets read) of Port.filesets over `sizes`."""
    world = World(sizes)
    client = mock.create_autospec(omero.clients.BaseClient, instance=True)
    client.sf = mock.create_autospec(omero.api.ServiceFactoryPrx, instance=True)
    query = mock.create_autospec(omero.api.IQueryPrx, instance=True)
    client.sf.getQueryService.return_value = query
    query.projection.side_effect = world.answer
    query.findAllByQuery.side_effect = world.answer
    port = adapter.OmeroPort(client)
    found = _old_filesets(world, sorted(sizes)) if old else port.filesets(sorted(sizes))
    return world.calls, world.largest, len(found)


def _old_filesets(world, ids) -> dict:
    """The replaced plan, query for query: per page of 1000 ids the fetch-everything query and
    the image counts."""
    found = {}
    for page in adapter.batched(ids, adapter.FILESET_PAGE_SIZE):
        params = adapter._ids_params(page)
        for fs in world.answer(OLD_HQL_FILESETS, params, adapter.ALL_GROUPS):
            found[fs.id.val] = fs
        world.answer(adapter.HQL_IMAGE_COUNTS, params, adapter.ALL_GROUPS)
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10000, help="files of the one big fileset")
    parser.add_argument("--filesets", type=int, default=100000, help="filesets of one file each")
    args = parser.parse_args(argv)
    cases = [("1 fileset of %d files" % args.files, {1: args.files}),
             ("%d filesets of 1 file" % args.filesets, {i: 1 for i in range(1, args.filesets + 1)})]
    print("ENTRY_PAGE_SIZE %d, FILESET_PAGE_SIZE %d" % (adapter.ENTRY_PAGE_SIZE,
                                                       adapter.FILESET_PAGE_SIZE))
    for label, sizes in cases:
        for plan, old in (("replaced plan", True), ("adapter", False)):
            calls, largest, n = run(sizes, old)
            assert n == len(sizes)
            print("%-26s %-14s round trips %6d   largest answer %10d bytes (%.1f MiB)"
                  % (label, plan, calls, largest, largest / 1048576))
    return 0


if __name__ == "__main__":
    sys.exit(main())
