"""`omero mv -h` and docs/mv.md name every exit code the command can end with; the manual is
installed where -h points."""
from __future__ import annotations

import configparser
import os
import re

from omero_cli_ext.mv import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _codes_in_errors_module() -> set:
    return {value for name, value in vars(errors).items() if name.startswith("EXIT_")
            and isinstance(value, int)} | {0, 20, 21, 22}


def test_every_exit_code_is_in_the_table_help_and_manual():
    codes = _codes_in_errors_module()
    assert set(errors.EXIT_CODES) == codes
    with open(os.path.join(ROOT, "docs", "mv.md"), encoding="utf-8") as f:
        manual = f.read()
    section = manual[manual.index("## Exit codes"):manual.index("## Measures")]
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", section, re.M)}
    assert documented == codes
    from omero_cli_ext.cli.mv import help_text
    text = help_text()
    assert {int(m) for m in re.findall(r"^\s+(\d+)  ", text, re.M)} == codes


def test_help_points_at_a_manual_that_is_installed_with_the_package():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    installed = {target: value.split() for target, value in
                 parser.items("options.data_files")}
    assert "docs/mv.md" in installed["share/doc/omero-cli-ext"]
    from omero_cli_ext.cli.mv import help_text, manual_path
    assert manual_path().endswith(os.path.join("omero-cli-ext", "mv.md")) or \
        manual_path() == os.path.join(ROOT, "docs", "mv.md")
    assert os.path.exists(manual_path()) and manual_path() in help_text()
