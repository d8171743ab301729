"""The bad-input table (docs/cli.md, moved there from the README) names, for each row, the test that checks
it: those tests must exist, and must hold the row's message (or the table promises checks that nobody runs)."""
from __future__ import annotations

import ast
import re

import pytest
from conftest import REPO_ROOT

# A table message shows one example of a line whose paths, names and numbers vary: these are the
# parts a test writes otherwise (f-strings, tmp_path), so only the words between them are compared.
VARYING = re.compile(r"\S*[/\\]\S*|\S*\d\S*|'[^'\s]*'|\.\.\.|\(\.\.\.\)|~\S*|\S+\.(?:py|pth|json|jpg|png)\b\S*"
                     r"|\bSIG[A-Z]+\b")
MIN_WORDS = 4  # shorter runs of words ("not found;") say too little to name a row's message


def bad_input_rows() -> list[str]:
    cli_reference = (REPO_ROOT / "docs" / "cli.md").read_text()
    table = cli_reference.split("### Bad inputs and what they get", 1)[1].split("\n## ", 1)[0]
    return [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| input")
            and not line.startswith("| ---")]


def named_tests(row: str) -> list[tuple[str, str]]:
    """(file, test) for each test the row's last column names; `::name` is in the file named before it."""
    named, current_file = [], None
    for file_name, test_name, same_file_test in re.findall(r"`(test_\w+\.py)::(test_\w+)`|`::(test_\w+)`",
                                                           row.rsplit("|", 2)[-2]):
        current_file = file_name or current_file
        named.append((current_file, test_name or same_file_test))
    return named


def row_messages(row: str) -> list[str]:
    """The backquoted example lines of the row's message column."""
    return re.findall(r"`([^`]+)`", row.split(" | ")[2])


def fixed_phrases(message: str) -> list[str]:
    """The runs of at least MIN_WORDS words of ``message`` between the parts that vary."""
    phrases = []
    for part in VARYING.split(message):
        words = part.replace("(", " ").replace(")", " ").split()
        while words and not any(character.isalnum() for character in words[0]):
            words.pop(0)  # a ';' left by the varying part before it belongs to no phrase of its own
        while words and not any(character.isalnum() for character in words[-1]):
            words.pop()
        if len(words) >= MIN_WORDS:
            phrases.append(" ".join(words))
    return phrases


def _render(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(part.value if isinstance(part, ast.Constant) else " {} " for part in node.values)
    return None


def strings_of_test(path, name: str) -> str:
    """Every string the test function holds (its parametrize lists too), and those of the module-level
    functions and constants it uses, f-string fields as ``{}``; parentheses, backquotes (which a
    markdown code span cannot show) and spacing folded."""
    tree = ast.parse(path.read_text())
    top = {node.name if hasattr(node, "name") else getattr(node.targets[0], "id", None): node
           for node in tree.body if isinstance(node, (ast.FunctionDef, ast.Assign))}
    test = top[name]
    used = sorted({node.id for node in ast.walk(test) if isinstance(node, ast.Name)} & set(top))
    texts = [text for node in [test, *(top[n] for n in used)] for child in ast.walk(node)
             if (text := _render(child)) is not None]
    return " ".join(" ".join(text.replace("(", " ").replace(")", " ").replace("`", "").split()) for text in texts)


def test_every_test_the_bad_input_table_names_exists():
    rows = bad_input_rows()
    assert len(rows) >= 20, "the bad-input table lost rows"
    missing = []
    for row in rows:
        named = named_tests(row)
        assert named, f"this row names no test: {row[:80]}"
        for file_name, name in named:
            tree = ast.parse((REPO_ROOT / "tests" / file_name).read_text())
            if name not in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}:
                missing.append(f"{file_name}::{name}")
    assert not missing, f"the bad-input table (docs/cli.md) names tests that do not exist: {missing}"


@pytest.mark.parametrize("row", bad_input_rows(), ids=lambda row: row.split(" | ")[0].strip("| ")[:60])
def test_the_tests_a_row_names_hold_its_message(row):
    """Each fixed phrase of each example line is in one of the tests the row names."""
    tested = " ".join(strings_of_test(REPO_ROOT / "tests" / file_name, name) for file_name, name in named_tests(row))
    phrases = [phrase for message in row_messages(row) for phrase in fixed_phrases(message)]
    assert phrases, f"the row shows no message to check: {row[:100]}"
    absent = [phrase for phrase in phrases if phrase not in tested]
    assert not absent, f"the tests this row names do not hold these parts of its message: {absent}"


def test_the_check_catches_a_test_that_does_not_hold_the_message(tmp_path):
    test_file = tmp_path / "test_example.py"
    test_file.write_text('def test_x(tmp_path):\n    assert "checkpoint" in err\n'
                         'def test_y(tmp_path):\n    assert err == f"checkpoint {tmp_path} not found; give the path "'
                         '\\\n        f"of a .pth file written by pisa-train"\n')
    phrases = fixed_phrases("checkpoint w.pth not found; give the path of a .pth file written by pisa-train")
    assert phrases == ["not found; give the path of a .pth file written by pisa-train"]
    assert phrases[0] not in strings_of_test(test_file, "test_x")
    assert phrases[0] in strings_of_test(test_file, "test_y")
