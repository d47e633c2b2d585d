"""The simulated server's batched reads (a few set-based queries per page of ids) return exactly
what a straightforward per-object computation over the same tables returns, on random worlds with
every permission level, in-progress, ghost (server-failure) and half-uploaded (client-death) imports,
deleted filesets and download restrictions, with pages both larger and smaller than the world."""
import math
import os
import random

import pytest

import sim.server as sim_server
from omero_cli_ext import server as port_api
from omero_cli_ext.server import FilesetActivity, FilesetQuery, ImportLog, Job, RunningImport
from sim.server import ENTITY_TYPES, IMPORT_STEPS, TRANSFER_CLASSES, TRANSFERS, SimServer, _parse

LEVELS = ("rw----", "rwr---", "rwra--", "rwrw--")
# every kind of import, in turn: finished, mid-steps, ghost, uploading, half-uploaded and given up,
# created (nothing sent), slow (verified and stepped at later times)
SHAPES = ("ok", "steps", "server-failure", "uploading", "client-death", "created", "slow")
CONTAINERS = ("Project", "Dataset", "Screen", "Plate", "Image", "Fileset")


# --- a random world ---------------------------------------------------------------------------

def build_world(root, seed: int) -> tuple:
    """A SimServer with random users, groups, containers and imports; returns (sim, user names)."""
    rnd = random.Random(seed)
    sim = SimServer(os.path.join(root, "server"))
    groups = []
    for n, level in enumerate(LEVELS + (rnd.choice(LEVELS),)):
        groups.append("g%d" % n)
        sim.add_group(groups[-1], level)
    users = []
    for n in range(4):
        users.append("u%d" % n)
        extra = rnd.choice(groups)
        sim.add_user(users[-1], [groups[n]] + ([extra] if extra != groups[n] else []))
    users.append("u4")   # downloads restricted, in the shared groups where u1 and u3 import
    sim.add_user("u4", [groups[1], groups[3]], binary_restricted=True)
    users.append("pi")   # leads the private group (reads and edits all of it) and a shared one
    sim.add_user("pi", [groups[0], groups[1]], leads=[groups[0], groups[1]], binary_restricted=True)
    sim.add_user("admin", [groups[0]], admin=True)
    sim.add_user("radmin", [groups[1]], admin=True, privileges={"WriteManagedRepo"})
    sim.set_binary_access(True, group=rnd.choice(groups))
    if rnd.random() < 0.5:
        sim.set_binary_access(True)
    member_of = {u: [g for g in groups if sim.query(
        "SELECT 1 FROM GroupExperimenterMap m JOIN ExperimenterGroup g ON g.id = m.parent "
        "JOIN Experimenter e ON e.id = m.child WHERE g.name = ? AND e.omeName = ?", (g, u))]
        for u in users}
    targets = {g: [] for g in groups}
    for n in range(10):
        owner = rnd.choice(users)
        group = rnd.choice(member_of[owner])
        kind = rnd.choice(("Dataset", "Screen", "ProjectDataset"))
        if kind == "Screen":
            targets[group].append(("Screen", sim.add_screen("s%d" % n, owner, group)))
        else:
            project = sim.add_project("p%d" % n, owner, group) if kind == "ProjectDataset" else None
            targets[group].append(("Dataset", sim.add_dataset("d%d" % n, owner, group,
                                                              project=project)))
    source = os.path.join(root, "src")
    os.makedirs(source)
    sessions = {u: sim.open_session(u) for u in users}   # the port of each check joins it
    fids = []
    for n in range(36):
        owner = rnd.choice(users)
        group = rnd.choice(member_of[owner])
        files = []
        for k in range(rnd.randint(1, 3)):
            files.append(os.path.join(source, "f%02d" % n, "part%d%s" % (k, rnd.choice(
                (".fake", ".txt", ".tif")))))
            os.makedirs(os.path.dirname(files[-1]), exist_ok=True)
            with open(files[-1], "wb") as f:
                f.write(os.urandom(rnd.randint(1, 300)))
        target = rnd.choice(targets[group] + [None])
        spw = target[0] == "Screen" if target else n % 3 == 0
        options = dict(transfer=rnd.choice(TRANSFERS), group=group, target=target, spw=spw,
                       images=rnd.randint(1, 4), session=rnd.choice((sessions[owner], None)))
        shape = SHAPES[n % len(SHAPES)]
        if shape in ("created", "uploading"):
            fids.append(sim.create_import(owner, files, thumbnails=rnd.random() < 0.5, **options))
            for index in range(len(files) if shape == "uploading" else 0):
                sim.advance(rnd.choice((1, 90)))   # a used file is the newest event
                sim.store_file(fids[-1], index, partial=index == len(files) - 1)
        elif shape == "slow":   # the clock moves between upload, verification and each step
            fids.append(sim.create_import(owner, files, **options))
            for index in range(len(files)):
                sim.store_file(fids[-1], index)
            sim.advance(7)
            sim.verify_upload(fids[-1])
            for _ in range(rnd.randint(0, len(IMPORT_STEPS))):
                sim.advance(rnd.choice((1, 90)))
                sim.advance_import(fids[-1])
        elif shape == "steps":
            fids.append(sim.import_fileset(owner, files, steps=rnd.randint(0, len(IMPORT_STEPS) - 1),
                                           **options))
        else:
            fids.append(sim.import_fileset(owner, files, outcome=shape, **options))
        sim.advance(rnd.choice((0, 0.5, 30, 3600)))
    for fid in rnd.sample(fids, 3):
        sim.delete_fileset(fid)
    link_elsewhere(sim, rnd)
    sim.advance(5)   # a fileset moved by a sysadmin's SQL: its own UPDATE is its newest event
    # two files at one repository path (a move gone wrong): a lookup by path finds the first
    (first, path, name), (second, _, _) = sim.query(
        "SELECT id, path, name FROM OriginalFile WHERE mimetype = 'application/octet-stream' "
        "ORDER BY id LIMIT 2")
    with sim.transaction() as db:
        event = sim._event(None, None, "Internal")
        db.execute("UPDATE Fileset SET templatePrefix = 'moved/' WHERE id = ?", (fids[0],))
        sim._log(event, "Fileset", [fids[0]], "UPDATE")
        db.execute("UPDATE OriginalFile SET path = ?, name = ? WHERE id = ?", (path, name, second))
        sim._log(event, "OriginalFile", [second], "UPDATE")
    return sim, users + ["admin", "radmin"]


