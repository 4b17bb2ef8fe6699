"""An output path that cannot be written is one line of error and exit 2, before any work
(issue 21)."""

import pytest

from rewardlab.cli.main import main
from rewardlab.io import check_output_path, write_json


def test_output_path_errors_name_the_path(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError) as e:
        check_output_path(tmp_path / "adir")
    assert e.value.filename == str(tmp_path / "adir")
    with pytest.raises(NotADirectoryError):
        check_output_path(tmp_path / "afile" / "deeper" / "x.jsonl")
    assert check_output_path(tmp_path / "new" / "x.jsonl") == tmp_path / "new" / "x.jsonl"
    with pytest.raises(IsADirectoryError):   # the writer refuses the same, and leaves nothing
        write_json(tmp_path / "adir", {})
    assert list((tmp_path / "adir").iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "adir", "afile"]


@pytest.mark.parametrize("out,words", [("adir", "it is a directory"),
                                       ("afile/x.jsonl", "a part of it is not a directory")])
def test_cli_unwritable_out_exits_2_with_one_line(tmp_path, capsys, out, words):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    rc = main(["data", "testbed", "--out", str(tmp_path / out)])
    err = capsys.readouterr().err
    assert rc == 2 and words in " ".join(err.split()) and "Traceback" not in err
