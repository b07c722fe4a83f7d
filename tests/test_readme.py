"""The README's Python blocks run as written (in a scratch folder, with the test-wide cache)."""

import re

import pytest

from tas_lite import config

README = config.REPO_DIR / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_a_library_example():
    assert python_blocks(), "the README shows the library in at least one ```python block"


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs_as_written(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(python_blocks()[index], f"README.md python block {index + 1}", "exec"), namespace)
    if "result" in namespace:
        assert 0 <= namespace["result"].final_test_acc <= 100
        assert (tmp_path / "outputs" / "tas.json").is_file()
    if "hybrid" in namespace:
        assert namespace["hybrid"] is namespace["tas"].assistant
