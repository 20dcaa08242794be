"""Imports go one way, down: the application (bdk/) uses the stages, the stages use the foundation (distill/), and
no stage imports another. Read from the source (every import, module level or inside a function), nothing run."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"distill": 0, "teacher": 1, "beam_pipelines": 1, "student": 1, "serving": 1, "bdk": 2}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def violations(root: Path) -> list[str]:
    found = []
    for package, layer in LAYERS.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, target in imports(path):
                if target in LAYERS and target != package and LAYERS[target] >= layer:
                    way = "sideways" if LAYERS[target] == layer else "up"
                    found.append(f"{path.relative_to(root)}:{line} imports {target} ({way})")
    return found


def test_imports_go_one_way_down():
    assert violations(ROOT) == []


def test_the_check_sees_upward_and_sideways_imports(tmp_path):
    for package, body in {"distill": "from bdk import cli\n", "student": "def f():\n    import teacher.export\n",
                          "teacher": "import distill\n", "bdk": "from student import train\n"}.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "m.py").write_text(body)
    assert violations(tmp_path) == ["distill/m.py:1 imports bdk (up)", "student/m.py:2 imports teacher (sideways)"]


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_every_layer_is_a_package(package):
    assert (ROOT / package / "__init__.py").is_file()


# Per-task and per-input behaviour lives on its object (distill/tasks.py, distill/inputs.py): a branch on a task's
# name or on the input kind anywhere else is the start of a parallel code path.
BRANCHES = (r"task(\.name)?\s*[!=]=", r"[!=]=\s*[\"'](classification|regression|dirichlet|table|sequence)[\"']",
            r"\bsequence_shape\b", r"\bis_sequence\w*\(", r"\.kind\s*[!=]=\s*[\"'](table|sequence)")
OWNERS = {"distill/tasks.py", "distill/inputs.py", "distill/sequences.py"}


def branches(root: Path) -> list[str]:
    import re

    pattern = re.compile("|".join(BRANCHES))
    found = []
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            rel = str(path.relative_to(root))
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if rel not in OWNERS and pattern.search(line.split("#")[0]):
                    found.append(f"{rel}:{i}: {line.strip()}")
    return found


def test_no_task_or_input_branches_outside_their_objects():
    assert branches(ROOT) == []


def test_the_branch_check_sees_them(tmp_path):
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "m.py").write_text('if ds.sequence_shape:\n    pass\nok = 1  # task == "x" in a comment\n'
                                                'if cfg.task == "regression": pass\n')
    assert branches(tmp_path) == ["student/m.py:1: if ds.sequence_shape:",
                                  'student/m.py:4: if cfg.task == "regression": pass']
