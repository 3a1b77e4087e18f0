"""shared/drift.py: profiles of images, PSI per feature, the drift score."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from shared import datasets, drift


@pytest.fixture(scope="module")
def sample() -> datasets.Dataset:
    return datasets.load("mnist-sample")


def blank(n: int = 1) -> np.ndarray:
    return np.zeros((n, drift.PIXELS), dtype=np.uint8)


def test_a_profile_is_json_of_ints_one_count_per_image_and_feature(sample: datasets.Dataset) -> None:
    p = drift.profile(sample.x_train, sample.y_train)
    assert list(p) == list(drift.FEATURES)
    assert all(len(p[f]) == drift.bin_count(f) for f in drift.FEATURES)
    assert json.loads(json.dumps(p)) == p
    assert all(type(c) is int for counts in p.values() for c in counts)
    assert {f: sum(p[f]) for f in p} == dict.fromkeys(drift.FEATURES, len(sample.y_train))
    assert drift.count(p) == len(sample.y_train)
    assert p["label"] == np.bincount(sample.y_train, minlength=10).tolist()
    assert drift.check(json.loads(json.dumps(p))) == p


def test_psi_of_a_profile_against_itself_is_zero(sample: datasets.Dataset) -> None:
    p = drift.profile(sample.x_train, sample.y_train)
    assert drift.psi(p, p) == dict.fromkeys(drift.FEATURES, 0.0)
    assert drift.score(p, p) == 0.0


def test_the_test_split_of_the_same_digits_does_not_drift(sample: datasets.Dataset) -> None:
    assert sample.x_test is not None and sample.y_test is not None
    reference = drift.profile(sample.x_train, sample.y_train)
    assert drift.score(reference, drift.profile(sample.x_test, sample.y_test)) < 0.1


def test_brighter_images_drift(sample: datasets.Dataset) -> None:
    reference = drift.profile(sample.x_train, sample.y_train)
    brighter = np.minimum(sample.x_train.astype(np.int16) * 2, 255).astype(np.uint8)
    psi = drift.psi(reference, drift.profile(brighter, sample.y_train))
    assert psi["mean"] > drift.THRESHOLD
    assert psi["label"] == 0.0  # the same labels
    assert drift.score(reference, drift.profile(brighter, sample.y_train)) == max(psi.values())


def test_labels_all_of_one_class_drift(sample: datasets.Dataset) -> None:
    reference = drift.profile(sample.x_train, sample.y_train)
    sevens = sample.x_train[sample.y_train == 7]
    live = drift.profile(sevens, np.full(len(sevens), 7))
    psi = drift.psi(reference, live)
    assert psi["label"] > drift.THRESHOLD
    assert drift.score(reference, live) > drift.THRESHOLD


def test_digits_moved_off_centre_drift(sample: datasets.Dataset) -> None:
    reference = drift.profile(sample.x_train, sample.y_train)
    img = sample.x_train.reshape(-1, 28, 28)
    down = np.zeros_like(img)
    down[:, 4:, :] = img[:, :-4, :]
    psi = drift.psi(reference, drift.profile(down.reshape(-1, 784), sample.y_train))
    assert psi["row"] > drift.THRESHOLD
    assert psi["row"] > 10 * psi["col"]  # the rows cut off move the columns' centre a little


def test_psi_matches_a_hand_computed_example() -> None:
    # Shares p = (1/4, 3/4) and q = (3/4, 1/4): (q1 − p1)·ln(q1/p1) + (q2 − p2)·ln(q2/p2)
    # = 0.5·ln 3 + (−0.5)·ln(1/3) = ln 3.
    assert drift.psi({"x": [1, 3]}, {"x": [30, 10]}) == {"x": pytest.approx(math.log(3))}
    # p = (0.5, 0.3, 0.2), q = (0.3, 0.3, 0.4):
    expected = -0.2 * math.log(0.3 / 0.5) + 0 + 0.2 * math.log(0.4 / 0.2)
    assert drift.psi({"y": [5, 3, 2]}, {"y": [3, 3, 4]})["y"] == pytest.approx(expected)


def test_empty_bins_cost_a_finite_amount_not_a_division_by_zero() -> None:
    got = drift.psi({"x": [10, 0, 0]}, {"x": [0, 0, 10]})["x"]
    # Each share floored at EPSILON: both empty bins on the ends cost (1 − ε)·ln(1/ε); the middle 0.
    eps = drift.EPSILON
    assert got == pytest.approx(2 * (1 - eps) * math.log(1 / eps))
    assert math.isfinite(got)
    assert drift.psi({"x": [4, 0]}, {"x": [4, 0]}) == {"x": 0.0}  # an empty bin on both sides costs nothing


def test_a_feature_that_counts_no_image_cannot_be_compared() -> None:
    with pytest.raises(ValueError, match="counts no image"):
        drift.psi(drift.empty(), drift.profile(blank(), np.zeros(1, np.uint8)))


def test_profiles_of_different_shapes_cannot_be_compared_or_merged() -> None:
    p = drift.empty()
    with pytest.raises(ValueError, match="different features"):
        drift.psi(p, {"mean": p["mean"]})
    with pytest.raises(ValueError, match="bins"):
        drift.merge(p, {**p, "mean": [0] * 3})


def test_merge_adds_the_counts_of_two_sets_of_images(sample: datasets.Dataset) -> None:
    x, y = sample.x_train, sample.y_train
    halves = drift.merge(drift.profile(x[:1000], y[:1000]), drift.profile(x[1000:], y[1000:]))
    assert halves == drift.profile(x, y)
    assert drift.merge(drift.empty(), halves) == halves


def test_bins_cover_every_possible_value() -> None:
    # The extremes of each feature: no ink, all white, one pixel in each corner.
    images = np.zeros((6, 28, 28), dtype=np.uint8)
    images[1] = 255
    images[2, 0, 0] = 1
    images[3, 27, 27] = 255
    images[4, 0, 27] = 128
    images[5, 27, 0] = 127
    x = images.reshape(6, 784)
    labels = np.array([0, 9, 1, 2, 3, 4])
    values = drift.features(x)
    assert values["mean"].tolist() == pytest.approx(
        [0, 1, 1 / 784 / 255, 1 / 784, 128 / 784 / 255, 127 / 784 / 255]
    )
    assert values["ink"].tolist() == pytest.approx([0, 1, 0, 1 / 784, 1 / 784, 0])  # 128 is ink, 127 is not
    assert values["row"].tolist() == [13.5, 13.5, 0, 27, 0, 27]  # a blank image counts at the centre
    assert values["col"].tolist() == [13.5, 13.5, 0, 27, 27, 0]
    p = drift.profile(x, labels)
    assert {f: sum(p[f]) for f in p} == dict.fromkeys(drift.FEATURES, 6)
    assert p["row"][0] == 2 and p["row"][-1] == 2  # 0 in the first bin, 27 in the last
    assert p["mean"][0] == 5 and p["mean"][-1] == 1
    assert p["label"] == [1, 1, 1, 1, 1, 0, 0, 0, 0, 1]
    # Every pixel value and every centre of mass 0–27 lands in a bin.
    for v in range(256):
        flat = np.full((1, 784), v, dtype=np.uint8)
        assert sum(drift.profile(flat, np.zeros(1, np.int64))["mean"]) == 1
    for f in ("row", "col"):
        assert np.digitize(np.arange(28), drift.BINS[f]).tolist()[0] == 0
        assert np.digitize(np.arange(28), drift.BINS[f]).max() == drift.bin_count(f) - 1
    assert drift.profile(blank(0), np.zeros(0, np.uint8)) == drift.empty()


@pytest.mark.parametrize(
    ("pixels", "labels", "words"),
    [
        (np.zeros((2, 784), np.float32), np.zeros(2, np.uint8), "uint8"),
        (np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8), "uint8"),
        (np.zeros((2, 784), np.uint8), np.zeros(3, np.uint8), "labels"),
        (np.zeros((2, 784), np.uint8), np.array([0, 10]), "0–9"),
        (np.zeros((2, 784), np.uint8), np.array([0.0, 1.0]), "integers"),
    ],
)
def test_profile_refuses_what_is_not_images_and_labels(
    pixels: np.ndarray, labels: np.ndarray, words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        drift.profile(pixels, labels)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        {"mean": [0] * 10},
        {**drift.empty(), "mean": [0] * 9},
        {**drift.empty(), "ink": [-1] + [0] * 9},
        {**drift.empty(), "row": [True] + [0] * 9},
        {**drift.empty(), "extra": [0]},
    ],
)
def test_check_refuses_what_is_not_a_profile(raw: object) -> None:
    with pytest.raises(ValueError, match="profile"):
        drift.check(raw)


def test_a_profile_kept_as_counters_reads_back(sample: datasets.Dataset) -> None:
    p = drift.profile(sample.x_train[:500], sample.y_train[:500])
    fields = drift.counters(p)
    assert fields["profile:label:0"] == p["label"][0] and all(v > 0 for v in fields.values())
    assert "profile:row:0" not in fields  # empty bins are not written
    # As HGETALL gives them back (bytes), beside other counters of the same hash.
    stored = {k.encode(): str(v).encode() for k, v in fields.items()} | {
        b"requests": b"7",
        b"profile:x:1": b"2",
    }
    assert drift.from_counters(stored) == p
    assert drift.from_counters({}) == drift.empty()
