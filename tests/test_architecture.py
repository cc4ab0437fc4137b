"""The shape of the code, checked: imports run one way, the launch paths stay import-light, and
the C plugin's option table is the Python one.

Layers (README.md "Layout"): image/ knows nothing of runtime/, schedulers/, cli/, modules/;
runtime/ nothing of schedulers/, cli/, modules/; host/ nothing of schedulers/, cli/, modules/;
schedulers/ and modules/ nothing of cli/.  Top-level modules (errors, config, record, elf,
privsep...) sit below every layer and import none of them, except doctor.py, which checks all.
"""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import helpers

PKG = helpers.REPO / "hpccont"
LAYERS = ("image", "host", "runtime", "schedulers", "modules", "cli")
FORBIDDEN = {
    "image": {"runtime", "schedulers", "cli", "modules", "host"},
    "runtime": {"schedulers", "cli", "modules"},
    "host": {"schedulers", "cli", "modules"},
    "schedulers": {"cli"},
    "modules": {"cli"},
    "cli": set(),
    "": set(LAYERS),          # top-level modules
}
TOP_LEVEL_ABOVE_ALL = {"doctor"}


def _imports(path: Path):
    """(line, absolute module) of every import in a file of the package."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    package = parts if parts[-1] == "__init__" else parts[:-1]
    if package[-1:] == ["__init__"]:
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            if node.module:
                yield node.lineno, mod
            else:
                for a in node.names:
                    yield node.lineno, f"{mod}.{a.name}"


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else ""


def test_imports_run_one_way():
    wrong = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        src = rel.parts[0] if len(rel.parts) > 1 else ""
        if src == "" and rel.stem in TOP_LEVEL_ABOVE_ALL:
            continue
        for line, target in _imports(path):
            if not target.startswith("hpccont."):
                continue
            dst = target.split(".")[1]
            if dst in FORBIDDEN.get(src, set()) and dst in LAYERS:
                wrong.append(f"hpccont/{rel}:{line} imports {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_import_check_can_fail(tmp_path):
    """The walker sees relative imports for what they are (a check that sees nothing passes)."""
    seen = {t for _, t in _imports(PKG / "runtime" / "plan.py")}
    assert "hpccont.runtime.plan_types" in seen and "hpccont.errors" in seen
    assert any(t.startswith("hpccont.host.") for t in seen)


# Modules a launch path must not load: each costs milliseconds on every task of every job.
HEAVY = ("dataclasses", "typing", "yaml", "argparse", "json", "inspect", "hashlib")
PROBE = """
import sys
sys.path.insert(0, {lib!r})
from hpccont.runtime import apply, join
def stop(*a, **k):
    print(" ".join(sorted(m for m in {heavy!r} if m in sys.modules)))
    sys.exit(0)
apply.apply = stop
join.apply_joined = stop
from hpccont.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("args,allowed", [
    (["exec", "{img}", "/bin/true"], ()),
    (["exec", "--nv", "{img}", "/bin/true"], ()),
    (["exec", "--rocm", "--contain", "{img}", "/bin/true"], ()),
    # the per-user MPI discovery cache is JSON
    (["exec", "--mpi", "hybrid", "{img}", "/bin/true"], ("json",)),
    (["slurm", "task", "--step", "7.0", "--opt", "hpccont-image={img}", "--", "/bin/true"], ()),
])
def test_launch_paths_stay_light(busybox_squashfs, args, allowed, tmp_path):
    argv = [a.format(img=busybox_squashfs) for a in args]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SLURM_STEP_TASKS_PER_NODE": "2",
           "SLURM_NODEID": "0"}
    r = subprocess.run([sys.executable, "-IS", "-c",
                        PROBE.format(lib=str(helpers.REPO), heavy=HEAVY), *argv],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split()) - set(allowed)
    assert not loaded, f"{' '.join(args)} imports {sorted(loaded)}"


def test_launch_with_a_site_config_stays_light(busybox_squashfs, tmp_path):
    """Real nodes have /etc/hpccont/hpccont.yaml: the first launch parses it (PyYAML) into the
    user's cache, every later one reads the cached copy without yaml or json."""
    site = tmp_path / "hpccont.yaml"
    site.write_text("runtime:\n  prefetch: true\nmounts:\n  binds: []\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HPCCONT_CONFIG": str(site)}
    import sysconfig     # PyYAML, as the installed launchers find it
    probe = PROBE.replace("sys.path.insert(0, {lib!r})",
                          f"sys.path[0:0] = [{{lib!r}}, {sysconfig.get_paths()['purelib']!r}]")
    argv = [sys.executable, "-IS", "-c", probe.format(lib=str(helpers.REPO), heavy=HEAVY),
            "exec", str(busybox_squashfs), "/bin/true"]
    runs = [subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path,
                           timeout=60) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr
    assert "yaml" in runs[0].stdout.split(), "the first launch should parse the site config"
    assert runs[1].stdout.split() == [], f"a cached config still imports {runs[1].stdout}"


def test_c_option_table_is_the_python_one():
    """spank_plugin/options.c registers exactly common.OPTION_TABLE's options (the image option
    under the plugin's own name), each taking a value exactly when the Python side expects one."""
    from hpccont.schedulers.common import OPTION_TABLE
    text = (helpers.REPO / "spank_plugin" / "options.c").read_text()
    table = text[text.index("static struct spank_option options[]"):text.index("SPANK_OPTIONS_TABLE_END")]
    entries = re.findall(r'\{\s*(HPCCONT_IMAGE_OPTION|"[a-z-]+")\s*,\s*(NULL|"[^"]*")\s*,'
                         r'\s*(?:"(?:[^"\\]|\\.)*"\s*)+,\s*([01])\s*,', table)
    c_options = {("container" if n == "HPCCONT_IMAGE_OPTION" else n.strip('"')): has == "1"
                 for n, _arg, has in entries}
    assert c_options == {name: takes for name, (_attr, takes) in OPTION_TABLE.items()}


def test_readme_layout_names_every_top_level_module():
    text = (helpers.REPO / "README.md").read_text()
    layout = text[text.index("## Layout"):]
    layout = layout[:layout.index("\n## ") if "\n## " in layout else len(layout)]
    names = [p.name for p in PKG.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or
             (p.is_dir() and (p / "__init__.py").exists())]
    missing = [n for n in sorted(names) if (n if n.endswith(".py") else n + "/") not in layout]
    assert not missing, f"README.md's layout does not mention {missing}"