def link_elsewhere(sim: SimServer, rnd: random.Random) -> None:
    """OMERO lets an image sit in several datasets and a plate in several screens; the simulated
    server has no call for the extra links, so they are inserted here: in filesets of several
    images (plates included), the last image into a dataset, then the first into another; every
    plate into one more screen. (Which container is reported then depends on the image and link
    order, and a plate comes before a dataset.)"""
    datasets = [r[0] for r in sim.query("SELECT id FROM Dataset")]
    screens = [r[0] for r in sim.query("SELECT id FROM Screen")]
    with sim.transaction() as db:
        for first, last in sim.query("SELECT min(id), max(id) FROM Image GROUP BY fileset "
                                     "HAVING count(*) > 1"):
            for image in (last, first):
                db.execute("INSERT INTO DatasetImageLink (parent, child) VALUES (?, ?)",
                           (rnd.choice(datasets), image))
        for (plate,) in sim.query("SELECT id FROM Plate"):
            db.execute("INSERT INTO ScreenPlateLink (parent, child) VALUES (?, ?)",
                       (rnd.choice(screens), plate))


# --- the straightforward computation, one object at a time -------------------------------------

class Reference:
    """What a user reads, computed per object with one simple query at a time."""

    def __init__(self, sim: SimServer, user: str):
        self.sim = sim
        self.uid, self.admin, self.restricted = self.one(
            "SELECT id, admin, binary_restricted FROM Experimenter WHERE omeName = ?", (user,))
        self.groups = {r[0] for r in sim.query(
            "SELECT parent FROM GroupExperimenterMap WHERE child = ?", (self.uid,))}
        self.led = {r[0] for r in sim.query(
            "SELECT parent FROM GroupExperimenterMap WHERE child = ? AND owner = 1", (self.uid,))}

    def one(self, sql, params=()):
        rows = self.sim.query(sql, params)
        return rows[0] if rows else None

    def perms(self, group_id):
        return self.one("SELECT permissions FROM ExperimenterGroup WHERE id = ?", (group_id,))[0]

    def reads(self, owner_id, group_id) -> bool:
        if self.admin or group_id in self.led:
            return True
        return group_id in self.groups and (owner_id == self.uid or self.perms(group_id) != "rw----")

    def reads_fileset(self, fid) -> bool:
        row = self.one("SELECT owner_id, group_id FROM Fileset WHERE id = ?", (fid,))
        return row is not None and self.reads(*row)

    def fileset(self, fid):
        (prefix, owner_id, group_id, creation), = self.sim.query(
            "SELECT templatePrefix, owner_id, group_id, creation_id FROM Fileset WHERE id = ?", (fid,))
        entries = []
        for fe_path, of_id in self.sim.query("SELECT clientPath, originalFile FROM FilesetEntry "
                                             "WHERE fileset = ? ORDER BY id", (fid,)):
            entries.append(port_api.FilesetEntry(fe_path, self.original_file(of_id, True)))
        transfer = self.one(
            "SELECT a.textValue FROM FilesetAnnotationLink l JOIN Annotation a ON a.id = l.child "
            "WHERE l.parent = ? AND a.ns = ? ORDER BY a.id", (fid, port_api.NS_FILE_TRANSFER))
        short = {v: k for k, v in TRANSFER_CLASSES.items()}
        return port_api.Fileset(
            id=fid, template_prefix=prefix, owner_id=owner_id,
            owner_name=self.one("SELECT omeName FROM Experimenter WHERE id = ?", (owner_id,))[0],
            group_id=group_id,
            group_name=self.one("SELECT name FROM ExperimenterGroup WHERE id = ?", (group_id,))[0],
            group_perms=self.perms(group_id), entries=tuple(entries),
            image_count=len(self.images(fid)),
            transfer=short.get(transfer[0], transfer[0]) if transfer else None,
            created=_parse(self.one("SELECT time FROM Event WHERE id = ?", (creation,))[0]))

    def original_file(self, of_id, with_restriction: bool):
        (path, name, size, hash_, hasher, mimetype, repo, owner_id, group_id), = self.sim.query(
            "SELECT path, name, size, hash, hasher, mimetype, repo, owner_id, group_id "
            "FROM OriginalFile WHERE id = ?", (of_id,))
        restricted = False
        if with_restriction and not (self.admin or owner_id == self.uid or group_id in self.led
                                     or name.endswith(".txt")):
            restricted = bool(self.restricted
                              or self.one("SELECT value FROM sim_meta WHERE key = 'binary_access'")[0]
                              or self.one("SELECT binary_access FROM ExperimenterGroup WHERE id = ?",
                                          (group_id,))[0])
        return port_api.OriginalFile(id=of_id, path=path, name=name, size=size, hash=hash_,
                                     hasher=hasher, mimetype=mimetype, repo=repo,
                                     binary_restricted=restricted)

    def images(self, fid):
        return tuple(r[0] for r in self.sim.query("SELECT id FROM Image WHERE fileset = ? ORDER BY id",
                                                  (fid,)))

    def jobs(self, fid):
        return [self.one("SELECT id, kind, status, submitted, started, finished, message "
                         "FROM Job WHERE id = ?", (link[0],))
                for link in self.sim.query("SELECT child FROM FilesetJobLink WHERE parent = ? "
                                           "ORDER BY id", (fid,))]

    def newest(self, kind, oid, updates_only=False):
        times = [self.one("SELECT time FROM Event WHERE id = ?", (event,))[0]
                 for event, action in self.sim.query(
                     "SELECT event, action FROM EventLog WHERE entityType = ? AND entityId = ?",
                     (ENTITY_TYPES[kind], oid))
                 if action == "UPDATE" or not updates_only]
        return max(times, default=None), len(times)

    def activity(self, fid):
        jobs, log, objects = [], None, [("Fileset", fid)]
        for job_id, kind, status, submitted, started, finished, message in self.jobs(fid):
            shown = port_api.UPLOAD_JOB if kind == port_api.UPLOAD_JOB else port_api.OTHER_JOB
            jobs.append(Job(id=job_id, fileset_id=fid, kind=shown, status=status,
                            submitted=_parse(submitted), started=_parse(started),
                            finished=_parse(finished), message=message))
            objects.append((kind, job_id))
            for (of_id,) in self.sim.query("SELECT child FROM JobOriginalFileLink WHERE parent = ? "
                                           "ORDER BY id", (job_id,)):
                objects.append(("OriginalFile", of_id))
                of = self.original_file(of_id, False)
                if log is None and of.mimetype == port_api.MIMETYPE_IMPORT_LOG:
                    updated, updates = self.newest("OriginalFile", of_id, updates_only=True)
                    log = ImportLog(fileset_id=fid, original_file_id=of_id, size=of.size or 0,
                                    updated=_parse(updated), updates=updates,
                                    repo_path=of.repo_path)
        objects += [("OriginalFile", r[0]) for r in self.sim.query(
            "SELECT originalFile FROM FilesetEntry WHERE fileset = ?", (fid,))]
        objects += [("Image", i) for i in self.images(fid)]
        times = [t for t in (self.newest(kind, oid)[0] for kind, oid in objects) if t is not None]
        return FilesetActivity(fileset_id=fid, jobs=tuple(jobs), image_count=len(self.images(fid)),
                               log=log, last_event=_parse(max(times, default=None)))

    def containers(self, fid):
        """Every container of the fileset's images, one query at a time; plates before
        datasets, then the least (type, name, ...) tuple."""
        plates, datasets = [], []
        for image in self.images(fid):
            for (well,) in self.sim.query("SELECT well FROM WellSample WHERE image = ?", (image,)):
                plate_id, = self.one("SELECT plate FROM Well WHERE id = ?", (well,))
                plate = self.one("SELECT name FROM Plate WHERE id = ?", (plate_id,))[0]
                screens = self.sim.query("SELECT s.name FROM ScreenPlateLink l JOIN Screen s "
                                         "ON s.id = l.parent WHERE l.child = ?", (plate_id,))
                plates += [("Screen", s, "Plate", plate) for (s,) in screens] or [("Plate", plate)]
            for (dataset_id,) in self.sim.query("SELECT parent FROM DatasetImageLink WHERE child = ?",
                                                (image,)):
                dataset = self.one("SELECT name FROM Dataset WHERE id = ?", (dataset_id,))[0]
                projects = self.sim.query("SELECT p.name FROM ProjectDatasetLink l JOIN Project p "
                                          "ON p.id = l.parent WHERE l.child = ?", (dataset_id,))
                datasets += [("Project", p, "Dataset", dataset) for (p,) in projects] \
                    or [("Dataset", dataset)]
        return min(plates or datasets or [()])

    def filesets_of(self, kind, oid):
        """None when the container is missing or unreadable, else its readable filesets."""
        row = self.one("SELECT owner_id, group_id FROM %s WHERE id = ?" % kind, (oid,))
        if row is None or not self.reads(*row):
            return None
        if kind == "Fileset":
            fids = {oid}
        elif kind == "Image":
            fids = {self.one("SELECT fileset FROM Image WHERE id = ?", (oid,))[0]}
        else:
            images = self.images_in(kind, oid)
            fids = {self.one("SELECT fileset FROM Image WHERE id = ?", (i,))[0] for i in images}
        return tuple(sorted(f for f in fids if f is not None and self.reads_fileset(f)))

    def images_in(self, kind, oid):
        children = {"Project": ("ProjectDatasetLink", "Dataset"), "Screen": ("ScreenPlateLink", "Plate")}
        if kind in children:
            link, child = children[kind]
            return [i for (c,) in self.sim.query("SELECT child FROM %s WHERE parent = ?" % link, (oid,))
                    for i in self.images_in(child, c)]
        if kind == "Dataset":
            return [r[0] for r in self.sim.query("SELECT child FROM DatasetImageLink WHERE parent = ?",
                                                 (oid,))]
        return [r[0] for r in self.sim.query(
            "SELECT ws.image FROM Well w JOIN WellSample ws ON ws.well = w.id WHERE w.plate = ?", (oid,))]

    def running(self, session):
        """listImports as `session` sees it: every process ever registered in the user's groups,
        less those whose fileset (in the session's group) the user cannot edit; other sessions'
        not asked, this session's closed ones gone."""
        session_group = self.one("SELECT group_id FROM sim_session WHERE uuid = ?", (session,))[0]
        result = []
        for fid, owner, group_id, closed in self.sim.query(
                "SELECT fileset, session, group_id, closed FROM sim_process ORDER BY id"):
            if group_id not in self.groups:
                continue
            row = self.one("SELECT owner_id, group_id FROM Fileset WHERE id = ?", (fid,))
            loaded = row and row[1] == session_group and (   # loadFilesets: readable there
                self.admin or row[0] == self.uid or row[1] in self.led
                or self.perms(row[1]) != "rw----")
            if loaded and not (self.admin or row[0] == self.uid or row[1] in self.led
                               or self.perms(row[1]) == "rwrw--"):
                continue
            if owner != session:
                result.append(RunningImport(fileset_id=0, own_session=False))
                continue
            if closed:
                continue
            imported = self.one("SELECT uploaded FROM sim_import WHERE fileset = ?", (fid,))
            uploaded = imported[0] if imported else 0   # its fileset deleted since
            result.append(RunningImport(fileset_id=fid if uploaded else 0))
        return result

    def file_at(self, key):
        path, name = key.rsplit("/", 1) if "/" in key else ("", key)
        for (of_id,) in self.sim.query("SELECT id FROM OriginalFile WHERE path = ? AND name = ? "
                                       "AND repo = ? ORDER BY id",   # the managed repository's
                                       (path + "/" if path else "/", name, self.sim.uuid)):
            owner_id, group_id = self.one("SELECT owner_id, group_id FROM OriginalFile WHERE id = ?",
                                          (of_id,))
            if self.reads(owner_id, group_id):
                fileset = self.one("SELECT fileset FROM FilesetEntry WHERE originalFile = ?", (of_id,))
                return (fileset[0] if fileset else None, self.original_file(of_id, False))
        return None


