"""The shared scenarios (tests/scenarios.py) on a real OMERO server, through the omero-py adapter.

Users and groups get a per-run prefix (a real server outlives a test run); files are imported
with the real `omero import` (Java importer) of omero-py, as `*.fake` files of Bio-Formats'
FakeReader.
"""
from __future__ import annotations

import os
import time
import uuid

import pytest
import yaml

import scenarios
from omero_cli_ext import pathrules

PASSWORD = "omero-cli-ext-test"


class RealWorld:
    """scenarios.World on a real server, set up through IAdmin/IUpdate as root."""

    def __init__(self, root_client, data_dir: str):
        import omero
        self._omero = omero
        self.root = root_client
        self.admin = root_client.sf.getAdminService()
        self.host = root_client.getProperty("omero.host") or os.environ.get("OMERO_HOST", "localhost")
        self.port_number = int(root_client.getProperty("omero.port") or "4064")
        self.data_dir = data_dir
        self.prefix = "cx" + uuid.uuid4().hex[:8]
        self._clients = []

    def _unique(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def add_group(self, name, perms):
        from omero.model import ExperimenterGroupI, PermissionsI
        from omero.rtypes import rbool, rstring
        group = ExperimenterGroupI()
        group.name = rstring(self._unique(name))
        group.ldap = rbool(False)
        group.details.setPermissions(PermissionsI(perms))
        self.admin.createGroup(group)
        return group.name.val

    def add_user(self, name, groups, *, admin=False, leads=()):
        from omero.model import ExperimenterI
        from omero.rtypes import rbool, rstring
        user = ExperimenterI()
        user.omeName = rstring(self._unique(name))
        user.firstName, user.lastName = rstring("Test"), rstring(name)
        user.ldap = rbool(False)
        default, *others = [self.admin.lookupGroup(g) for g in groups]
        others.append(self.admin.lookupGroup("user"))
        if admin:
            others.append(self.admin.lookupGroup("system"))
        uid = self.admin.createExperimenterWithPassword(user, rstring(PASSWORD), default, others)
        for group in leads:   # IAdmin.addGroupOwners: a PI of that group
            self.admin.addGroupOwners(self.admin.lookupGroup(group),
                                      [self._omero.model.ExperimenterI(uid, False)])
        return user.omeName.val

    def _session(self, user: str):
        client = self._omero.client(self.host, self.port_number)
        client.createSession(user, PASSWORD)
        self._clients.append(client)
        return client

    def add_dataset(self, name, owner, group, *, project=None):
        from omero.model import DatasetI, ProjectI
        from omero.rtypes import rstring
        ctx = {"omero.group": str(self.admin.lookupGroup(group).id.val)}
        update = self._session(owner).sf.getUpdateService()
        dataset = DatasetI()
        dataset.name = rstring(name)
        dataset = update.saveAndReturnObject(dataset, ctx)
        if project is not None:
            container = ProjectI()
            container.name = rstring(project)
            container.linkDataset(DatasetI(dataset.id.val, False))
            update.saveAndReturnObject(container, ctx)
        return dataset.id.val

    def _fake_file(self, owner, name):
        folder = os.path.join(self.data_dir, owner)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{name}.fake")
        with open(path, "wb") as fh:
            fh.write(f"fake image {name}\n".encode())
        return path

    def import_fake(self, owner, group, name, *, dataset=None):
        from omero.cli import CLI
        path = self._fake_file(owner, name)
        out, err = path + ".yaml", path + ".err"
        argv = ["import", "-s", self.host, "-p", str(self.port_number), "-u", owner, "-w", PASSWORD,
                "-g", group, "--output", "yaml", "--file", out, "--errs", err]
        if dataset is not None:
            argv += ["-T", f"Dataset:id:{dataset}"]
        cli = CLI()
        cli.loadplugins()
        cli.invoke(argv + [path], strict=True)
        with open(out) as fh:
            documents = [doc for doc in yaml.safe_load_all(fh) if doc]
        (result,) = [item for doc in documents for item in doc]
        return int(result["Fileset"]), path

    def start_upload(self, owner, name):
        """As omero-py's testlib (create_fileset, create_settings, upload_folder) drives
        ManagedRepository.importFileset, stopping before verifyUpload."""
        import omero.grid
        from omero.model import ChecksumAlgorithmI, FilesetEntryI, FilesetI, UploadJobI
        from omero.model.enums import ChecksumAlgorithmSHA1160
        from omero.rtypes import rbool, rstring
        path = self._fake_file(owner, name)
        client = self._session(owner)
        fileset = FilesetI()
        entry = FilesetEntryI()
        entry.setClientPath(rstring(pathrules.client_path(path)))
        fileset.addFilesetEntry(entry)
        fileset.linkJob(UploadJobI())
        settings = omero.grid.ImportSettings()
        settings.doThumbnails, settings.noStatsInfo = rbool(True), rbool(False)
        settings.checksumAlgorithm = ChecksumAlgorithmI()
        settings.checksumAlgorithm.value = rstring(ChecksumAlgorithmSHA1160)
        process = client.getManagedRepository().importFileset(fileset, settings)
        uploader = process.getUploader(0)
        with open(path, "rb") as fh:
            data = fh.read()
        uploader.write(data[:len(data) // 2], 0, len(data) // 2)

        def close_process():
            uploader.close()
            process.close()
        return self._own(client), close_process

    def _own(self, client):
        """A port that owns `client` (its close() ends the session)."""
        from omero_cli_ext.omero_adapter import OmeroPort
        self._clients.remove(client)
        return OmeroPort(client, owns_client=True)

    def port(self, user):
        return self._own(self._session(user))

    def timed_port(self, user, *, time_to_live_ms=0, time_to_idle_ms=0):
        experimenter = self.admin.lookupExperimenter(user)
        group = self.admin.getDefaultGroup(experimenter.id.val).name.val
        session = self.root.sf.getSessionService().createSessionWithTimeouts(
            self._omero.sys.Principal(user, group, "User"), time_to_live_ms, time_to_idle_ms)
        client = self._omero.client(self.host, self.port_number)
        client.joinSession(session.getUuid().val)
        self._clients.append(client)
        return self._own(client)

    def admin_port(self):
        from omero_cli_ext.omero_adapter import OmeroPort
        return OmeroPort(self.root)

    def wait(self, seconds):
        time.sleep(seconds)

    def close(self):
        for client in self._clients:
            client.closeSession()


@pytest.fixture
def world(root_client, tmp_path):
    real = RealWorld(root_client, str(tmp_path))
    yield real
    real.close()


def test_repository_is_the_servers_managed_repository(omero_port):
    repo = omero_port.repository()
    assert repo.uuid and repo.root.endswith("ManagedRepository")
    assert omero_port.current_user().is_full_admin


@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_scenario_on_a_real_server(name, world):
    scenarios.SCENARIOS[name](world)
