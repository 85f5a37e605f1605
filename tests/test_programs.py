"""The command-line programs are one program each however they are started: tools/<name>.py in a checkout,
`python -m pysoftlabel.cli.<module>`, and the script pip installs from pyproject.toml."""
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = {"psl-train": ("pysoftlabel.cli.train", "tools/train_imagenet.py"),
            "psl-evaluate": ("pysoftlabel.cli.evaluate", "tools/evaluate.py")}


@functools.cache  # each program's help is compared twice: start each once
def help_text(command):
    """``command --help`` with the program's name taken out (a wide terminal: the usage on one line)."""
    done = subprocess.run([*command, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=os.environ | {"COLUMNS": "1000"})
    assert done.returncode == 0, done.stderr
    usage, _, rest = done.stdout.partition("\n")
    prog = usage.split()[1]
    return usage.replace(prog, "PROG", 1) + "\n" + rest


def test_pyproject_installs_each_program_main():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11's")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {script: f"{module}:main" for script, (module, _) in PROGRAMS.items()}


@pytest.mark.parametrize("script", PROGRAMS)
def test_checkout_tool_and_module_are_the_same_program(script):
    module, tool = PROGRAMS[script]
    text = help_text((sys.executable, tool))
    assert text == help_text((sys.executable, "-m", module))
    assert "--device" in text and len(text.splitlines()) > 10  # the program's own options, not a stub's


@pytest.mark.parametrize("script", PROGRAMS)
def test_installed_script_is_the_same_program(script):
    installed = shutil.which(script)
    if installed is None:
        pytest.skip(f"{script} is not installed here (the README's pip install -e . installs it)")
    module, _ = PROGRAMS[script]
    assert help_text((installed,)) == help_text((sys.executable, "-m", module))
