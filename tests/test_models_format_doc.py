"""docs/format.md (the users' copy of the format) agrees with the shipped JSON Schema: the
same ops, the same keys per op and at the top level, the same required keys, array dtypes
and integer ranges."""

import re
from pathlib import Path

import pytest

from shiftacc.models import schema
from shiftacc.models.ops import OPS, Array

DOC = Path(__file__).resolve().parent.parent / "docs" / "format.md"


def sections(text):
    """{heading text: [table rows as lists of cells]} for every '#' heading."""
    out, current = {}, None
    for line in text.splitlines():
        if line.startswith("#"):
            current = line.lstrip("#").strip()
            out[current] = []
        elif current and line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            out[current].append([c.strip() for c in line.strip().strip("|").split("|")])
    return {k: rows[1:] for k, rows in out.items()}  # drop each table's header row


def keys(rows):
    return [re.fullmatch(r"`(\w+)`", r[0]).group(1) for r in rows]


@pytest.fixture(scope="module")
def doc():
    return sections(DOC.read_text("utf-8"))


def check_ranges(rows, props, col):
    """The range column starts with the schema's enum or bounds for every integer key."""
    for row in rows:
        p = props[row[0].strip("`")]
        if p.get("type") != "integer":
            continue
        cell = row[col].replace("`", "")
        if "enum" in p:
            want = " or ".join(map(str, p["enum"]))
        elif "maximum" in p:
            want = f"{p['minimum']} to {p['maximum']}"
        else:
            want = f"≥ {p['minimum']}"
        assert cell.startswith(want), f"{row[0]}: doc says {cell!r}, schema {want!r}"


def test_doc_ops_are_the_schema_ops(doc):
    documented = [m.group(1) for h in doc if (m := re.fullmatch(r"`(\w+)`", h))
                  and m.group(1) != "input"]
    assert documented == schema.load()["$defs"]["layer"]["properties"]["op"]["enum"]
    assert documented == list(OPS)


@pytest.mark.parametrize("op", list(OPS))
def test_doc_op_keys_match_schema(doc, op):
    rows = doc[f"`{op}`"]
    d = schema.load()["$defs"][f"op.{op}"]
    assert keys(rows) == [k for k in d["properties"] if k != "op"]
    assert [r[0].strip("`") for r in rows if r[5] == "yes"] == \
        [k for k in d["required"] if k != "op"]
    for row in rows:
        spec = OPS[op].keys[row[0].strip("`")]
        if isinstance(spec, Array):
            assert row[1] == "array name" and row[2] == spec.dtype
        else:
            assert row[1] == "integer" and row[2] == ""
    check_ranges(rows, d["properties"], 4)


def test_doc_top_level_and_input_keys_match_schema(doc):
    s = schema.load()
    top, inp = doc["Top-level keys"], doc["`input`"]
    assert keys(top) == list(s["properties"])
    assert [r[0].strip("`") for r in top if r[3] == "yes"] == s["required"]
    check_ranges(top, s["properties"], 2)
    i = s["$defs"]["input"]
    assert keys(inp) == list(i["properties"])
    assert [r[0].strip("`") for r in inp if r[3] == "yes"] == i["required"]
    check_ranges(inp, i["properties"], 2)


def test_doc_names_shipped_schema_and_version(doc):
    text = DOC.read_text("utf-8")
    assert "shiftacc/models/manifest.schema.json" in text
    assert "format version 2" in text.splitlines()[0]
    for v2 in ("channel_attention", "dynamic_conv1x1", "spatial_attention"):
        assert v2 in text
