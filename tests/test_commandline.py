"""The command lines refuse in one line that names the argument, print usage only for a mistyped option or -h,
and leave no folder behind; their help says where a relative path starts, as the code resolves it."""

from __future__ import annotations

import re

import pytest

from mmt_lib import train
from mmt_lib.experiments import calibrate
from mmt_lib.method import stage0

PATH_OPTIONS = ("--out", "--pretrained", "--data-root", "--imagenet-weights")


def refusal(capsys, call) -> str:
    """Run ``call``, which must refuse with exit status 2; return its one line of stderr."""
    with pytest.raises(SystemExit) as refused:
        call()
    assert refused.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and not out and "usage:" not in err, err
    return lines[0]


def mmt_args(tmp_path, *pretrained: str) -> list[str]:
    return ["mmt", "--profile", "smoke", "--data-root", str(tmp_path / "data"), "--device", "cpu",
            *(["--pretrained", *pretrained] if pretrained else []), "--out", str(tmp_path / "out")]


def test_a_missing_stage1_folder_is_named_as_the_pretrained_argument(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = refusal(capsys, lambda: train.main(mmt_args(tmp_path, str(tmp_path / "nope"), str(tmp_path / "empty"))))
    assert line.startswith("python -m mmt_lib.train: --pretrained ")
    assert f"{tmp_path / 'nope'} does not exist" in line and "pretrain` run of the same task" in line
    line = refusal(capsys, lambda: train.main(mmt_args(tmp_path, str(tmp_path / "empty"), str(tmp_path / "empty"))))
    assert f"--pretrained {tmp_path / 'empty'} holds no checkpoint.pt" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


def test_mmt_without_pretrained_and_bad_overrides_refuse_in_one_line(tmp_path, capsys):
    line = refusal(capsys, lambda: train.main(mmt_args(tmp_path)))
    assert "mmt needs --pretrained DIR1 DIR2" in line
    line = refusal(capsys, lambda: train.main(["pretrain", "--profile", "smoke", "--overrides", "{not json",
                                               "--out", str(tmp_path / "out")]))
    assert "overrides" in line
    assert not (tmp_path / "out").exists()


def test_a_mistyped_option_still_shows_the_usage(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        train.main(["pretrain", "--outt", str(tmp_path)])
    assert refused.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_train_help_says_relative_paths_start_at_the_current_directory_as_they_do(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    options = capsys.readouterr().out.split("options:", 1)[1]
    entries = {entry.split()[0]: " ".join(entry.split()) for entry in re.split(r"\n(?=  -)", options) if entry.strip()}
    for option in PATH_OPTIONS:
        described = entries[option]
        assert "current directory" in described and "project folder" not in described, described
    assert "relative to the current directory" in " ".join(train.__doc__.split())
    monkeypatch.chdir(tmp_path)
    line = refusal(capsys, lambda: train.main(mmt_args(tmp_path, "rel/a", "rel/b")))
    assert f"--pretrained {tmp_path / 'rel' / 'a'} does not exist" in line  # resolved at the current directory


def test_calibrate_and_stage0_refuse_bad_settings_in_one_line(capsys):
    line = refusal(capsys, lambda: calibrate.main(["--overrides", "[1]"]))
    assert line.startswith("python -m mmt_lib.calibrate: ")
    line = refusal(capsys, lambda: stage0.main(["--profile", "smoke", "--seed", "-1"]))
    assert line.startswith("python -m mmt_lib.stage0: ") and "backbone_seed" in line
