"""The program as Apptainer's CLI: the names, ``compat install``, versions, global flags,
shell completion and run-help."""
import os
import subprocess




def test_versions(hpccont, as_apptainer):
    assert as_apptainer("--version").stdout == "apptainer version 1.3.6\n"
    assert as_apptainer("--version", prog="singularity").stdout == "apptainer version 1.3.6\n"
    # `apptainer version` prints the bare number (cmd/internal/cli/apptainer.go VersionCmd)
    assert as_apptainer("version").stdout == "1.3.6\n"
    r = hpccont("--version")
    assert r.stdout.startswith("hpccont ") and "apptainer" not in r.stdout


def test_compat_install_is_opt_in_and_keeps_real_programs(hpccont, tmp_path):
    real = tmp_path / "apptainer"
    real.write_text("#!/bin/sh\necho the real one\n")
    real.chmod(0o755)
    r = hpccont("compat", "install", tmp_path)
    assert r.returncode == 2 and "not replaced" in r.stderr and r.stderr.count("\n") == 1
    assert real.read_text().endswith("the real one\n")
    assert not (tmp_path / "singularity").exists()     # nothing half-installed
    r = hpccont("compat", "install", "--force", tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("apptainer", "singularity"):
        assert subprocess.run([str(tmp_path / name), "--version"], capture_output=True,
                              text=True).stdout == "apptainer version 1.3.6\n"
    assert hpccont("compat", "install", tmp_path).returncode == 0    # ours: replaced again
    r = hpccont("compat", "uninstall", tmp_path)
    assert r.returncode == 0 and not os.listdir(tmp_path)
    assert hpccont("compat", "install", tmp_path / "missing").returncode == 2


def test_global_flags(as_apptainer, bash_sif):
    r = as_apptainer("--cpus", "1", "exec", bash_sif, "true")
    assert r.returncode == 2 and "unknown command" in r.stderr
    r = as_apptainer("exec", "--cpus", "1", bash_sif, "true")
    assert "not applied" in r.stderr
    r = as_apptainer("-s", "exec", "--cpus", "1", bash_sif, "true")
    assert r.returncode == 0 and r.stderr == ""              # -s: errors only
    r = as_apptainer("--silent", "--nocolor", "exec", "--cpus", "1", bash_sif, "true")
    assert r.stderr == ""
    r = as_apptainer("exec", "--cpus", "1", bash_sif, "true", env={"APPTAINER_SILENT": "1"})
    assert r.stderr == ""
    r = as_apptainer("-q", "-v", "exec", bash_sif, "sh", "-c", "echo ok")
    assert r.stdout == "ok\n"
    r = as_apptainer("-d", "exec", bash_sif, "true")
    assert r.returncode == 0 and '"mounts"' in r.stderr      # -d: the plan and the steps
    r = as_apptainer("help", "exec")
    assert r.returncode == 0 and "--pid" in r.stdout


def test_bash_completion(hpccont, install, tmp_path):
    r = hpccont("completion", "bash")
    assert r.returncode == 0
    script = tmp_path / "c.bash"
    script.write_text(r.stdout)
    img = tmp_path / "my.sif"
    img.write_text("")

    def complete(*words):
        line = " ".join(words)
        prog = (f'source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; '
                '_hpccont_complete; printf "%s\\n" "${COMPREPLY[@]}"')
        return subprocess.run(["bash", "-c", prog], capture_output=True, text=True,
                              cwd=tmp_path).stdout.split()
    assert {"exec", "run", "inspect", "compat", "run-help"} <= set(complete("hpccont", "''"))
    assert complete("apptainer", "ex") == ["exec"]
    assert {"--pid", "--no-eval", "--containall"} <= set(complete("apptainer", "exec", "--"))
    assert "--list-apps" in complete("hpccont", "inspect", "--")
    assert complete("hpccont", "exec", "my") == ["my.sif"]            # image paths
    r = subprocess.run(["bash", "-c", f"source {script}; complete -p singularity"],
                       capture_output=True, text=True)
    assert "_hpccont_complete" in r.stdout
    assert hpccont("completion", "fish").returncode == 2


def test_zsh_completion(hpccont, tmp_path):
    r = hpccont("completion", "zsh")
    assert r.returncode == 0 and r.stdout.startswith("#compdef hpccont apptainer singularity")
    assert "--pid" in r.stdout and "_files" in r.stdout
    if subprocess.run(["sh", "-c", "command -v zsh"], capture_output=True).returncode == 0:
        (tmp_path / "c.zsh").write_text(r.stdout)
        assert subprocess.run(["zsh", "-n", str(tmp_path / "c.zsh")]).returncode == 0


def test_run_help_without_help(hpccont, bash_sif):
    r = hpccont("run-help", bash_sif)
    assert (r.returncode, r.stdout) == (0, "No help sections were defined for this image\n")
