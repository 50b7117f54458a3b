"""The package's layers: production code does not load the local server, and importing one
module does not load the rest."""

from __future__ import annotations

import subprocess
import sys


def loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name for name in ran.stdout.split() if name.startswith("kling_expand_plugin")}


def test_importing_one_module_loads_only_what_it_needs():
    assert loaded_after("import kling_expand_plugin.kling.limits") == {
        "kling_expand_plugin",
        "kling_expand_plugin.kling",
        "kling_expand_plugin.kling.limits",
    }


def test_the_stage_and_the_python_api_do_not_load_the_local_server():
    loaded = loaded_after(
        "import kling_expand_plugin.outpaint.api, kling_expand_plugin.outpaint.stage"
    )
    assert not {name for name in loaded if "localserver" in name}


def test_the_host_installs_as_imgpipe_not_hooks():
    import imgpipe

    assert imgpipe.__file__.replace("\\", "/").endswith("hooks/imgpipe/__init__.py")
    loaded = loaded_after("import imgpipe, kling_expand_plugin.outpaint.stage")
    assert "kling_expand_plugin.outpaint.stage" in loaded


def test_no_import_cycle_between_the_package_s_modules():
    import ast
    from pathlib import Path

    root = Path(__file__).parents[1] / "kling_expand_plugin"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        typing_only = {
            id(child)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for child in ast.walk(node)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or id(node) in typing_only:
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                for candidate in (f"{target}.{alias.name}", target):
                    if candidate in graph and candidate != "kling_expand_plugin":
                        graph[name].add(candidate)
                        break

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt}))
            for nxt in graph[start]
        )

    cycles = [name for name in graph if reaches(name, name, {name})]
    assert not cycles, cycles


def test_a_wheel_holds_imgpipe_and_kling_expand_plugin_and_every_subpackage():
    import tomllib
    from pathlib import Path

    from setuptools import find_packages

    root = Path(__file__).parents[1]
    found = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = found["packages"]["find"]
    packages = {
        name
        for where in found["where"]
        for name in find_packages(str(root / where), include=found["include"])
    }
    assert {name.partition(".")[0] for name in packages} == {"imgpipe", "kling_expand_plugin"}
    folders = {
        ".".join(path.parent.relative_to(root / where).parts)
        for where, top in (("hooks", "imgpipe"), (".", "kling_expand_plugin"))
        for path in (root / where / top).rglob("*.py")
    }
    assert folders <= packages, folders - packages


def _layout_section() -> str:
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    return readme.split("\nLayout", 1)[1].split("\n\n", 2)[1]


def test_the_readme_layout_names_every_module_of_each_folder_and_only_those():
    import re
    from pathlib import Path

    root = Path(__file__).parents[1]
    listed: dict[str, set[str]] = {}
    for entry in re.split(r"\n *- ", "\n" + _layout_section()):
        folder = re.match(r"`([\w/]+/)`", entry)
        if folder and folder.group(1).startswith(("hooks/imgpipe/", "kling_expand_plugin/")):
            listed[folder.group(1)] = set(re.findall(r"`(\w+\.py)`", entry)) - {"__init__.py"}
    folders = {
        str(path.parent.relative_to(root)) + "/"
        for top in ("hooks/imgpipe", "kling_expand_plugin")
        for path in (root / top).rglob("*.py")
        if path.parent != root / "kling_expand_plugin"
    }
    assert set(listed) == folders
    for folder, names in listed.items():
        modules = {p.name for p in (root / folder).glob("*.py")} - {"__init__.py", "__main__.py"}
        assert names == modules, folder


def test_the_architecture_page_names_only_modules_that_exist():
    import re
    from pathlib import Path

    root = Path(__file__).parents[1]
    page = (root / "docs" / "architecture.md").read_text()
    existing = {
        path.name
        for top in ("hooks", "kling_expand_plugin", "tests", "bench")
        for path in (root / top).rglob("*.py")
    }
    named = set(re.findall(r"\b(\w+\.py)\b", page))
    assert named - existing == set()


def test_loading_the_plugin_leaves_the_process_s_warnings_as_they_are():
    code = (
        "import warnings; shown = warnings.showwarning\n"
        "from imgpipe import make_plugin_manager\n"
        "make_plugin_manager().stages().get('outpaint')\n"
        "assert warnings.showwarning is shown"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
