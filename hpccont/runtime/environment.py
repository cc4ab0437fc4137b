"""The container's environment, following Apptainer's rules so that existing images behave.

Order of precedence (lowest first):
  1. the host environment (all of it, or only the essentials with --cleanenv), minus variables
     that only make sense on the host (PATH, LD_LIBRARY_PATH, PS1 ...);
  2. the image's /.singularity.d/env/*.sh scripts (sourced by a shell inside, at apply time);
  3. HPCCONT_ENV_K / APPTAINERENV_K / SINGULARITYENV_K from the host, then --env-file, then --env.
Variables of level 3 are re-applied after the image's scripts ran: the user's word wins.
"""
from __future__ import annotations


from ..errors import UsageError
from ..record import factory, record

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APPTAINER_ENVIRONMENT = "/.singularity.d/env/91-environment.sh"
CONTAINER_LIBS = "/.singularity.d/libs"

# Never carried in from the host: they describe the host, not the container.
HOST_ONLY = ("PATH", "LD_LIBRARY_PATH", "LD_PRELOAD", "PS1", "PROMPT_COMMAND", "PYTHONHOME",
             "HPCCONT_BIND")
# What --cleanenv keeps: Apptainer's alwaysPassKeys (internal/pkg/util/env/create.go), plus
# HOME, USER and LOGNAME, which the launch sets to the container user's anyway.
CLEAN_KEEP = ("HOME", "USER", "LOGNAME", "TERM", "http_proxy", "HTTP_PROXY", "https_proxy",
              "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "ftp_proxy",
              "FTP_PROXY")
# Prefixes that set a variable inside the container (Apptainer's spellings for compatibility).
INJECT_PREFIXES = ("SINGULARITYENV_", "APPTAINERENV_", "HPCCONT_ENV_")
# Settings of Apptainer's command line: never forwarded into the container (Apptainer sets its
# own APPTAINER_CONTAINER, APPTAINER_NAME... there).
HOST_SETTINGS_PREFIXES = ("APPTAINER_", "SINGULARITY_")
UNSET_PREFIXES = INJECT_PREFIXES + HOST_SETTINGS_PREFIXES
# APPTAINERENV_<NAME> that change PATH through the image's 99-runtimevars.sh, as Apptainer
# passes them; APPTAINERENV_HOME is refused (the home is the container's), as in Apptainer.
PATH_KEYS = {"PREPEND_PATH": "SING_USER_DEFINED_PREPEND_PATH",
             "APPEND_PATH": "SING_USER_DEFINED_APPEND_PATH", "PATH": "SING_USER_DEFINED_PATH"}
NOT_OVERRIDABLE = ("HOME", "APPTAINER_SHELL", "APPTAINER_APPNAME", "SINGULARITY_SHELL",
                   "SINGULARITY_APPNAME")
# Shell variables an --env-file may not set (bash's read-only ones, as Apptainer skips them).
READ_ONLY_VARS = ("EUID", "GID", "HOME", "IFS", "OPTIND", "PWD", "UID")


def parse_env_assignment(text: str, where: str = "--env") -> tuple[str, str]:
    if "=" not in text:
        raise UsageError(f"{where}: expected NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    if not name or not (name[0].isalpha() or name[0] == "_") or not all(
            c.isalnum() or c == "_" for c in name):
        raise UsageError(f"{where}: invalid variable name {name!r}")
    return name, value


