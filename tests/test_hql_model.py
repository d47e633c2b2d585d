"""Every HQL string of the adapter resolves against the OMERO model (tests/data/omero-model.json).

The table is derived from ome/omero-model `src/main/resources/mappings/*.ome.xml` (a copy of
../shared/omero-model.json, see its "source"). Aliases come from `from X x`, `, X x` and
`[left outer] join [fetch] a.b c`; every `alias.field.field` must then exist on the alias's class
or a superclass, `details.*` through the implicit Details members. A misspelt field fails here,
not on a user's server.
"""
from __future__ import annotations

import json
import os
import re

import pytest

MODEL_PATH = os.path.join(os.path.dirname(__file__), "data", "omero-model.json")

# Details (ome.model.internal.Details) members and the class each one points to
DETAILS_MEMBERS = {"owner": "Experimenter", "group": "ExperimenterGroup",
                   "creationEvent": "Event", "updateEvent": "Event",
                   "externalInfo": "ExternalInfo", "permissions": None}

_STRING = re.compile(r"'[^']*'")
_FROM = re.compile(r"\b(?i:from)\s+([A-Z]\w*)\s+(?:as\s+)?(\w+)((?:\s*,\s*[A-Z]\w*\s+(?:as\s+)?\w+)*)")
_MORE_FROM = re.compile(r",\s*([A-Z]\w*)\s+(?:as\s+)?(\w+)")
_JOIN = re.compile(r"\bjoin\s+(?:fetch\s+)?([a-z]\w*(?:\.\w+)+)\s+(?:as\s+)?(\w+)")
_PATH = re.compile(r"(?<![\w:.])([a-z]\w*)((?:\.\w+)+)")


class Model:
    """Classes and their fields; link classes named only by a `target` field are synthesized."""

    def __init__(self, table: dict):
        self.classes = {name: dict(spec) for name, spec in table["classes"].items()}
        for owner, spec in table["classes"].items():
            for field in spec["fields"].values():
                link = field.get("type")
                if "target" in field and link not in self.classes:
                    self.classes[link] = {"superclass": None, "fields": {
                        "id": {"type": "long"}, "details": {"type": "Details"},
                        "parent": {"type": owner}, "child": {"type": field["target"]}}}

    def field_type(self, cls: str, field: str):
        """Type name of `cls.field`, looking in superclasses; KeyError when absent."""
        name = cls
        while name is not None:
            spec = self.classes[name]
            if field in spec["fields"]:
                return spec["fields"][field]["type"]
            name = spec.get("superclass")
        raise KeyError(f"{cls} has no field {field!r}")


def aliases_of(hql: str, model: Model) -> dict:
    text = _STRING.sub("''", hql)
    aliases = {}
    for match in _FROM.finditer(text):
        pairs = [(match.group(1), match.group(2))] + _MORE_FROM.findall(match.group(3))
        for cls, alias in pairs:
            if cls not in model.classes:
                raise KeyError(f"unknown class {cls!r}")
            aliases[alias] = cls
    for path, alias in _JOIN.findall(text):
        aliases[alias] = resolve(path, aliases, model)
    return aliases


def resolve(path: str, aliases: dict, model: Model):
    """Class (or None for a value) reached by `alias.field.field`; KeyError when a step is absent."""
    head, *fields = path.split(".")
    if head not in aliases:
        raise KeyError(f"unknown alias {head!r} in {path!r}")
    current = aliases[head]
    for field in fields:
        if current is None:
            raise KeyError(f"{path!r}: cannot go past a value at {field!r}")
        if current == "Details":
            if field not in DETAILS_MEMBERS:
                raise KeyError(f"{path!r}: Details has no member {field!r}")
            current = DETAILS_MEMBERS[field]
            continue
        kind = model.field_type(current, field)
        current = kind if (kind in model.classes or kind == "Details") else None
    return current


def check_hql(hql: str, model: Model) -> list:
    """Every problem found in one HQL string (empty when it resolves)."""
    problems = []
    try:
        aliases = aliases_of(hql, model)
    except KeyError as err:
        return [str(err)]
    text = _STRING.sub("''", hql)
    for head, rest in _PATH.findall(text):
        try:
            resolve(head + rest, aliases, model)
        except KeyError as err:
            problems.append(str(err))
    return problems


def adapter_hql() -> dict:
    from omero_cli_ext import omero_adapter
    found = {}
    for name, value in vars(omero_adapter).items():
        if not name.startswith("HQL_"):
            continue
        if isinstance(value, dict):
            found.update({f"{name}[{key}]": hql for key, hql in value.items()})
        else:
            found[name] = value
    return found


@pytest.fixture(scope="module")
def model():
    with open(MODEL_PATH) as fh:
        return Model(json.load(fh))


def test_the_adapter_has_hql_to_check():
    queries = adapter_hql()
    assert len(queries) >= 20
    assert all(isinstance(q, str) and " from " in q for q in queries.values())


@pytest.mark.parametrize("name", sorted(adapter_hql()))
def test_adapter_hql_resolves_against_the_model(name, model):
    hql = adapter_hql()[name]
    assert check_hql(hql, model) == [], hql


@pytest.mark.parametrize("hql, expected", [
    ("select fs.templatePrefx from Fileset fs", "no field 'templatePrefx'"),
    ("select f.id from Fileset fs join fs.usedFiles fe join fe.originalFil f",
     "no field 'originalFil'"),
    ("select fs.details.ownr.id from Fileset fs", "Details has no member 'ownr'"),
    ("select x.id from Fileset fs", "unknown alias 'x'"),
    ("select f.id from OrignalFile f", "unknown class 'OrignalFile'"),
    ("select f.name.value from OriginalFile f", "cannot go past a value"),
    ("select a.textValue from FilesetAnnotationLink l join l.child a", "no field 'textValue'"),
])
def test_checker_rejects_wrong_names(hql, expected, model):
    problems = check_hql(hql, model)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("hql", [
    "select a.textValue, a.ns from CommentAnnotation a",                    # via superclasses
    "select u.status.value from UploadJob u",                                # Job fields
    "select fs.details.owner.omeName, fs.details.creationEvent.time from Fileset fs",
    "select l.parent.templatePrefix from FilesetAnnotationLink l",          # synthesized link
    "select el.event.time from EventLog el where el.entityType = 'x.y.Z'",  # literals ignored
])
def test_checker_accepts_model_names(hql, model):
    assert check_hql(hql, model) == []


def test_every_hql_string_is_listed_in_the_server_contract():
    doc_path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "server-contract.md")
    with open(doc_path) as fh:
        doc = fh.read()
    missing = [name for name, hql in adapter_hql().items() if hql not in doc]
    assert missing == [], "add these to docs/server-contract.md: %s" % missing
