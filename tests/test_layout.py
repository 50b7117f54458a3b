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
    assert loaded_after("import kling_expand_plugin.limits") == {
        "kling_expand_plugin",
        "kling_expand_plugin.limits",
    }


def test_the_stage_and_the_python_api_do_not_load_the_local_server():
    loaded = loaded_after("import kling_expand_plugin.api, kling_expand_plugin.stage")
    assert not {name for name in loaded if "localserver" in name}


def test_the_host_installs_as_imgpipe_not_hooks():
    import imgpipe

    assert imgpipe.__file__.replace("\\", "/").endswith("hooks/imgpipe/__init__.py")
    loaded = loaded_after("import imgpipe, kling_expand_plugin.stage")
    assert "kling_expand_plugin.stage" in loaded
