"""Directory walks that hold one descriptor at a time (each child opened from its parent, the
parent then closed) must never close a descriptor twice when Ctrl-C lands between the close of
the parent and the step to the child: the second close would close whatever descriptor the
number was given to meanwhile (another thread's open chunk file, DEST itself)."""
from __future__ import annotations

import os

import pytest

from omero_cli_ext.export import dest as dest_io, state
from omero_cli_ext.zarr import store

REAL_CLOSE = os.close


class SignalAfterFirstClose:
    """os.close that closes, and on its first call raises KeyboardInterrupt after closing (the
    signal handled right after the call returned); every descriptor closed is recorded."""

    def __init__(self):
        self.closed = []

    def __call__(self, fd):
        REAL_CLOSE(fd)
        self.closed.append(fd)
        if len(self.closed) == 1:
            raise KeyboardInterrupt


def _walks(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    return {
        "zarr.store.open_path": (store, lambda: store.open_path(
            os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY), ["a", "b", "c"], False, 0o755)),
        "export.dest.open_dest": (dest_io, lambda: dest_io.open_dest(str(deep), create=False)),
        "export.dest.chain": (dest_io, lambda: dest_io.chain(
            os.open(str(deep), os.O_RDONLY | os.O_DIRECTORY))),
        "export.state.open_root": (state, lambda: state.open_root(str(tmp_path / "state"))),
    }


@pytest.mark.parametrize("walk", ["zarr.store.open_path", "export.dest.open_dest",
                                  "export.dest.chain", "export.state.open_root"])
def test_ctrl_c_between_closing_the_parent_and_stepping_down_closes_nothing_twice(
        tmp_path, monkeypatch, walk):
    module, run = _walks(tmp_path)[walk]
    close = SignalAfterFirstClose()
    monkeypatch.setattr(module.os, "close", close)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.undo()
    assert len(close.closed) == len(set(close.closed)), close.closed
