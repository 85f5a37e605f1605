"""tools/gpu_check.sh selects its tests by name (-k): checked here, without a GPU, against the test suite as it is
now, since a filter that stopped matching would only show on a rarely lent GPU, as a failed stage."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = (ROOT / "tools" / "gpu_check.sh").read_text()
ASSERTING = "test_cuda_bad_label_fails_device_side_assert"  # its kernel fails a device-side assert on purpose


def selected(expression, path="tests"):
    """The ids of the CUDA tests that ``pytest -m cuda -k expression path`` runs."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-m", "cuda", "-k", expression, path], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode in (0, 5), done.stdout + done.stderr  # 5: nothing selected
    return [line for line in done.stdout.splitlines() if "::" in line]


def stage_filter(tool):
    """The -k expression of the compute-sanitizer call of ``tool`` and the path it runs."""
    match = re.search(rf'--tool {tool}.*?-k "([^"]+)" (\S+)', SCRIPT, re.S)
    assert match, f"gpu_check.sh has no {tool} stage with -k"
    return match.group(1), match.group(2)


def test_memcheck_runs_the_cuda_tests_but_the_deliberately_failing_one():
    everything = selected("not compile")
    assert any(ASSERTING in test for test in everything), f"{ASSERTING} is not in the suite: update this test"
    under_memcheck = selected(*stage_filter("memcheck"))
    assert not any(ASSERTING in test for test in under_memcheck)
    assert len(under_memcheck) == len([t for t in everything if ASSERTING not in t])


def test_racecheck_and_synccheck_select_the_masked_class_and_fused_statistics_tests():
    tool = "\\$tool"  # one call for both tools
    tests = selected(*stage_filter(tool))
    assert any("masked" in test for test in tests) and any("fused_statistics" in test for test in tests), tests


def test_test_dali_runs_the_cuda_tests_of_every_file_that_needs_dali():
    match = re.search(r"test-dali\) run_stage .*? -m cuda -rs \\\s*\n\s*((?:tests/\S+\.py\s*)+);;", SCRIPT)
    assert match, "gpu_check.sh has no test-dali stage listing its test files"
    listed = sorted(match.group(1).split())
    needing = sorted(f"tests/{path.name}" for path in (ROOT / "tests").glob("test_*.py")
                     if 'importorskip("nvidia.dali"' in path.read_text())
    with_cuda_tests = [path for path in needing if selected("", path)]
    assert with_cuda_tests and listed == with_cuda_tests


def gpu_check(out, *stages, **env):
    """Runs gpu_check.sh here (no GPU), its logs in ``out``."""
    return subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), *stages], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": sys.executable, **env}, timeout=120)


def test_a_misspelt_stage_stops_before_any_stage_runs(tmp_path):
    done = gpu_check(tmp_path, "build", "tset")
    assert done.returncode == 2 and "unknown stage 'tset'" in done.stdout
    assert not list(tmp_path.iterdir())  # not even the build's log


def test_the_reproduce_stage_trains_the_preset_named_by_PRESET(tmp_path):
    # A preset that does not exist: reproduce.py refuses it at once, which shows that PRESET reached it.
    done = gpu_check(tmp_path, "reproduce", PRESET="nosuch-gpu", REPRODUCE_SECONDS="60")
    log = (tmp_path / "reproduce.log").read_text()
    assert "--preset: invalid choice: 'nosuch-gpu'" in log and "reproduce: rc=2" in done.stdout
