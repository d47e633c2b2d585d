"""The journal's step packs give back exactly the steps they were given."""
from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings, strategies as st

from omero_cli_ext.journal import JournalError
from omero_cli_ext.mv.packing import PackError, pack_steps, unpack_steps
from omero_cli_ext.mv.plan import PHASES, Step

# any bytes but NUL, never empty: what a path or a symlink target can be
paths = st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b)
maybe_int = st.none() | st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1)
maybe_text = st.none() | st.text(max_size=20)
steps = st.builds(Step, kind=st.sampled_from(sorted(PHASES)), path=paths,
                  other=st.none() | paths, old=st.none() | paths, new=st.none() | paths,
                  size=maybe_int, mode=maybe_int, uid=maybe_int, gid=maybe_int,
                  mtime_ns=maybe_int, hasher=maybe_text, hash=maybe_text,
                  fileset=maybe_int, state=st.sampled_from(["pending", "done", "skipped"]),
                  note=maybe_text)


@settings(max_examples=300, deadline=None)
@given(st.lists(steps, min_size=1, max_size=30), st.integers(min_value=0, max_value=10 ** 9))
def test_a_pack_gives_back_its_steps(given_steps, first_seq):
    for seq, step in enumerate(given_steps, first_seq):
        step.seq = seq
    assert unpack_steps(pack_steps(given_steps), first_seq) == given_steps


def test_a_relink_pack_is_small():
    """Columns of one value and repeated path prefixes cost next to nothing."""
    plan = [Step("retarget", b"/repo/u/%d/f" % i, None, b"/data/old/u/%d/f" % i,
                 b"/data/new/u/%d/f" % i, 100, seq=i) for i in range(4096)]
    raw = sum(len(s.path) + len(s.old) + len(s.new) for s in plan)
    assert len(pack_steps(plan)) < raw / 4
    assert unpack_steps(pack_steps(plan), 0) == plan


def test_an_empty_path_is_refused():
    with pytest.raises(ValueError, match="path is empty"):
        pack_steps([Step("retarget", b"")])


@pytest.mark.parametrize("damage", [
    lambda data: data[:-3],                                              # truncated
    lambda data: b"not zlib",
    lambda data: zlib.compress(b'{"format": 99}\n'),                     # another format
    lambda data: zlib.compress(zlib.decompress(data).replace(b'"count":2', b'"count":3')),
])
def test_a_damaged_pack_is_a_journal_error(damage):
    data = pack_steps([Step("unlink", b"/a", seq=0), Step("unlink", b"/b", size=3, seq=1)])
    with pytest.raises(PackError, match="does not decode") as raised:
        unpack_steps(damage(data), 0)
    assert isinstance(raised.value, JournalError)
