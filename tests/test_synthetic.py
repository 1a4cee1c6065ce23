"""The synthetic domains: deterministic, Market-layout, cached atomically, and different in style."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmt_lib.data import synthetic
from mmt_lib.data.registry import load_dataset
from mmt_lib.data.synthetic import (DOMAINS, SIZES, ensure_domain, identity_counts, plan_domain, render_identity_grid,
                                    train_images_range)
from mmt_lib.data.synthetic_render import OUT_H, OUT_W, make_background, make_cameras, render_image, sample_identity

NAME = re.compile(r"(?P<pid>\d{4})_c(?P<cam>\d+)s1_(?P<frame>\d{6})_00\.jpg")
SPLITS = ("bounding_box_train", "query", "bounding_box_test")


def parse(folder: Path) -> dict[str, list[tuple[int, int, Path]]]:
    """(pid, cam, path) per split, asserting every file is named in the Market pattern."""
    out: dict[str, list[tuple[int, int, Path]]] = {}
    for split in SPLITS:
        rows = []
        for path in sorted((folder / split).iterdir()):
            match = NAME.fullmatch(path.name)
            assert match, f"unexpected file name {path}"
            rows.append((int(match["pid"]), int(match["cam"]), path))
        out[split] = rows
    return out


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth")
    return {name: ensure_domain(name, root, size="tiny", seed=0, progress=False) for name in DOMAINS}


def test_unknown_domain_or_size_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="synth-market.*synth-duke.*synth-msmt"):
        ensure_domain("synth-cuhk", tmp_path, size="tiny")
    with pytest.raises(ValueError, match="tiny.*default"):
        ensure_domain("synth-market", tmp_path, size="huge")
    with pytest.raises(ValueError, match="seed"):
        ensure_domain("synth-market", tmp_path, size="tiny", seed=-1)
    assert not any(tmp_path.iterdir())


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path, tiny):
    again = ensure_domain("synth-market", tmp_path / "again", size="tiny", seed=0, progress=False)
    assert again.name == "synth-market-tiny-seed0"
    assert files(again) == files(tiny["synth-market"])
    other = ensure_domain("synth-market", tmp_path / "other", size="tiny", seed=1, progress=False)
    assert other.name == "synth-market-tiny-seed1"
    first, second = files(tiny["synth-market"]), files(other)
    shared = set(first) & set(second) - {synthetic.MARKER}
    assert set(first) != set(second) or any(first[k] != second[k] for k in shared)


@pytest.mark.parametrize("name, num_cams", [("synth-market", 6), ("synth-duke", 8), ("synth-msmt", 15)])
def test_structure_matches_the_domain_and_size_spec(tiny, name, num_cams):
    spec, size = DOMAINS[name], SIZES["tiny"]
    assert spec.num_cams == num_cams
    splits = parse(tiny[name])
    train, query, gallery = (splits[s] for s in SPLITS)
    cams = {cam for rows in splits.values() for _, cam, _ in rows}
    assert cams == set(range(1, num_cams + 1))

    train_ids = {pid for pid, _, _ in train}
    test_ids = {pid for pid, _, _ in query + gallery} - {0}
    assert (len(train_ids), len(test_ids)) == identity_counts(spec, size)
    assert not train_ids & test_ids and 0 not in train_ids and 0 not in {pid for pid, _, _ in query}

    per_train = defaultdict(int)
    for pid, _, _ in train:
        per_train[pid] += 1
    # An identity seen by more cameras than the size's image count gets one image per camera
    # (two per camera in the test split): the domain's cameras per identity win.
    min_cams = spec.cams_per_id[0]
    lo, hi = train_images_range(spec, size)
    assert all(lo <= n <= max(hi, min_cams) for n in per_train.values())
    per_test = defaultdict(int)
    for pid, _, _ in query + gallery:
        per_test[pid] += pid != 0
    lo, hi = size.test_images
    assert all(lo <= per_test[pid] <= max(hi, 2 * min_cams) for pid in test_ids)

    query_cams = defaultdict(list)
    for pid, cam, _ in query:
        query_cams[pid].append(cam)
    assert set(query_cams) == test_ids
    assert all(len(c) == len(set(c)) <= size.max_queries for c in query_cams.values())
    gallery_cams = defaultdict(set)
    for pid, cam, _ in gallery:
        gallery_cams[pid].add(cam)
    for pid, cam, _ in query:
        assert gallery_cams[pid] - {cam}, f"query {pid} c{cam} has no gallery match in another camera"

    distractors = sum(pid == 0 for pid, _, _ in gallery)
    assert distractors == round(spec.distractor_fraction * (len(gallery) - distractors))
    with Image.open(train[0][2]) as img:
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (OUT_W, OUT_H))


def test_market_has_distractors(tiny):
    assert any(pid == 0 for pid, _, _ in parse(tiny["synth-market"])["bounding_box_test"])


def test_second_call_reuses_the_cache_without_rewriting(tiny):
    folder = tiny["synth-duke"]
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert ensure_domain("synth-duke", folder.parent, size="tiny", seed=0, progress=False) == folder
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
    assert sorted(p.name for p in folder.parent.iterdir()) == sorted(f"{n}-tiny-seed0" for n in DOMAINS)


def test_stale_marker_triggers_regeneration(tmp_path):
    folder = ensure_domain("synth-market", tmp_path, size="tiny", seed=0, progress=False)
    reference = files(folder)
    marker = folder / synthetic.MARKER
    marker.write_text(json.dumps({"hash": "from an older generator"}))
    (folder / "query" / "0001_c1s1_999999_00.jpg").write_bytes(b"stale")
    assert ensure_domain("synth-market", tmp_path, size="tiny", seed=0, progress=False) == folder
    assert files(folder) == reference
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_interrupted_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_render = synthetic._Renderer.render

    def dies_midway(self, *args):
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt
        return real_render(self, *args)

    monkeypatch.setattr(synthetic._Renderer, "render", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        ensure_domain("synth-market", tmp_path, size="tiny", seed=0, progress=False)
    assert calls["n"] == 21 and not any(tmp_path.iterdir())


def test_temp_folders_of_dead_runs_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    leftover = tmp_path / f".synth-market-tiny-seed0.tmp-{int(dead.stdout)}-deadbeef"
    (leftover / "query").mkdir(parents=True)
    folder = ensure_domain("synth-market", tmp_path, size="tiny", seed=0, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def _camera_chroma(train: list) -> dict[int, np.ndarray]:
    """Per camera, the mean over its images of (mean R, G, B) / mean intensity: white balance and cast."""
    by_cam = defaultdict(list)
    for _, cam, path in train:
        rgb = (np.asarray(Image.open(path), np.float32) / 255).reshape(-1, 3).mean(0)
        by_cam[cam].append(rgb / rgb.mean())
    return {cam: np.mean(values, 0) for cam, values in by_cam.items()}


def _style(**changes):
    return dataclasses.replace(DOMAINS["synth-duke"].style, **changes)


def _render(style, identity_seed=0, **camera_changes):
    """One image of one identity; the camera, background and image draws do not depend on the identity."""
    camera = dataclasses.replace(make_cameras(style, 1, np.random.default_rng(1))[0], occlusion=0.0, **camera_changes)
    ident = sample_identity(style, np.random.default_rng(identity_seed))
    image = render_image(ident, camera, style, make_background(camera, style), np.random.default_rng(2))
    return np.asarray(image, np.float32)


def _cast_spread(name: str, num_cams: int = 12) -> float:
    """How differently a domain's cameras colour one scene: the same person, background and framing
    rendered through each camera's colour (cast, gain, saturation); std over cameras of the chroma."""
    style = DOMAINS[name].style
    chroma = []
    for cam in make_cameras(style, num_cams, np.random.default_rng(0)):
        mean = _render(style, cast=cam.cast, gain=cam.gain, saturation=cam.saturation).reshape(-1, 3).mean(0)
        chroma.append(mean / mean.mean())
    return float(np.stack(chroma).std(0).mean())