def read_env_file(path: str, environ=None, image: str = "") -> dict[str, str]:
    """An ``--env-file`` as Apptainer reads it: a shell script evaluated with the host's
    variables visible (not exported) and ``set -a`` (every assignment is exported), commands
    refused; the result is every exported variable (bash's read-only names left out)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            text = f.read()
    except OSError as e:
        raise UsageError(f"--env-file {path}: {e.strerror}")
    if "\0" in text:
        # no variable can hold a NUL byte (execve would refuse the environment)
        raise UsageError(f"--env-file {path}: contains a NUL byte (not a text file)")
    from .envscripts import Unsupported, parse
    base = dict(environ or {})
    if image:
        base["APPTAINER_IMAGE"] = image
    sh = _all_export_shell(base)
    try:
        sh.run(parse(text))
    except Unsupported as e:
        raise UsageError(f"--env-file {path}: {e} (only assignments, export, unset, if, for "
                         "and test are evaluated; commands are not run)") from None
    except (ValueError, IndexError) as e:
        raise UsageError(f"--env-file {path}: cannot parse: {e}") from None
    return {k: v for k, v in sorted(sh.environment().items()) if k not in READ_ONLY_VARS}


def _all_export_shell(base: dict[str, str]):
    """A Shell whose initial variables are not exported and whose assignments are (set -a)."""
    from .envscripts import Shell, _assignment

    class AllExport(Shell):
        def __init__(self, environ):
            super().__init__(environ)
            self.exported = set()

        def simple(self, words):
            names = []
            for w in words:
                if not _assignment(w):
                    break
                names.append(w.parts[0][1].partition("=")[0])
            super().simple(words)
            if len(names) == len(words):
                self.exported.update(names)
    return AllExport(base)


def injected(environ: dict[str, str]) -> dict[str, str]:
    """HPCCONT_ENV_K (and the Apptainer spellings) -> {K: value}; APPTAINERENV_ wins over
    SINGULARITYENV_ (as in Apptainer), HPCCONT_ENV_ over both."""
    out: dict[str, str] = {}
    items = [(k, v) for k, v in environ.items() if k.startswith(INJECT_PREFIXES)]
    for prefix in INJECT_PREFIXES:
        for k, v in items:
            if k.startswith(prefix) and len(k) > len(prefix):
                out[k[len(prefix):]] = v
    return out


def path_requests(values: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Split injected values into (plain overrides, SING_USER_DEFINED_* variables): PATH,
    PREPEND_PATH and APPEND_PATH act through the image's 99-runtimevars.sh, as in Apptainer;
    HOME and Apptainer's own shell/app names may not be set this way."""
    plain: dict[str, str] = {}
    path: dict[str, str] = {}
    for k, v in values.items():
        if k in PATH_KEYS:
            path[PATH_KEYS[k]] = v
        elif k not in NOT_OVERRIDABLE:
            plain[k] = v
    return plain, path


def _filtered(environ: dict[str, str], keep_only, unset, unset_prefixes) -> dict[str, str]:
    if keep_only is not None:
        return {k: environ[k] for k in keep_only if k in environ}
    return {k: v for k, v in environ.items()
            if k not in unset and not k.startswith(tuple(unset_prefixes))}


def base_environment(environ: dict[str, str], *, cleanenv: bool) -> dict[str, str]:
    return _filtered(environ, CLEAN_KEEP if cleanenv else None, HOST_ONLY, UNSET_PREFIXES)


@record
class EnvDelta:
    """How the container environment is made from a host environment, as data.

    ``apply_delta`` is the rule (the SPANK plugin's C side applies the same four steps to each
    task's own environment, see spank_plugin/recipe.c):
      1. keep only ``keep_only`` (--cleanenv), or else drop ``unset`` and ``unset_prefixes``;
      2. set ``set`` (fixed values: HOME, PATH, the image's names, the user's overrides);
      3. copy each of ``copy`` from the host environment, when it is there (variables whose
         value differs from task to task, passed by name, e.g. --container-env=SLURM_PROCID).
    ``overrides`` (a subset of ``set``) is what the shell re-applies after the image's env scripts.
    """
    set: dict[str, str]
    overrides: dict[str, str]
    unset: tuple[str, ...] = HOST_ONLY
    unset_prefixes: tuple[str, ...] = UNSET_PREFIXES
    keep_only: tuple[str, ...] | None = None
    copy: list[str] = factory(list)


def apply_delta(delta: EnvDelta, environ: dict[str, str]) -> dict[str, str]:
    env = _filtered(environ, delta.keep_only, delta.unset, delta.unset_prefixes)
    env.update(delta.set)
    env.update({k: environ[k] for k in delta.copy if k in environ})
    return env


