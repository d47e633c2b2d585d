"""The shared scenarios (tests/scenarios.py) on the simulated server.

The same functions run on a real server in tests/integration/test_scenarios_real.py.
"""
from __future__ import annotations

import os

import pytest

import scenarios
from sim.server import SimServer

ADMIN = "root"   # SimServer creates root in group system, as a fresh OMERO server has it


class SimWorld:
    """scenarios.World over a SimServer: names are used as given (each test has its own server)."""

    def __init__(self, root: str, data_dir: str):
        self.sim = SimServer(root)
        self.data_dir = data_dir
        self._projects = {}

    def add_group(self, name, perms):
        self.sim.add_group(name, perms)
        return name

    def add_user(self, name, groups, *, admin=False, leads=()):
        self.sim.add_user(name, list(groups), admin=admin, leads=list(leads))
        return name

    def add_dataset(self, name, owner, group, *, project=None):
        project_id = None
        if project is not None:
            project_id = self._projects.get(project) or self.sim.add_project(project, owner, group)
            self._projects[project] = project_id
        return self.sim.add_dataset(name, owner, group, project=project_id)

    def _fake_file(self, owner, name):
        path = os.path.join(self.data_dir, owner, f"{name}.fake")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(f"fake image {name}\n".encode())
        return path

    def import_fake(self, owner, group, name, *, dataset=None):
        path = self._fake_file(owner, name)
        target = ("Dataset", dataset) if dataset is not None else None
        return self.sim.import_fileset(owner, [path], group=group, target=target), path

    def start_upload(self, owner, name):
        importer = self.sim.port(owner)
        fileset = self.sim.create_import(owner, [self._fake_file(owner, name)],
                                         session=importer.session_login()[2])
        self.sim.store_file(fileset, 0, partial=True)
        return importer, lambda: self.sim.close_import_process(fileset)

    def port(self, user):
        return self.sim.port(user)

    def timed_port(self, user, *, time_to_live_ms=0, time_to_idle_ms=0):
        return self.sim.port(user, time_to_live_ms=time_to_live_ms, time_to_idle_ms=time_to_idle_ms)

    def admin_port(self):
        return self.sim.port(ADMIN)

    def wait(self, seconds):
        self.sim.advance(seconds)


@pytest.fixture
def world(tmp_path):
    return SimWorld(str(tmp_path / "server"), str(tmp_path / "data"))


@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_scenario_on_the_simulated_server(name, world):
    scenarios.SCENARIOS[name](world)
