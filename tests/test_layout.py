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
    # The trial harness, and the packed trial (the engine's thin client) beside it.
    users = sorted(str(f.relative_to(REPO / "models")) for f in (REPO / "models").rglob("*.py")
                   if "ray" in _imports(f))
    assert users == ["packed/trial.py", "trial.py"], users


def test_every_study_runs_through_the_one_trainable():
    from models.registry import STUDIES

    for name, study in STUDIES.items():
        assert study.trainable.__qualname__ == "trainable_for.<locals>.trainable", name
        assert callable(study.setup), name


def _module_level_imports(path: Path, modules: set[str]) -> set[str]:
    """Our modules imported when ``path`` is imported (not inside functions, not in
    ``if TYPE_CHECKING:`` blocks, which hold annotations only)."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for n in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else ():
            if isinstance(n, ast.ImportFrom) and n.module and not n.level:
                out |= {c for c in (n.module, *(f"{n.module}.{a.name}" for a in n.names))
                        if c in modules}
            elif isinstance(n, ast.Import):
                out |= {a.name for a in n.names if a.name in modules}
    return out


def test_module_imports_have_no_cycle():
    files = {}
    for package in ("models", "search", "results", "spaces"):
        for f in (REPO / package).rglob("*.py"):
            name = ".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            files[name] = f
    graph = {m: _module_level_imports(f, set(files)) - {m} for m, f in files.items()}
    done, path = set(), []

    def visit(m):
        assert m not in path, "import cycle: " + " -> ".join(path[path.index(m):] + [m])
        if m in done:
            return
        path.append(m)
        for dep in sorted(graph[m]):
            visit(dep)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)
