"""Dataset parsers and the registry, on tiny fixture folders that follow the real naming conventions.

Parsers never open images, so the fixture images are empty files.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from mmt_lib.data.base import DatasetLayoutError
from mmt_lib.data.registry import DATASETS, known_datasets, load_dataset


def touch(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")


def write_market(folder: Path) -> Path:
    touch(
        folder / "bounding_box_train",
        [
            "0010_c6s1_000100_01.jpg",
            "0002_c2s1_000200_01.jpg",
            "0002_c1s1_000451_03.jpg",
            "0007_c3s2_000300_02.jpg",
            "0010_c5s3_000400_01.jpg",
            "-1_c1s1_000001_00.jpg",  # junk: dropped even from train
            "Thumbs.db",
        ],
    )
    touch(folder / "query", ["0007_c1s1_000500_00.jpg", "0002_c2s1_000600_00.jpg", "notes.txt"])
    touch(
        folder / "bounding_box_test",
        [
            "0002_c1s1_000700_01.jpg",
            "0007_c4s1_000800_01.jpg",
            "0000_c5s1_000900_01.jpg",  # distractor: kept
            "-1_c3s1_001000_01.jpg",  # junk
            "-1_c2s1_001100_02.jpg",  # junk
            "Thumbs.db",
        ],
    )
    return folder


def names(split: list[tuple[str, int, int]]) -> list[str]:
    return [Path(path).name for path, _, _ in split]


# ---------------------------------------------------------------- Market-1501


def test_market_counts_relabelling_and_cameras(tmp_path: Path) -> None:
    folder = write_market(tmp_path / "Market-1501-v15.09.15")
    ds = load_dataset("market1501", folder)
    assert ds.name == "market1501"
    assert ds.root == folder
    assert ds.num_train_pids == 3
    assert len(ds.train) == 5 and len(ds.query) == 2 and len(ds.gallery) == 3
    assert ds.num_cams == 6
    # sorted by path; raw ids 2, 7, 10 -> 0, 1, 2; cameras 0-based
    assert [(n, pid, cam) for n, (_, pid, cam) in zip(names(ds.train), ds.train)] == [
        ("0002_c1s1_000451_03.jpg", 0, 0),
        ("0002_c2s1_000200_01.jpg", 0, 1),
        ("0007_c3s2_000300_02.jpg", 1, 2),
        ("0010_c5s3_000400_01.jpg", 2, 4),
        ("0010_c6s1_000100_01.jpg", 2, 5),
    ]
    assert ds.meta["train_raw_pids"] == [2, 7, 10]
    assert [(pid, cam) for _, pid, cam in ds.query] == [(2, 1), (7, 0)]
    assert [(pid, cam) for _, pid, cam in ds.gallery] == [(0, 4), (2, 0), (7, 3)]
    for path, _, _ in ds.train + ds.query + ds.gallery:
        assert Path(path).is_absolute() and Path(path).is_file()
        assert isinstance(path, str)


@pytest.mark.parametrize(
    "subdir", ["Market-1501-v15.09.15", "Market-1501", "market1501", "market1501/Market-1501-v15.09.15"]
)
def test_market_root_may_be_the_parent(tmp_path: Path, subdir: str) -> None:
    folder = write_market(tmp_path / subdir)
    ds = load_dataset("market1501", tmp_path)
    assert ds.root == folder
    assert len(ds.train) == 5


def test_market_relative_root_gives_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_market(tmp_path / "Market-1501")
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("market1501", ".")
    assert all(Path(p).is_absolute() for p, _, _ in ds.train + ds.query + ds.gallery)


def test_market_is_deterministic(tmp_path: Path) -> None:
    folder = write_market(tmp_path / "Market-1501")
    assert load_dataset("market1501", folder) == load_dataset("market1501", folder)


def test_market_missing_split_names_paths_and_expectation(tmp_path: Path) -> None:
    folder = write_market(tmp_path / "Market-1501")
    for path in (folder / "query").iterdir():
        path.unlink()
    (folder / "query").rmdir()
    with pytest.raises(DatasetLayoutError) as error:
        load_dataset("market1501", tmp_path)
    message = str(error.value)
    assert "bounding_box_train/, query/, bounding_box_test/" in message
    assert str(tmp_path) in message and str(folder) in message
    assert f"Closest match {folder} lacks query/" in message


def test_market_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        load_dataset("market1501", tmp_path / "nowhere")


def test_market_unparsable_image_name_is_named(tmp_path: Path) -> None:
    folder = write_market(tmp_path / "Market-1501")
    touch(folder / "bounding_box_train", ["person_12.jpg"])
    with pytest.raises(DatasetLayoutError) as error:
        load_dataset("market1501", folder)
    assert str(folder / "bounding_box_train" / "person_12.jpg") in str(error.value)
    assert "0002_c1s1_000451_03.jpg" in str(error.value)


def test_market_camera_out_of_range(tmp_path: Path) -> None:
    folder = write_market(tmp_path / "Market-1501")
    touch(folder / "query", ["0002_c7s1_000001_00.jpg"])
    with pytest.raises(DatasetLayoutError, match=r"camera 7 .*0002_c7s1_000001_00\.jpg.* outside 1\.\.6"):
        load_dataset("market1501", folder)


def test_market_empty_split_after_ignoring_non_images(tmp_path: Path) -> None:
    folder = write_market(tmp_path / "Market-1501")
    for path in (folder / "query").iterdir():
        path.unlink()
    touch(folder / "query", ["Thumbs.db", "-1_c1s1_000001_00.jpg"])
    with pytest.raises(DatasetLayoutError) as error:
        load_dataset("market1501", folder)
    assert str(folder / "query") in str(error.value)
    assert "no usable images" in str(error.value)


# ---------------------------------------------------------------- DukeMTMC-reID


def test_duke_counts_and_cameras(tmp_path: Path) -> None:
    folder = tmp_path / "DukeMTMC-reID"
    touch(
        folder / "bounding_box_train",
        ["0005_c8_f0000010.jpg", "0001_c2_f0046182.jpg", "0001_c1_f0046000.jpg", "0003_c4_f0000001.jpg", "Thumbs.db"],
    )
    touch(folder / "query", ["0009_c1_f0000100.jpg"])
    touch(folder / "bounding_box_test", ["0009_c3_f0000200.jpg", "0011_c7_f0000300.jpg"])
    ds = load_dataset("dukemtmc", tmp_path)
    assert ds.name == "dukemtmc" and ds.root == folder
    assert ds.num_train_pids == 3 and len(ds.train) == 4
    assert len(ds.query) == 1 and len(ds.gallery) == 2
    assert ds.num_cams == 8
    assert [(pid, cam) for _, pid, cam in ds.train] == [(0, 0), (0, 1), (1, 3), (2, 7)]
    assert [(pid, cam) for _, pid, cam in ds.gallery] == [(9, 2), (11, 6)]


def test_duke_rejects_market_names_and_camera_9(tmp_path: Path) -> None:
    folder = tmp_path / "DukeMTMC-reID"
    touch(folder / "bounding_box_train", ["0001_c1s1_000451_03.jpg"])
    touch(folder / "query", ["0009_c1_f0000100.jpg"])
    touch(folder / "bounding_box_test", ["0009_c9_f0000200.jpg"])
    with pytest.raises(DatasetLayoutError, match=r"0001_c1s1_000451_03\.jpg"):
        load_dataset("dukemtmc", folder)
    (folder / "bounding_box_train" / "0001_c1s1_000451_03.jpg").unlink()
    touch(folder / "bounding_box_train", ["0001_c1_f0000001.jpg"])
    with pytest.raises(DatasetLayoutError, match=r"camera 9 .* outside 1\.\.8"):
        load_dataset("dukemtmc", folder)


# ---------------------------------------------------------------- MSMT17


def msmt_name(pid: int, index: int, cam: int) -> str:
    return f"{pid:04d}/{pid:04d}_{index:03d}_{cam:02d}_0303morning_{index:04d}_0.jpg"


def write_msmt(folder: Path, train_dir: str = "train", test_dir: str = "test") -> Path:
    lists = {
        "list_train.txt": [(5, 0, 2), (0, 0, 1), (0, 1, 3)],
        "list_val.txt": [(3, 0, 15), (0, 2, 7)],
        "list_query.txt": [(0, 0, 4), (1, 0, 11)],
        "list_gallery.txt": [(0, 1, 5), (1, 1, 12), (1, 2, 1)],
    }
    for list_name, entries in lists.items():
        image_dir = folder / (train_dir if list_name in ("list_train.txt", "list_val.txt") else test_dir)
        touch(image_dir, [msmt_name(*entry) for entry in entries])
        text = "".join(f"{msmt_name(*entry)} {entry[0]}\n" for entry in entries)
        (folder / list_name).write_text(text)
    touch(folder / train_dir, ["Thumbs.db"])  # present on disk but not listed: never read
    return folder


def check_msmt(ds, folder: Path, train_dir: str, test_dir: str) -> None:
    assert ds.name == "msmt17" and ds.root == folder
    # train + val merged: raw ids 0, 3, 5 -> 0, 1, 2; sorted by path
    assert ds.num_train_pids == 3 and len(ds.train) == 5
    assert [(pid, cam) for _, pid, cam in ds.train] == [(0, 0), (0, 2), (0, 6), (1, 14), (2, 1)]
    assert ds.train[0][0] == str(folder / train_dir / msmt_name(0, 0, 1))
    assert [(pid, cam) for _, pid, cam in ds.query] == [(0, 3), (1, 10)]
    assert [(pid, cam) for _, pid, cam in ds.gallery] == [(0, 4), (1, 11), (1, 0)]
    assert ds.gallery[0][0] == str(folder / test_dir / msmt_name(0, 1, 5))
    assert ds.num_cams == 15


def test_msmt_v1(tmp_path: Path) -> None:
    folder = write_msmt(tmp_path / "MSMT17_V1")
    ds = load_dataset("msmt17", tmp_path)
    check_msmt(ds, folder, "train", "test")
    assert ds.meta["version"] == "V1"


def test_msmt_v2(tmp_path: Path) -> None:
    folder = write_msmt(tmp_path / "MSMT17_V2", "mask_train_v2", "mask_test_v2")
    ds = load_dataset("msmt17", folder)
    check_msmt(ds, folder, "mask_train_v2", "mask_test_v2")
    assert ds.meta["version"] == "V2"


def test_msmt_version_option_picks_among_both(tmp_path: Path) -> None:
    write_msmt(tmp_path / "MSMT17_V1")
    v2 = write_msmt(tmp_path / "MSMT17_V2", "mask_train_v2", "mask_test_v2")
    assert load_dataset("msmt17", tmp_path).meta["version"] == "V1"
    ds = load_dataset("msmt17", tmp_path, version="V2")
    assert ds.root == v2 and ds.meta["version"] == "V2"
    with pytest.raises(ValueError, match="version"):
        load_dataset("msmt17", tmp_path, version="V3")


def test_msmt_missing_list_file(tmp_path: Path) -> None:
    folder = write_msmt(tmp_path / "MSMT17_V1")
    (folder / "list_val.txt").unlink()
    with pytest.raises(DatasetLayoutError) as error:
        load_dataset("msmt17", tmp_path)
    message = str(error.value)
    assert f"Closest match {folder} lacks list_val.txt" in message
    assert "mask_train_v2/" in message and "list_gallery.txt" in message


def test_msmt_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    folder = write_msmt(tmp_path / "MSMT17_V1")
    with open(folder / "list_query.txt", "a") as handle:
        handle.write("0002/0002_000_01_0303morning_0001_0.jpg\n")
    with pytest.raises(DatasetLayoutError) as error:
        load_dataset("msmt17", folder)
    assert f"{folder / 'list_query.txt'} line 3" in str(error.value)


def test_msmt_unparsable_name_and_missing_image(tmp_path: Path) -> None:
    folder = write_msmt(tmp_path / "MSMT17_V1")
    with open(folder / "list_gallery.txt", "a") as handle:
        handle.write("0002/badname.jpg 2\n")
    with pytest.raises(DatasetLayoutError, match=r"badname\.jpg"):
        load_dataset("msmt17", folder)
    (folder / "list_gallery.txt").write_text(f"{msmt_name(7, 0, 3)} 7\n")
    with pytest.raises(DatasetLayoutError) as error:
        load_dataset("msmt17", folder)
    assert str(folder / "test" / msmt_name(7, 0, 3)) in str(error.value)


# ---------------------------------------------------------------- folder layout


def test_folder_layout(tmp_path: Path) -> None:
    touch(
        tmp_path / "train",
        ["12_c3.jpg", "7_c1_a.JPG", "7_c2_b.png", "-1_c1_junk.jpg", "Thumbs.db", "sub/3_c1_x.jpg"],
    )
    touch(tmp_path / "query", ["100_c1_q.jpeg"])
    touch(tmp_path / "gallery", ["100_c2_g.bmp", "0_c4_d.jpg", "-1_c2_j.jpg"])
    ds = load_dataset("folder", tmp_path, display_name="mycams")
    assert ds.name == "mycams" and ds.root == tmp_path
    assert [(n, pid, cam) for n, (_, pid, cam) in zip(names(ds.train), ds.train)] == [
        ("12_c3.jpg", 1, 2),
        ("7_c1_a.JPG", 0, 0),
        ("7_c2_b.png", 0, 1),
    ]
    assert [(pid, cam) for _, pid, cam in ds.gallery] == [(0, 3), (100, 1)]
    assert ds.num_cams == 4
    assert load_dataset("folder", tmp_path).name == "folder"


def test_folder_errors_quote_the_pattern(tmp_path: Path) -> None:
    touch(tmp_path / "train", ["img001.jpg"])
    touch(tmp_path / "query", ["1_c1.jpg"])
    with pytest.raises(DatasetLayoutError) as error:
        load_dataset("folder", tmp_path)
    assert "train/, query/, gallery/" in str(error.value) and "lacks gallery/" in str(error.value)
    assert "<pid>_c<cam>" in str(error.value)
    touch(tmp_path / "gallery", ["1_c2.jpg"])
    with pytest.raises(DatasetLayoutError) as error:
        load_dataset("folder", tmp_path)
    assert str(tmp_path / "train" / "img001.jpg") in str(error.value)
    assert "<pid>_c<cam>" in str(error.value)


# ---------------------------------------------------------------- registry


def test_registry_names_and_unknown_name() -> None:
    expected = ["dukemtmc", "folder", "market1501", "msmt17", "synth-duke", "synth-market", "synth-msmt",
                "synth-transient-duke", "synth-transient-market", "synth-transient-msmt"]
    assert known_datasets() == expected
    assert sorted(DATASETS) == expected
    with pytest.raises(ValueError) as error:
        load_dataset("cuhk03", "/tmp")
    assert "cuhk03" in str(error.value)
    assert all(name in str(error.value) for name in expected)


def test_registry_name_is_case_insensitive(tmp_path: Path) -> None:
    write_market(tmp_path / "Market-1501")
    assert load_dataset("Market1501", tmp_path).name == "market1501"


def test_synthetic_names_go_through_ensure_domain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def ensure_domain(name: str, root: Path, size: str = "default", seed: int = 0) -> Path:
        calls.append((name, root, size, seed))
        folder = root / name
        touch(folder / "bounding_box_train", ["0003_c12s1_000001_00.jpg", "0001_c1s1_000002_00.jpg"])
        touch(folder / "query", ["0004_c2s1_000003_00.jpg"])
        touch(folder / "bounding_box_test", ["0004_c15s1_000004_00.jpg"])
        return folder

    fake = types.ModuleType("mmt_lib.data.synthetic")
    fake.ensure_domain = ensure_domain
    monkeypatch.setitem(sys.modules, "mmt_lib.data.synthetic", fake)

    ds = load_dataset("synth-msmt", str(tmp_path), size="smoke", seed=3)
    assert calls == [("synth-msmt", tmp_path, "smoke", 3)]
    assert ds.name == "synth-msmt" and ds.root == tmp_path / "synth-msmt"
    assert [(pid, cam) for _, pid, cam in ds.train] == [(0, 0), (1, 11)]
    assert ds.num_cams == 15  # no Market 6-camera limit for synthetic domains
    assert load_dataset("synth-duke", tmp_path).name == "synth-duke"
    assert calls[-1] == ("synth-duke", tmp_path, "default", 0)
