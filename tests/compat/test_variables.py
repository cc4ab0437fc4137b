"""Apptainer's environment variables, as the test user through the ``apptainer`` name."""
import pytest

pytestmark = pytest.mark.rootless


def out(r):
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.parametrize("var", ["APPTAINER_BIND", "APPTAINER_BINDPATH", "SINGULARITY_BIND",
                                 "SINGULARITY_BINDPATH"])
def test_bind_variables(as_apptainer, bash_sif, shared_tmp, var):
    (shared_tmp / "f").write_text("bound\n")
    r = as_apptainer("exec", bash_sif, "cat", "/site/f", env={var: f"{shared_tmp}:/site:ro"})
    assert out(r) == "bound"


def test_bind_variable_adds_to_the_command_line(as_apptainer, bash_sif, shared_tmp):
    a, b = shared_tmp / "a", shared_tmp / "b"
    a.mkdir(mode=0o755)
    b.mkdir(mode=0o755)
    r = as_apptainer("exec", "-B", f"{b}:/b", bash_sif, "sh", "-c",
                     'test -d /a && test -d /b && echo "$APPTAINER_BIND|$SINGULARITY_BIND"',
                     env={"APPTAINER_BIND": f"{a}:/a"})
    # Apptainer passes the binds' destinations on, for nested containers; the variable's
    # binds come after the command line's (pflag appends the environment's value)
    assert out(r) == "/b,/a|/b,/a"


def test_flag_variables(as_apptainer, bash_sif, shared_tmp):
    r = as_apptainer("exec", bash_sif, "sh", "-c", 'echo "[$HOSTVAR]"', env={"HOSTVAR": "h"})
    assert out(r) == "[h]"
    for var in ("APPTAINER_CLEANENV", "SINGULARITY_CLEANENV"):
        r = as_apptainer("exec", bash_sif, "sh", "-c", 'echo "[$HOSTVAR]"',
                         env={"HOSTVAR": "h", var: "1"})
        assert out(r) == "[]", var
    r = as_apptainer("exec", bash_sif, "pwd", env={"APPTAINER_CWD": "/opt"})
    assert out(r) == "/opt"
    r = as_apptainer("exec", "--pwd", "/etc", bash_sif, "pwd", env={"APPTAINER_CWD": "/opt"})
    assert out(r) == "/etc"                           # the command line wins
    r = as_apptainer("exec", bash_sif, "sh", "-c", "echo $$", env={"APPTAINER_PID": "true"})
    assert int(out(r)) < 10
    r = as_apptainer("exec", bash_sif, "hostname", env={"SINGULARITY_HOSTNAME": "envhost"})
    assert out(r) == "envhost"
    r = as_apptainer("exec", bash_sif, "true", env={"APPTAINER_CONTAIN": "maybe"})
    assert r.returncode == 2 and "APPTAINER_CONTAIN" in r.stderr
    # APPTAINER_ wins over SINGULARITY_ for the same key
    r = as_apptainer("exec", bash_sif, "hostname",
                     env={"APPTAINER_HOSTNAME": "a1", "SINGULARITY_HOSTNAME": "s1"})
    assert out(r) == "a1"


def test_env_prefixes_and_path(as_apptainer, bash_sif):
    r = as_apptainer("exec", bash_sif, "sh", "-c", 'echo "$A|$B|$PATH"',
                     env={"APPTAINERENV_A": "1", "SINGULARITYENV_B": "2",
                          "SINGULARITYENV_A": "loses",
                          "APPTAINERENV_PREPEND_PATH": "/first",
                          "APPTAINERENV_APPEND_PATH": "/last"})
    a, b, path = out(r).split("|")
    assert (a, b) == ("1", "2")
    # the image's 90-environment.sh sets PATH; 99-runtimevars.sh then adds the requests
    assert path == "/first:/bin:/usr/bin:/sbin:/usr/sbin:/last"
    r = as_apptainer("exec", bash_sif, "sh", "-c", 'echo "$PATH|${SING_USER_DEFINED_PATH:-unset}"',
                     env={"SINGULARITYENV_PATH": "/bin:/only"})
    assert out(r) == "/bin:/only|unset"
    r = as_apptainer("exec", "--env", "PREPEND_PATH=/p", bash_sif, "sh", "-c", 'echo "$PATH"')
    assert out(r).startswith("/p:")


def test_inside_variables_and_no_leak(as_apptainer, bash_sif, test_user):
    r = as_apptainer("exec", "--no-eval", bash_sif, "sh", "-c",
                     'echo "$APPTAINER_COMMAND|$APPTAINER_CONTAINER|$APPTAINER_NAME|'
                     '$APPTAINER_ENVIRONMENT|$SINGULARITY_NAME|$APPTAINER_NO_EVAL|'
                     '${APPTAINER_CACHEDIR:-unset}|${SINGULARITY_TMPDIR:-unset}"',
                     env={"APPTAINER_CACHEDIR": "/host/cache", "SINGULARITY_TMPDIR": "/host/tmp"})
    assert out(r).split("|") == ["exec", str(bash_sif), bash_sif.name,
                                 "/.singularity.d/env/91-environment.sh", bash_sif.name, "1",
                                 "unset", "unset"]
    r = as_apptainer("run", bash_sif, env={})
    r = as_apptainer("exec", bash_sif, "sh", "-c", 'echo "${APPTAINER_BIND:-none}"')
    assert out(r) == "none"


def test_library_path_once(as_apptainer, bash_sif):
    r = as_apptainer("exec", bash_sif, "sh", "-c", 'echo "$LD_LIBRARY_PATH"')
    assert out(r) == "/.singularity.d/libs"
    r = as_apptainer("exec", bash_sif, "sh", "-c", 'echo "$LD_LIBRARY_PATH"',
                     env={"APPTAINERENV_LD_LIBRARY_PATH": "/opt/lib"})
    assert out(r) == "/opt/lib:/.singularity.d/libs"


def test_env_file_is_evaluated(as_apptainer, bash_sif, shared_tmp):
    f = shared_tmp / "vars.env"
    f.write_text('# Apptainer evaluates the file as shell\nexport GREETING="hello $HOSTVAR"\n'
                 'COUNT=3\nif [ "$COUNT" = 3 ]; then THREE=yes; fi\n')
    f.chmod(0o644)
    r = as_apptainer("exec", "--env-file", f, "--env", "COUNT=4", bash_sif, "sh", "-c",
                     'echo "$GREETING|$COUNT|$THREE"', env={"HOSTVAR": "world"})
    assert out(r) == "hello world|4|yes"              # --env wins over the file
    f.write_text("X=1\nrm -rf /tmp/whatever\n")
    r = as_apptainer("exec", "--env-file", f, bash_sif, "true")
    assert r.returncode == 2 and "rm" in r.stderr and r.stderr.count("\n") == 1
