"""dvc.yaml stays exact: a stage reruns when, and only when, code it runs or params it reads change.

Code: the deps of each stage must cover the import closure of its command (`python -m stages.X`), and name
nothing outside it. The closure is computed statically with `ast`: every `import` and `from ... import` in a
file, wherever it stands (lazy imports inside functions count, and so do `if TYPE_CHECKING:` ones, which is the
safe side), followed through the project packages; importing `pipeline.a.b` also runs `pipeline/__init__.py`
and `pipeline/a/__init__.py`. Imports made at run time from a string (importlib) are not seen. A file that
holds nothing but a docstring (most `__init__.py`) runs no code, so it need not be a dep; the day it gains a
statement, this test asks for it.

Params: each stage module declares `PARAMS`, the params.yaml sections it reads, and dvc.yaml lists exactly those;
a stage run through the launcher (`python -m pipeline.core.launch stages.X`, which starts torchrun) also lists the
world-size keys of `launch`, and its closure includes the launcher's.
"""

import ast
import re
from collections import deque
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "pipeline", "stages")  # the project's code; everything else is a third-party import
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
# params.yaml sections that are deliberately no stage's DVC param (see the comment at the top of dvc.yaml).
NOT_STAGE_PARAMS = {
    "tracking": "where results are logged (MLflow names), not what they are: every stage reads it",
    "schedule": "when the Prefect flow runs: read by pipeline/orchestration/flow.py, not by a stage",
}
LAUNCHER = "pipeline.core.launch"
WORLD_SIZE_PARAMS = ["launch.nproc_per_node", "launch.nnodes"]  # = pipeline/core/launch.py's WORLD_SIZE_PARAMS


def module_file(name: str) -> Path | None:
    """The file that defines project module `name` (`a/b.py` or `a/b/__init__.py`), or None."""
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def imported_modules(path: Path) -> frozenset[str]:
    """Every module name an import statement anywhere in `path` names, relative imports resolved.

    `from a import b` names both `a` and `a.b`: b may be a submodule; a name that is no module finds no file.
    """
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return frozenset(names)


@cache
def runs_code(path: Path) -> bool:
    """False for a file with no statement but its docstring: editing it cannot change what a stage computes."""
    body = ast.parse(path.read_text(), filename=str(path)).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return bool(body)


def files_run_by_import(name: str) -> list[Path]:
    """The project files `import name` executes: each enclosing package's `__init__.py`, then the module."""
    parts = name.split(".")
    files = (module_file(".".join(parts[:depth])) for depth in range(1, len(parts) + 1))
    return [file for file in files if file is not None]


def import_closure(module: str) -> dict[Path, str]:
    """Every project file running `python -m <module>` imports, each with the file that first imports it."""
    closure = {file: "the command" for file in files_run_by_import(module)}
    queue = deque(closure)
    while queue:
        importer = queue.popleft()
        for name in sorted(imported_modules(importer)):
            for file in files_run_by_import(name):
                if file not in closure:
                    closure[file] = str(importer.relative_to(REPO))
                    queue.append(file)
    return closure


def stage_module(stage: dict) -> str:
    match = re.search(rf"-m\s+(?:{re.escape(LAUNCHER)}\s+)?(stages\.\w+)", stage["cmd"])
    assert match, f"cmd does not run `python -m [{LAUNCHER}] stages.<name>`: {stage['cmd']!r}"
    return match.group(1)


def launched(stage: dict) -> bool:
    return re.search(rf"-m\s+{re.escape(LAUNCHER)}\s", stage["cmd"]) is not None


def code_deps(stage: dict) -> list[str]:
    """The deps that name project code (a package folder or anything inside one), as written in dvc.yaml."""
    return [dep for dep in stage.get("deps", []) if Path(dep).parts[0] in PACKAGES]


def covers(dep: str, file: Path) -> bool:
    target = REPO / dep
    return file == target or target in file.parents


@pytest.mark.parametrize("name", STAGES)
def test_deps_are_the_import_closure_of_the_command(name):
    stage = STAGES[name]
    module = stage_module(stage)
    stage_file = f"{module.replace('.', '/')}.py"
    assert stage_file in stage.get("deps", []), f"stage {name}: list the stage file itself in deps: {stage_file}"
    closure = import_closure(module)
    if launched(stage):
        closure = {**import_closure(LAUNCHER), **closure}
    deps = code_deps(stage)
    problems = [
        f"stage {name}: add to deps {file.relative_to(REPO)} (or a folder above it), imported by {importer}"
        for file, importer in sorted(closure.items())
        if runs_code(file) and not any(covers(dep, file) for dep in deps)
    ]
    problems += [
        f"stage {name}: remove stale dep {dep}: {module} imports no file "
        f"{'under it' if (REPO / dep).is_dir() else 'by that name'}"
        for dep in deps if not any(covers(dep, file) for file in closure)
    ]
    assert not problems, "dvc.yaml deps differ from the import closure:\n" + "\n".join(problems)


def declared_params(stage_file: Path) -> tuple[str, ...]:
    """The literal `PARAMS = (...)` of a stage module, read without importing it (no torch at collection)."""
    for node in ast.parse(stage_file.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PARAMS" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    pytest.fail(f"{stage_file.relative_to(REPO)} declares no PARAMS (the params.yaml sections it reads)")


@pytest.mark.parametrize("name", STAGES)
def test_params_are_the_sections_the_stage_declares(name):
    stage = STAGES[name]
    stage_file = REPO / f"{stage_module(stage).replace('.', '/')}.py"
    declared = declared_params(stage_file)
    listed = stage.get("params", [])
    assert not set(declared) & NOT_STAGE_PARAMS.keys(), \
        f"{stage_file.relative_to(REPO)}: PARAMS must not name {sorted(NOT_STAGE_PARAMS)}: {NOT_STAGE_PARAMS}"
    expected = [*declared, *(WORLD_SIZE_PARAMS if launched(stage) else [])]
    assert sorted(listed, key=str) == sorted(expected), (
        f"stage {name}: dvc.yaml params {listed} differ from PARAMS {list(declared)} of "
        f"{stage_file.relative_to(REPO)}{' and the launcher' if launched(stage) else ''}; list exactly {expected}"
    )


def test_every_params_section_is_read_by_a_stage():
    sections = set(yaml.safe_load((REPO / "params.yaml").read_text()))
    declared = {section for stage in STAGES.values()
                for section in declared_params(REPO / f"{stage_module(stage).replace('.', '/')}.py")}
    declared |= {key.split(".")[0] for stage in STAGES.values() if launched(stage) for key in WORLD_SIZE_PARAMS}
    assert declared <= sections, f"PARAMS name sections params.yaml lacks: {sorted(declared - sections)}"
    unread = sections - declared - NOT_STAGE_PARAMS.keys()
    assert not unread, f"params.yaml sections no stage declares in PARAMS: {sorted(unread)}"