def test_white_balance_and_camera_casts_show_in_the_pixels(tiny):
    """Two domain-gap knobs measured on the images: market is rendered warm and duke cool, and market's
    cameras tint colours far more differently from one another (camera_cast 0.3 vs 0.1)."""
    chroma = {name: _camera_chroma(parse(tiny[name])["bounding_box_train"]) for name in ("synth-market", "synth-duke")}
    warmth = {name: np.mean([c[0] - c[2] for c in cams.values()]) for name, cams in chroma.items()}
    assert warmth["synth-market"] > warmth["synth-duke"] + 0.1, warmth
    spread = {name: _cast_spread(name) for name in ("synth-market", "synth-duke")}
    assert spread["synth-market"] > 2 * spread["synth-duke"], spread
    assert DOMAINS["synth-market"].style.camera_cast > DOMAINS["synth-duke"].style.camera_cast


def test_identity_grid_rows_are_identities_and_columns_cameras():
    grid = render_identity_grid("synth-duke", num_ids=3, cams=[1, 2, 5], seed=0, gap=2)
    assert grid.dtype == np.uint8 and grid.shape == (3 * OUT_H + 4, 3 * OUT_W + 4, 3)
    assert np.array_equal(grid, render_identity_grid("synth-duke", num_ids=3, cams=[1, 2, 5], seed=0, gap=2))
    with pytest.raises(ValueError, match="1..8"):
        render_identity_grid("synth-duke", cams=[9])


