"""The command line: a mistake prints one line naming it and exits with status 2, before anything runs."""
import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from ltcore import reproduce as rep
from ltcore.__main__ import main
from ltcore.paths import REPO_ROOT


@pytest.fixture
def one_notebook(tmp_path, monkeypatch):
    """A notebook folder holding 01_x.ipynb, whose parameters are PROFILE and VALUE."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = new_code_cell("PROFILE = 'quick'\nVALUE = 1")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, new_code_cell("print(VALUE)")]
    nbformat.write(nb, tmp_path / "01_x.ipynb")
    monkeypatch.setattr(rep, "NOTEBOOK_DIR", tmp_path)
    return tmp_path


@pytest.mark.hostile
@pytest.mark.parametrize("argv, says", [
    (["reproduce", "--profile", "nosuch"], "argument --profile: invalid choice: 'nosuch' (choose from"),
    (["reproduce", "--only", "99"], "no notebook in"),
    (["reproduce", "--only"], "argument --only: expected at least one argument"),
    (["reproduce", "--jobs", "0"], "argument --jobs: expected a whole number >= 1, got '0'"),
    (["reproduce", "--jobs", "two"], "argument --jobs: expected a whole number >= 1, got 'two'"),
    (["reproduce", "-p", "EPOCHS", "3"], "01_x.ipynb has no parameter(s) ['EPOCHS']; its parameters cell defines "
                                         "PROFILE, VALUE"),
    (["reproduce", "-p", "VALUE"], "argument -p/--parameter: expected 2 arguments"),
    (["bench", "nosuch"], "argument name: invalid choice: 'nosuch' (choose from"),
    (["data", "fetch", "nosuch"], "`data fetch` installs the offline default (fashion_mnist); for 'nosuch': "
                                  "unknown dataset"),
    (["nosuch"], "argument command: invalid choice: 'nosuch'"),
    ([], "the following arguments are required: command"),
])
def test_a_command_line_mistake_is_one_line_and_status_2(one_notebook, capsys, argv, says):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("python -m ltcore")
    assert says in err


@pytest.mark.hostile
def test_the_installed_command_prints_no_traceback():
    result = subprocess.run([sys.executable, "-m", "ltcore", "reproduce", "--only", "99"], capture_output=True,
                            text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"python -m ltcore: error: no notebook in {REPO_ROOT / 'notebooks'} matches ['99']\n"
