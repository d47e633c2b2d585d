"""OMERO's default repository path rules, case by case from the Java sources (ome/omero-blitz
`FilePathRestrictionInstance`, `FilePathRestrictions`, `MakePathComponentSafe`, `FsFile`)."""
import os

import pytest

from omero_cli_ext.pathrules import client_path, components, safe_component, safe_path

COMPONENT_CASES = [
    # "Windows required" character map
    ("12:30:00.tif", "12;30;00.tif"),
    ('say "hi"', "say 'hi'"),
    ("a*b", "axb"),
    ("a<b>c", "a[b]c"),
    ("what?", "what%"),
    ("back\\slash", "back!slash"),
    ("pi|pe", "pi!pe"),
    # control characters (Character.CONTROL below U+0100), UNIX required NUL
    ("tab\there", "tab_here"),
    ("nl\nx", "nl_x"),
    ("del\x7fx", "del_x"),
    ("c1\x85x", "c1_x"),
    ("nul\x00x", "nul_x"),
    # reserved names, whatever their case, get the safe character appended
    ("CON", "CON_"), ("con", "con_"), ("Aux", "Aux_"), ("NUL", "NUL_"), ("prn", "prn_"),
    ("COM1", "COM1_"), ("lpt9", "lpt9_"), ("CLOCK$", "CLOCK$_"),
    ("COM0", "COM0"), ("COM10", "COM10"), ("CONSOLE", "CONSOLE"),
    # a reserved name followed by a dot, and NTFS metadata names, get it prepended
    ("CON.txt", "_CON.txt"), ("nul.tar.gz", "_nul.tar.gz"), ("com3.", "_com3."),
    ("$MFT", "_$MFT"), ("$x:y", "_$x;y"),
    # neither prefix nor suffix rules of the optional sets apply by default
    (".hidden", ".hidden"), ("-dash", "-dash"), ("trailing.", "trailing."), ("end ", "end "),
    # dots are names like any other
    ("..", ".."), (".", "."),
    # non-ASCII passes; bytes that were not UTF-8 are what a JVM reads: U+FFFD
    ("café", "café"), ("x\udcffy", "x\ufffdy"),
]


@pytest.mark.parametrize("name,stored", COMPONENT_CASES)
def test_safe_component(name, stored):
    assert safe_component(name) == stored


@pytest.mark.parametrize("name,stored", COMPONENT_CASES)
def test_rules_are_idempotent(name, stored):
    """The server applies the same rules again to names the client already made safe."""
    assert safe_component(stored) == stored


def test_client_path_keeps_dots_and_drops_empty_components():
    assert client_path("/data//run:1/./a/../CON/img?.tif") == "data/run;1/./a/../CON_/img%.tif"


def test_client_path_of_relative_path_prefixes_the_working_directory():
    assert client_path("b/c.tif", cwd="/home/x:y") == "home/x;y/b/c.tif"
    assert components("c.tif") == [p for p in os.getcwd().split("/") if p] + ["c.tif"]


def test_client_path_of_bytes_decodes_like_the_filesystem():
    assert client_path(b"/d/\xff.tif") == "d/\ufffd.tif"


def test_safe_path():
    assert safe_path("alice_3/2026-11/27/a:b/CON") == "alice_3/2026-11/27/a;b/CON_"