def test_generated_domain_loads_through_the_market_parser(tiny):
    dataset = load_dataset("synth-msmt", tiny["synth-msmt"].parent, size="tiny", seed=0, progress=False)
    assert dataset.num_cams == 15
    assert dataset.num_train_pids == identity_counts(DOMAINS["synth-msmt"], SIZES["tiny"])[0]


def test_a_camera_without_saturation_renders_grey():
    style = _style(noise=0.0, camera_desaturation=1.0)
    colour_spread = [np.ptp(_render(style, saturation=s), axis=2).mean() for s in (0.0, 1.0)]
    assert colour_spread[0] < 1.0 < colour_spread[1] / 10, colour_spread
    cameras = make_cameras(style, 50, np.random.default_rng(0))
    assert 0.0 <= min(c.saturation for c in cameras) < 0.1 and max(c.saturation for c in cameras) > 0.9
    assert {c.saturation for c in make_cameras(_style(camera_desaturation=0.0), 5, np.random.default_rng(0))} == {1.0}


def test_tight_crops_cut_off_the_top_of_the_head():
    """Two people in the same scene: a loose crop (0.65) shows the same background above both heads;
    a crop tighter than the person (1.2) has the person in its top row."""
    style = _style(noise=0.0)
    top_rows = {scale: [_render(style, seed, scale=scale)[:2] for seed in (0, 1)] for scale in (0.65, 1.2)}
    assert np.array_equal(*top_rows[0.65])
    assert not np.array_equal(*top_rows[1.2])
    assert not np.array_equal(_render(style, scale=1.1), _render(style, scale=1.25)), "heights above 1 are clipped"


@pytest.mark.parametrize("changes, field", [
    ({"scale": (0.5, 0.9)}, "scale"), ({"scale": (0.9, 1.4)}, "scale"), ({"scale": (1.0, 0.9)}, "scale"),
    ({"camera_desaturation": -0.1}, "camera_desaturation"), ({"camera_desaturation": 1.5}, "camera_desaturation"),
])
def test_out_of_range_style_knobs_are_refused_by_name(changes, field):
    with pytest.raises(ValueError, match=f"DomainStyle.{field}"):
        _style(**changes)


def test_train_images_scale_multiplies_training_images_only():
    """A domain's ``train_images_scale`` gives each training identity that many times the size's
    images (the real datasets differ in images per identity); the test split is drawn as before."""
    spec, size = DOMAINS["synth-transient-market"], SIZES["tiny"]
    assert spec.train_images_scale == 1.0 and train_images_range(spec, size) == size.train_images
    doubled = dataclasses.replace(spec, train_images_scale=2.0)
    assert train_images_range(doubled, size) == (2 * size.train_images[0], 2 * size.train_images[1])
    plans = {s: plan_domain(d, size, seed=0) for s, d in ((1.0, spec), (2.0, doubled))}
    train = {s: sum(job.split == "train" for job in plan) for s, plan in plans.items()}
    assert 1.6 * train[1.0] < train[2.0] < 2.4 * train[1.0]
    test = {s: sorted((job.pid, job.cam) for job in plan if job.split != "train" and job.pid)
            for s, plan in plans.items()}
    assert test[2.0] == test[1.0]
    with pytest.raises(ValueError, match="train_images_scale of synth-transient-market must be > 0"):
        dataclasses.replace(spec, train_images_scale=0.0)


CUE_FIELDS = {"lower": {"lower"}, "upper": {"upper"}, "bag": {"bag", "bag_colour"}, "hair": {"hair", "long_hair", "hat"},
              "upper2": {"upper2", "upper_pattern"}}