# --- the comparison ---------------------------------------------------------------------------

@pytest.fixture(scope="module", params=[11, 23, 42])
def world(request, tmp_path_factory):
    sim, users = build_world(str(tmp_path_factory.mktemp("world%d" % request.param)), request.param)
    yield sim, users
    sim.close()


@pytest.mark.parametrize("page", [3, 500])
def test_batched_reads_equal_the_per_object_computation(world, page, monkeypatch):
    sim, users = world
    monkeypatch.setattr(sim_server, "PAGE", page)
    rnd = random.Random(page)
    top = sim.query("SELECT max(id) FROM Fileset")[0][0]
    ids = list(range(1, top + 3))          # deleted and never-existing ids included
    rnd.shuffle(ids)
    refs = [(kind, oid) for kind in CONTAINERS for oid in range(1, 12)]
    rnd.shuffle(refs)
    repo_keys = [p.lstrip("/") + n for p, n in sim.query("SELECT path, name FROM OriginalFile")]
    repo_keys += ["nowhere/missing.fake", "ManagedRepository"]
    for user in users:
        first = sim.query("SELECT uuid FROM sim_session s JOIN Experimenter e ON e.id = s.user_id "
                          "WHERE e.omeName = ? ORDER BY s.rowid LIMIT 1", (user,))
        session = first[0][0] if first else sim.open_session(user)
        port, ref = sim.port(user, session=session), Reference(sim, user)
        readable = [f for f in sorted(set(ids)) if ref.reads_fileset(f)]
        filesets = {f: ref.fileset(f) for f in readable}
        assert port.filesets(ids) == filesets, user
        newest_first = sorted(readable, key=lambda f: (filesets[f].created, f), reverse=True)
        assert list(port.find_filesets(FilesetQuery())) == [filesets[f] for f in newest_first], user
        since = filesets[newest_first[len(newest_first) // 2]].created if readable else sim.now()
        query = FilesetQuery(owner_id=ref.uid, since=since, ids=tuple(ids[: len(ids) // 2]))
        assert list(port.find_filesets(query)) == [
            filesets[f] for f in newest_first if filesets[f].owner_id == ref.uid
            and filesets[f].created >= query.since and f in query.ids], user
        before = sim.round_trips
        assert port.activity(ids) == {f: ref.activity(f) for f in readable}, user
        pages = math.ceil(len(ids) / page)   # eight queries a page, a ninth when it has logs
        assert 8 * pages <= sim.round_trips - before <= 9 * pages
        assert port.containers_of(ids) == {f: ref.containers(f) for f in readable}, user
        assert port.images_of(ids) == {f: ref.images(f) for f in readable}, user
        expected_of = {r: ref.filesets_of(*r) for r in refs}
        assert port.filesets_of(refs) == {r: v for r, v in expected_of.items() if v is not None}, user
        assert port.running_imports() == ref.running(session), user
        expected_files = {k: ref.file_at(k) for k in repo_keys}
        assert port.files_by_repo_paths(repo_keys) == {
            k: v for k, v in expected_files.items() if v is not None}, user


def test_the_random_worlds_hold_every_kind_of_import(world):
    """The comparison means something only if the worlds have what it is about."""
    sim, users = world
    outcomes = {r[0] for r in sim.query("SELECT outcome FROM sim_import")}
    assert outcomes == {"ok", "server-failure", "client-death"}
    assert sim.query("SELECT count(*) FROM sim_import WHERE outcome = 'ok' AND uploaded = 1 "
                     "AND steps_done < ?", (len(IMPORT_STEPS),))[0][0] > 0
    assert sim.query("SELECT count(*) FROM sim_import WHERE uploaded = 0")[0][0] > 0
    kinds = {r for r in sim.query(
        "SELECT p.closed, s.uploaded, p.session = (SELECT s2.uuid FROM sim_session s2 "
        " WHERE s2.user_id = ss.user_id ORDER BY s2.rowid LIMIT 1) "
        "FROM sim_process p JOIN sim_import s ON s.fileset = p.fileset "
        "JOIN sim_session ss ON ss.uuid = p.session")}
    assert {(0, 0), (0, 1), (1, 1)} <= {k[:2] for k in kinds}   # uploading, verified open, closed
    assert {k[2] for k in kinds} == {0, 1}                       # in a checked session or not
    assert {r[0] for r in sim.query("SELECT permissions FROM ExperimenterGroup")} >= set(LEVELS)
    assert sim.query("SELECT count(*) FROM Plate")[0][0] > 0
    assert sim.query("SELECT count(*) FROM ProjectDatasetLink")[0][0] > 0
    restricted = {e.original_file.binary_restricted for user in users
                  for f in sim.port(user).find_filesets(FilesetQuery()) for e in f.entries}
    assert restricted == {True, False}
    assert len(sim.port("admin").find_filesets(FilesetQuery())) < sim.query(
        "SELECT max(id) FROM Fileset")[0][0]   # some were deleted