def environment_delta(environ: dict[str, str], *, cleanenv: bool, user_env: dict[str, str],
                      home: str, user: str, image_path: str, ld_paths: list[str] = (),
                      bin_paths: list[str] = (), pass_names: list[str] = (), action: str = "",
                      bind_targets: list[str] = (), no_eval: bool = False) -> EnvDelta:
    """The rules of this module as an EnvDelta (``environ`` gives the injected variables).

    Inside, as Apptainer sets them: APPTAINER_CONTAINER and _NAME (the image), _COMMAND (the
    action), _BIND (the user binds' destinations, for nested containers), _ENVIRONMENT (where
    %post-style code may add variables), _NO_EVAL with --no-eval; each also as SINGULARITY_."""
    fixed: dict[str, str] = {"HOME": home, "USER": user, "LOGNAME": user}
    fixed["PATH"] = ":".join(list(bin_paths) + [DEFAULT_PATH])
    ld = list(ld_paths)
    fixed["LD_LIBRARY_PATH"] = ":".join(ld + ([] if CONTAINER_LIBS in ld else [CONTAINER_LIBS]))
    name = image_path.rstrip("/").rsplit("/", 1)[-1]
    # Not HPCCONT_CONTAINER: that name asks the batch system for a container, and would make
    # every srun/qsub started inside this container wrap its tasks in the same image.
    fixed["HPCCONT_IMAGE_PATH"] = image_path
    fixed["HPCCONT_NAME"] = name
    for prefix in ("APPTAINER", "SINGULARITY"):
        fixed[f"{prefix}_CONTAINER"] = image_path
        fixed[f"{prefix}_NAME"] = name
        fixed[f"{prefix}_ENVIRONMENT"] = APPTAINER_ENVIRONMENT
        if action:
            fixed[f"{prefix}_COMMAND"] = action
        if bind_targets:
            fixed[f"{prefix}_BIND"] = ",".join(bind_targets)
        if no_eval:
            fixed[f"{prefix}_NO_EVAL"] = "1"
    values = injected(environ)
    values.update(user_env)
    overrides, path_vars = path_requests(values)
    if overrides.get("LD_LIBRARY_PATH"):   # as Apptainer's injected variables do
        overrides["LD_LIBRARY_PATH"] += ":" + CONTAINER_LIBS
    fixed.update(path_vars)     # read (and unset) by the image's 99-runtimevars.sh
    fixed.update(overrides)
    return EnvDelta(set=fixed, overrides=overrides, keep_only=CLEAN_KEEP if cleanenv else None,
                    copy=list(pass_names))


def container_environment(environ: dict[str, str], *, cleanenv: bool, user_env: dict[str, str],
                          home: str, user: str, image_path: str, ld_paths: list[str] = (),
                          bin_paths: list[str] = (), action: str = "",
                          bind_targets: list[str] = (), no_eval: bool = False
                          ) -> tuple[dict[str, str], dict[str, str]]:
    """Returns (environment to exec with, overrides to re-apply after the image's env scripts)."""
    delta = environment_delta(environ, cleanenv=cleanenv, user_env=user_env, home=home, user=user,
                              image_path=image_path, ld_paths=ld_paths, bin_paths=bin_paths,
                              action=action, bind_targets=bind_targets, no_eval=no_eval)
    return apply_delta(delta, environ), dict(delta.overrides)


def shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def env_script(overrides: dict[str, str], ld_paths: list[str],
               env_dirs: list[str] = ("/.singularity.d/env",)) -> str:
    """Shell run inside the container before the command: source the image's env scripts, then
    put back what the user asked for, then check the command exists (one clear line, exit 127)."""
    lines = [f'for f in {d}/*.sh; do [ -f "$f" ] && . "$f"; done' for d in env_dirs]
    for k, v in overrides.items():
        lines.append(f"export {k}={shell_quote(v)}")
    if ld_paths:
        # host libraries (--nv, MPI bind mode) must stay first even if the image reset the path
        lines.append(f'export LD_LIBRARY_PATH={shell_quote(":".join(ld_paths))}'
                     '${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}')
    # each LD_LIBRARY_PATH entry once (the launch and 99-base.sh both add /.singularity.d/libs)
    lines.append('_hl=; _ho=$IFS; IFS=:; for _hp in ${LD_LIBRARY_PATH:-}; do case ":$_hl:" in '
                 '*":$_hp:"*) ;; *) _hl=${_hl:+$_hl:}$_hp ;; esac; done; IFS=$_ho; '
                 '[ -n "$_hl" ] && export LD_LIBRARY_PATH="$_hl"; unset _hl _ho _hp')
    lines.append('command -v "$1" >/dev/null 2>&1 || '
                 '{ echo "hpccont: $1: command not found in the container" >&2; exit 127; }')
    lines.append('exec "$@"')
    return "; ".join(lines)