@pytest.mark.parametrize("cue", sorted(CUE_FIELDS))
def test_look_alike_families_share_an_outfit_and_differ_in_their_domains_cue(cue):
    """Identities 1-3 are one family: everything but the domain's cue is the family's, and the cue differs
    from one member to the next; identity 4 starts the next family. The same seed draws the same people."""
    spec = dataclasses.replace(DOMAINS["synth-duke"], family_size=3, look_alike_cue=cue)
    renderer = synthetic._Renderer(spec, seed=0)
    people = [renderer.identity(("identity", pid)) for pid in (1, 2, 3, 4)]
    for member in people[1:3]:
        differing = {f.name for f in dataclasses.fields(member) if getattr(member, f.name) != getattr(people[0], f.name)}
        assert differing and differing <= CUE_FIELDS[cue], differing
    assert people[3].upper != people[0].upper
    again = synthetic._Renderer(spec, seed=0)
    assert [again.identity(("identity", pid)) for pid in (1, 2, 3, 4)] == people
    transient = synthetic._Renderer(DOMAINS["synth-transient-duke"], seed=0)
    assert transient.identity(("identity", 2)).upper != transient.identity(("identity", 1)).upper
    with pytest.raises(ValueError, match="look_alike_cue"):
        dataclasses.replace(spec, look_alike_cue="shoes")


def test_haze_pulls_each_cameras_images_towards_its_colour_and_leaves_other_draws_alone():
    hazy, clear = _style(camera_haze=0.4, noise=0.0), _style(camera_haze=0.0, noise=0.0)
    cams = {s.camera_haze: make_cameras(s, 4, np.random.default_rng(3)) for s in (hazy, clear)}
    assert all(c.haze == 0.0 for c in cams[0.0])
    assert all(0.2 <= c.haze <= 0.6 for c in cams[0.4]) and len({c.haze_colour for c in cams[0.4]}) == 4
    assert [dataclasses.replace(c, haze=0.0, haze_colour=(0.5, 0.5, 0.5)) for c in cams[0.4]] == list(cams[0.0])
    images = {}
    for people in (0, 1):
        for index, camera in enumerate(cams[0.4][:2]):
            images[people, index] = np.asarray(render_image(
                sample_identity(hazy, np.random.default_rng(people)), camera, hazy, make_background(camera, hazy),
                np.random.default_rng(9)), np.float32)
            assert np.array_equal(images[people, index], np.asarray(render_image(
                sample_identity(hazy, np.random.default_rng(people)), camera, hazy, make_background(camera, hazy),
                np.random.default_rng(9)), np.float32))
    clear_image = np.asarray(render_image(sample_identity(clear, np.random.default_rng(0)), cams[0.0][0], clear,
                                          make_background(cams[0.0][0], clear), np.random.default_rng(9)), np.float32)
    target = np.asarray(cams[0.4][0].haze_colour, np.float32) * 255
    assert np.abs(images[0, 0] - target).mean() < np.abs(clear_image - target).mean()
    with pytest.raises(ValueError, match="DomainStyle.camera_haze"):
        _style(camera_haze=1.0)


@pytest.mark.parametrize("name", sorted(synthetic.PERSISTENT_NOISE))
def test_a_transient_domain_is_its_persistent_namesake_without_the_noise_knobs(name):
    persistent, transient = DOMAINS[name], DOMAINS[name.replace("synth-", "synth-transient-")]
    knobs = synthetic.PERSISTENT_NOISE[name]
    assert (persistent.family_size, persistent.look_alike_cue, persistent.style.camera_haze,
            persistent.train_images_scale) == tuple(knobs)
    assert persistent.style.camera_haze > 0 == transient.style.camera_haze and transient.family_size == 1
    assert dataclasses.replace(persistent, name=transient.name, family_size=1, look_alike_cue=transient.look_alike_cue,
                               train_images_scale=transient.train_images_scale,
                               style=dataclasses.replace(persistent.style, camera_haze=0.0)) == transient


def test_each_domain_with_look_alikes_has_a_cue_of_its_own():
    cues = [knobs.look_alike_cue for knobs in synthetic.PERSISTENT_NOISE.values() if knobs.family_size > 1]
    assert len(cues) >= 2 and len(set(cues)) == len(cues)  # no source teaches a target's cue


def test_families_and_haze_leave_the_plan_alone():
    persistent = DOMAINS["synth-market"]
    transient = dataclasses.replace(DOMAINS["synth-transient-market"], train_images_scale=persistent.train_images_scale)
    assert persistent.family_size > 1 and persistent.style.camera_haze > 0 == transient.style.camera_haze
    assert plan_domain(persistent, SIZES["tiny"], 0) == plan_domain(transient, SIZES["tiny"], 0)
    with pytest.raises(ValueError, match="family_size"):
        dataclasses.replace(persistent, family_size=0)
