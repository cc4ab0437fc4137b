"""The recipe ``hpccont slurm prepare`` hands to the plugin, and the environment rules it carries.

The C side (spank_plugin/recipe.c) is compiled here with a small driver and fed the same recipe
and task environments as the Python rules (runtime/environment.py), so both must agree.
"""
import subprocess
from pathlib import Path

import pytest

from hpccont.errors import HpccontError, SchedulerError
from hypothesis import given, settings, strategies as st

from hpccont.runtime import environment as E
from hpccont.schedulers import slurm
from hpccont.schedulers.slurm import recipe as slurm_recipe

PLUGIN_SRC = Path(__file__).resolve().parents[2] / "spank_plugin"

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "recipe.h"
/* driver RECIPE ENVFILE ARGV0: prints the task environment the plugin would exec with */
static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = malloc(1 << 20);
	*len = fread(buf, 1, 1 << 20, f);
	fclose(f);
	return buf;
}
int main(int argc, char **argv)
{
	struct recipe r;
	size_t rlen, elen, i;
	char *rdata = slurp(argv[1], &rlen), *edata = slurp(argv[2], &elen);
	char **env = calloc(elen + 1, sizeof(char *)), **out, *targv[] = { argv[3], NULL };
	int n = 0;
	(void)argc;
	for (i = 0; i < elen; i += strlen(edata + i) + 1)
		env[n++] = edata + i;
	if (recipe_parse(&r, rdata, rlen) != 0)
		return 2;
	for (out = recipe_environment(&r, env, targv); *out; out++)
		fwrite(*out, 1, strlen(*out) + 1, stdout);
	return 0;
}
"""

names = st.sampled_from(["HOME", "PATH", "USER", "TERM", "LANG", "SLURM_PROCID", "MYVAR", "X",
                         "LD_PRELOAD", "HPCCONT_ENV_A", "APPTAINERENV_B", "SINGULARITYENV_X",
                         "PS1", "HPCCONT_BIND", "OTHER"])
values = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                 max_size=8)
environs = st.dictionaries(names, values, max_size=10)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    d = tmp_path_factory.mktemp("recipe")
    (d / "driver.c").write_text("#include <string.h>\n" + DRIVER)
    exe = d / "driver"
    r = subprocess.run(["cc", "-std=gnu99", "-Wall", "-Werror", f"-I{PLUGIN_SRC}", "-o", str(exe),
                        str(d / "driver.c"), str(PLUGIN_SRC / "recipe.c")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

    def run(recipe: bytes, env: dict, argv0: str = "true") -> dict:
        (d / "recipe").write_bytes(recipe)
        (d / "env").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
        out = subprocess.run([str(exe), str(d / "recipe"), str(d / "env"), argv0],
                             capture_output=True, check=True).stdout
        return dict(e.decode().split("=", 1) for e in out.split(b"\0")[:-1])
    return run


def _delta(environ, cleanenv, user_env, pass_names=()):
    return E.environment_delta(environ, cleanenv=cleanenv, user_env=user_env, home="/home/u",
                               user="u", image_path="/img/a.sif", ld_paths=["/host/lib"],
                               bin_paths=["/host/bin"], pass_names=list(pass_names))


def _recipe(delta, prefix=()):
    return slurm.Recipe(mode="rootless", keeper=1234, keeper_start="99", host_cwd="/w",
                        cwd="/w", prefix=list(prefix), env=delta,
                        state_files=["/tmp/s/join-x", "/tmp/s/join-x.lock"])


@settings(max_examples=60, deadline=None)
@given(environs, st.booleans(), st.dictionaries(names, values, max_size=3))
def test_delta_is_container_environment(environ, cleanenv, user_env):
    env, overrides = E.container_environment(
        environ, cleanenv=cleanenv, user_env=user_env, home="/home/u", user="u",
        image_path="/img/a.sif", ld_paths=["/host/lib"], bin_paths=["/host/bin"])
    delta = _delta(environ, cleanenv, user_env)
    assert E.apply_delta(delta, environ) == env
    assert delta.overrides == overrides


def test_recipe_round_trip():
    delta = _delta({"HPCCONT_ENV_A": "1"}, True, {"B": "x=y\nz"}, ["SLURM_PROCID"])
    r = _recipe(delta, ["/bin/sh", "-c", "exec \"$@\"", "hpccont"])
    fields = slurm.parse_recipe(slurm.recipe_bytes(r))
    assert fields["m"] == ["rootless"] and fields["p"] == ["1234"] and fields["t"] == ["99"]
    assert fields["a"] == ["/bin/sh", "-c", "exec \"$@\"", "hpccont"]
    assert fields["K"] == [""] and fields["k"] == list(E.CLEAN_KEEP)
    assert "B=x=y\nz" in fields["s"] and "A=1" in fields["s"]
    assert fields["c"] == ["SLURM_PROCID"]
    assert fields["f"] == ["/tmp/s/join-x", "/tmp/s/join-x.lock"]
    assert set(fields) <= set(slurm.RECIPE_TAGS)


def test_recipe_refuses_nul():
    delta = _delta({}, False, {"A": "a\0b"})
    with pytest.raises(SchedulerError):
        slurm.recipe_bytes(_recipe(delta))


@settings(max_examples=40, deadline=None)
@given(environs, environs, st.booleans(), st.dictionaries(names, values, max_size=3),
       st.lists(names, max_size=3))
def test_c_environment_matches_python(driver, prepare_env, task_extra, cleanenv, user_env,
                                      pass_names):
    """What prepare saw, then a task environment with per-task differences: C == Python."""
    delta = _delta(prepare_env, cleanenv, user_env, pass_names)
    task_env = dict(prepare_env, **task_extra)
    assert driver(slurm.recipe_bytes(_recipe(delta)), task_env) == E.apply_delta(delta, task_env)


def test_c_shell_prompt(driver):
    delta = _delta({}, False, {})
    assert driver(slurm.recipe_bytes(_recipe(delta)), {}, "/bin/sh")["PS1"] == "Hpccont> "
    # the host's PS1 is not carried in (HOST_ONLY); the user's override is
    assert driver(slurm.recipe_bytes(_recipe(delta)), {"PS1": "$ "}, "/bin/sh")["PS1"] == "Hpccont> "
    assert "PS1" not in driver(slurm.recipe_bytes(_recipe(delta)), {}, "true")
    delta = _delta({"HPCCONT_ENV_PS1": "$ "}, False, {})
    assert driver(slurm.recipe_bytes(_recipe(delta)), {}, "/bin/sh")["PS1"] == "$ "


def test_c_refuses_truncated_recipe(driver, tmp_path):
    data = slurm.recipe_bytes(_recipe(_delta({}, False, {})))
    with pytest.raises(subprocess.CalledProcessError) as e:
        driver(data[:-1], {})
    assert e.value.returncode == 2


def test_prepare_without_container_or_with_a_bad_image():
    """No container asked: no recipe.  A bad image: an error, so no recipe either, and every
    task then goes through run_task, which reports it to the user (prepare's output is not
    shown)."""
    step = slurm.StepId("1", "0")
    args = slurm.parse_plugin_args([])
    env = {"SLURM_STEP_TASKS_PER_NODE": "1", "SLURM_NODEID": "0"}
    assert slurm.prepare_step(step, args, {}, ["true"], env, "/") is None
    env["HPCCONT_CONTAINER"] = "/nonexistent.sif"
    with pytest.raises(HpccontError, match="not found"):
        slurm.prepare_step(step, args, {}, ["true"], env, "/")

def test_image_scripts_folded_into_the_delta():
    """What the image's env scripts change, evaluated once, becomes part of the tasks' delta
    (no shell per task); a variable each task copies (--container-env) keeps the task's own
    value even where a script sets it: the host's value wins, as in Pyxis."""
    from hpccont.runtime.environment import EnvDelta, apply_delta
    host = {"HOME": "/h", "BAR": "1", "SLURM_PROCID": "0", "KEEP": "k"}
    delta = EnvDelta(set={"PATH": "/bin"}, overrides={}, copy=["SLURM_PROCID"])
    before = apply_delta(delta, host)
    evaluated = dict(before, PATH="/opt/app/bin:/bin", FOO="from-image")
    del evaluated["BAR"]
    merged = slurm_recipe._with_scripts_applied(delta, host, evaluated)
    assert merged is not None and apply_delta(merged, host) == evaluated
    other_task = dict(host, SLURM_PROCID="5")
    assert apply_delta(merged, other_task)["SLURM_PROCID"] == "5"
    assert "BAR" not in apply_delta(merged, other_task)
    clean = EnvDelta(set={"PATH": "/bin"}, overrides={}, keep_only=("HOME", "BAR"))
    evaluated = {"HOME": "/h", "PATH": "/bin:/x"}
    merged = slurm_recipe._with_scripts_applied(clean, host, evaluated)
    assert merged is not None and apply_delta(merged, host) == evaluated
    conflict = dict(apply_delta(delta, host), SLURM_PROCID="changed-by-script")
    merged = slurm_recipe._with_scripts_applied(delta, host, conflict)
    assert merged is not None
    assert apply_delta(merged, other_task)["SLURM_PROCID"] == "5"
