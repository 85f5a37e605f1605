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
    """``command --help``'s program name, and the rest of the text with the name taken out (a wide terminal:
    the usage on one line, whatever the name's length)."""
    done = subprocess.run([*command, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=os.environ | {"COLUMNS": "100000"})
    assert done.returncode == 0, done.stderr
    usage, _, rest = done.stdout.partition("\n")
    prog = usage.removeprefix("usage: ").partition(" [-h]")[0]
    return prog, usage.replace(prog, "PROG", 1) + "\n" + rest


def test_pyproject_installs_each_program_main():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11's")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {script: f"{module}:main" for script, (module, _) in PROGRAMS.items()}


@pytest.mark.parametrize("script", PROGRAMS)
def test_checkout_tool_and_module_are_the_same_program(script):
    module, tool = PROGRAMS[script]
    prog, text = help_text((sys.executable, tool))
    module_prog, module_text = help_text((sys.executable, "-m", module))
    assert (prog, module_prog) == (Path(tool).name, f"{Path(sys.executable).name} -m {module}")
    assert text == module_text
    assert "--device" in text and len(text.splitlines()) > 10  # the program's own options, not a stub's


@pytest.mark.parametrize("script", PROGRAMS)
def test_installed_script_is_the_same_program(script):
    installed = shutil.which(script)
    if installed is None:
        pytest.skip(f"{script} is not installed here (the README's pip install -e . installs it)")
    module, _ = PROGRAMS[script]
    prog, text = help_text((installed,))
    assert prog == script
    assert text == help_text((sys.executable, "-m", module))[1]


@pytest.mark.parametrize("script, arguments, error", [
    ("psl-train", ["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ("psl-evaluate", [], "the following arguments are required: checkpoint")])
def test_a_bad_argument_is_one_line(script, arguments, error):
    """The error alone, not below argparse's usage block of twenty lines; --help has the usage."""
    _, tool = PROGRAMS[script]
    done = subprocess.run([sys.executable, tool, *arguments], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"{Path(tool).name}: error: {error}"]
