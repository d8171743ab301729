"""The README's bad-input table names, for each row, the test that checks it: those tests must exist,
or the table promises checks that nobody runs."""
from __future__ import annotations

import ast
import re

from conftest import REPO_ROOT


def defined_tests(path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_test_the_bad_input_table_names_exists():
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme.split("### Bad inputs and what they get", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| input")
            and not line.startswith("| ---")]
    assert len(rows) >= 20, "the bad-input table lost rows"
    missing = []
    for row in rows:
        named = re.findall(r"`(test_\w+\.py)::(test_\w+)`|`::(test_\w+)`", row.rsplit("|", 2)[-2])
        assert named, f"this row names no test: {row[:80]}"
        current_file = None
        for file_name, test_name, same_file_test in named:
            current_file = file_name or current_file
            name = test_name or same_file_test
            if name not in defined_tests(REPO_ROOT / "tests" / current_file):
                missing.append(f"{current_file}::{name}")
    assert not missing, f"the README's bad-input table names tests that do not exist: {missing}"
