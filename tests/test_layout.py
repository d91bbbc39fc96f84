"""The layout holds: models/ and spaces/ never import search/ or results/, results/ never
imports search/, and in models/ only the trial harness imports Ray (every study runs through
its one trainable)."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


def test_package_dependencies_point_one_way():
    allowed = {"spaces": set(), "models": {"spaces"}, "results": {"models", "spaces"}}
    ours = {"models", "spaces", "results", "search"}
    for package, may in allowed.items():
        for f in (REPO / package).rglob("*.py"):
            bad = (_imports(f) & ours) - may - {package}
            assert not bad, f"{f.relative_to(REPO)} imports {sorted(bad)}"


def test_only_the_trial_harness_imports_ray_in_models():
    users = sorted(f.name for f in (REPO / "models").rglob("*.py") if "ray" in _imports(f))
    assert users == ["trial.py"], users


def test_every_study_runs_through_the_one_trainable():
    from models.registry import STUDIES

    for name, study in STUDIES.items():
        assert study.trainable.__qualname__ == "trainable_for.<locals>.trainable", name
        assert callable(study.setup), name
