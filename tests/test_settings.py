"""What every process egoray starts is given: the forwarded settings (never a credential), and a
working directory that exists — without one, ``import torch`` aborts the whole process with
"Intel oneMKL FATAL ERROR: Cannot load .../libtorch_cpu.so" (the stage actor death of issue 23)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from egoray.settings import WORKER_SETUP_HOOK, Settings

MKL_ABORT = "Intel oneMKL FATAL ERROR: Cannot load"


def _python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -c code`` in its own process group, which is killed after (a local Ray it started)."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _in_a_removed_directory(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    """``code`` run in a directory removed after the process entered it (as in a shell whose
    directory another command deleted)."""
    gone = tmp_path / "gone"
    gone.mkdir()
    return _python(f"import os\nos.chdir({str(gone)!r})\nos.rmdir({str(gone)!r})\n{code}")


def test_torch_aborts_in_a_removed_directory_and_the_worker_hook_moves_out(tmp_path):
    bare = _in_a_removed_directory(tmp_path, "import torch\nprint('imported')")
    assert bare.returncode != 0 and MKL_ABORT in bare.stderr and "imported" not in bare.stdout
    hooked = _in_a_removed_directory(tmp_path, "from egoray.settings import keep_a_working_directory\n"
                                     "keep_a_working_directory()\nimport os, torch\n"
                                     "print(os.getcwd(), float(torch.ones(3).sum()))")
    assert hooked.returncode == 0, hooked.stderr
    assert hooked.stdout.split() == [tempfile.gettempdir(), "3.0"]
    assert "working directory no longer exists" in hooked.stderr and MKL_ABORT not in hooked.stderr


def test_egoray_in_a_removed_directory_says_so_instead_of_aborting(tmp_path):
    out = _in_a_removed_directory(tmp_path, "import sys\nfrom egoray.cli import main\n"
                                  "sys.exit(main(['run', 'configs/demo/ingest.yaml']))")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "egoray: error: the current directory no longer exists (it was removed after this shell entered it); "
        "cd to an existing directory and run the command again"]


@pytest.mark.slow
def test_a_ray_worker_that_starts_in_a_removed_directory_imports_torch(tmp_path):
    """egoray's own local Ray (``ensure_ray``), its directory removed while it runs: a worker it
    starts afterwards (another runtime env, so a new process) runs the hook and then a task that
    imports torch."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    code = (f"import json, os, ray\nfrom egoray.config import RayOptions\nfrom egoray.runtime import ensure_ray\n"
            f"os.chdir({str(fresh)!r})\nensure_ray(RayOptions(num_cpus=1, dashboard=False))\n"
            f"os.chdir('/')\nos.rmdir({str(fresh)!r})\n"
            "@ray.remote(runtime_env={'env_vars': {'EGORAY_TEST_NEW_WORKER': '1'}})\n"
            "def probe():\n    import torch\n"
            "    return os.getcwd(), float(torch.ones(3).sum()), os.environ['__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR']\n"
            "print(json.dumps(ray.get(probe.remote())))\nray.shutdown()")
    out = _python(code, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    cwd, total, hook = json.loads(out.stdout.strip().splitlines()[-1])
    assert (cwd, total, hook) == (tempfile.gettempdir(), 3.0, WORKER_SETUP_HOOK)
    assert not fresh.exists()


def test_workers_get_the_forwarded_settings_and_never_a_credential():
    env = {"EGORAY_CACHE": "/c", "HF_HUB_OFFLINE": "1", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ACCESS_KEY_ID": "k",
           "AWS_REGION": "", "PATH": "/bin"}
    settings = Settings.from_environ(env, job="qa")
    assert settings.worker_env() == {"TOKENIZERS_PARALLELISM": "false", "EGORAY_CACHE": "/c",
                                     "HF_HUB_OFFLINE": "1", "EGORAY_JOB": "qa"}
    assert settings.job_runtime_env() == {"env_vars": settings.worker_env(),
                                          "worker_process_setup_hook": WORKER_SETUP_HOOK}
    with pytest.raises(RuntimeError, match="refusing to forward secrets"):
        Settings({"MY_TOKEN": "t"}).worker_env()
