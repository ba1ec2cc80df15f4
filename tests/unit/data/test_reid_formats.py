import hashlib
import shutil

import pandas as pd
import pytest

from advreid.data.formats.base import DatasetFormatError
from advreid.data.formats.reid import (
    REID_READERS,
    read_cuhk03,
    read_dukemtmc,
    read_market1501,
    read_msmt17,
    read_veri776,
)
from advreid.data.manifest import CORE_NAMES, to_table
from tests.fixtures_reid import (
    REID_WRITERS,
    truncate_file,
    write_cuhk03_np,
    write_dukemtmc,
    write_market1501,
    write_msmt17,
    write_text_lines,
    write_veri776,
)


def _all_rows(raw) -> pd.DataFrame:
    return pd.concat(raw.frames.values(), ignore_index=True).sort_values("path").reset_index(drop=True)


def _copy_image(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def test_registry_has_the_five_datasets_and_a_writer_for_each():
    assert set(REID_READERS) == {"market1501", "dukemtmc", "msmt17", "cuhk03", "veri776"}
    assert set(REID_WRITERS) == set(REID_READERS)


@pytest.mark.parametrize("name", sorted(REID_READERS))
def test_reader_returns_what_the_writer_wrote(tmp_path, name):
    written = REID_WRITERS[name](tmp_path / name)
    raw = REID_READERS[name](written.root)

    assert (raw.name, raw.kind, raw.image_size) == (name, "reid", None)
    expected = written.expected
    if name == "cuhk03":  # the reader's default variant
        expected = expected[expected["variant"] == "labeled"]
    extras = [c for c in expected.columns if c not in ("split", "path", "label", "camera", "frame", "variant", "list")]
    columns = ["split", "path", "label", "camera", "frame", *extras]
    rows = _all_rows(raw)
    pd.testing.assert_frame_equal(
        rows[columns], expected[columns].reset_index(drop=True), check_dtype=False, check_like=False
    )
    assert {split: len(frame) for split, frame in raw.frames.items()} == written.counts
    assert set(rows["dataset"]) == {name} and set(rows["domain"]) == {name}
    # fixture images are 16 high and 8 wide; a swapped width/height would show here
    assert set(rows["width"]) == {8} and set(rows["height"]) == {16}
    for path, digest in zip(rows["path"], rows["sha256"], strict=True):
        assert digest == hashlib.sha256((written.root / path).read_bytes()).hexdigest()
    for split, frame in raw.frames.items():
        assert set(CORE_NAMES) <= set(frame.columns) and "frame" in frame.columns
        table = to_table(frame, source=f"{name}/{split}")  # casts to the manifest schema or raises
        assert table.num_rows == len(frame)


def test_domain_option_overrides_the_dataset_name(tmp_path):
    written = write_market1501(tmp_path)
    rows = _all_rows(read_market1501(written.root, domain="target"))
    assert set(rows["domain"]) == {"target"} and set(rows["dataset"]) == {"market1501"}


def test_fixture_writers_are_deterministic_given_a_seed(tmp_path):
    first = read_market1501(write_market1501(tmp_path / "a", seed=3).root)
    second = read_market1501(write_market1501(tmp_path / "b", seed=3).root)
    other = read_market1501(write_market1501(tmp_path / "c", seed=4).root)
    assert list(first.frames["gallery"]["sha256"]) == list(second.frames["gallery"]["sha256"])
    assert set(first.frames["gallery"]["sha256"]).isdisjoint(other.frames["gallery"]["sha256"])


def test_market_names_parse_to_id_camera_sequence_and_frame(tmp_path):
    written = write_market1501(tmp_path)
    sample = written.root / written.expected["path"].iloc[0]
    _copy_image(sample, tmp_path / "bounding_box_test" / "-1_c1s1_000401_03.jpg")
    _copy_image(sample, tmp_path / "query" / "1501_c6s4_001877_00.jpg")
    rows = _all_rows(read_market1501(tmp_path)).set_index("path")

    junk = rows.loc["bounding_box_test/-1_c1s1_000401_03.jpg"]
    assert (junk["split"], junk["label"], junk["camera"], junk["sequence"], junk["frame"]) == (
        "gallery",
        -1,
        1,
        1,
        401,
    )
    query = rows.loc["query/1501_c6s4_001877_00.jpg"]
    assert (query["split"], query["label"], query["camera"], query["sequence"], query["frame"]) == (
        "query",
        1501,
        6,
        4,
        1877,
    )


def test_market_keeps_junk_and_distractors_in_gallery_and_drops_them_from_train(tmp_path):
    written = write_market1501(
        tmp_path,
        train_ids=(1, 2, 3),
        test_ids=(4, 5),
        cameras=(1, 2, 3),
        per_camera=2,
        junk=2,
        distractors=3,
        train_junk=4,
    )
    raw = read_market1501(written.root)
    train, query, gallery = raw.frames["train"], raw.frames["query"], raw.frames["gallery"]
    assert len(train) == 3 * 3 * 2  # 4 junk / distractor train images dropped
    assert not train["label"].isin([-1, 0]).any()
    assert len(query) == 2 * 3
    assert len(gallery) == 2 * 3 * 2 + 2 + 3
    assert (gallery["label"] == -1).sum() == 2 and (gallery["label"] == 0).sum() == 3
    # the junk files are on disk, Thumbs.db too, yet neither reaches the manifest
    assert len([p for p in (tmp_path / "bounding_box_train").iterdir() if p.suffix == ".jpg"]) == 18 + 4
    assert (tmp_path / "bounding_box_test" / "Thumbs.db").is_file()


@pytest.mark.parametrize("name", ["-1_c2s1_000101_01.jpg", "0000_c2s1_000101_01.jpg"])
def test_market_query_with_junk_or_distractor_label_is_an_error(tmp_path, name):
    written = write_market1501(tmp_path)
    _copy_image(written.root / written.expected["path"].iloc[0], tmp_path / "query" / name)
    with pytest.raises(DatasetFormatError, match=name):
        read_market1501(tmp_path)


@pytest.mark.parametrize(
    ("writer", "reader", "relative"),
    [
        (write_market1501, read_market1501, "bounding_box_train/0001_c7s1_000101_01.jpg"),
        (write_market1501, read_market1501, "bounding_box_test/1502_c1s1_000101_01.jpg"),
        (write_dukemtmc, read_dukemtmc, "query/0004_c9_f0000101.jpg"),
        (write_cuhk03_np, read_cuhk03, "labeled/query/0004_c3_9.png"),
        (write_veri776, read_veri776, "image_train/0001_c021_00000001_0.jpg"),
    ],
)
def test_camera_or_id_out_of_range_names_the_file(tmp_path, writer, reader, relative):
    written = writer(tmp_path)
    if reader is read_veri776:
        (tmp_path / "name_train.txt").unlink()  # the folder is scanned, so the new file is read
    source = written.root / written.expected["path"].iloc[0]
    _copy_image(source, tmp_path / relative)
    with pytest.raises(DatasetFormatError, match=relative.split("/")[-1]):
        reader(tmp_path)


@pytest.mark.parametrize(
    ("writer", "reader", "relative"),
    [
        (write_market1501, read_market1501, "bounding_box_train/person_1.jpg"),
        (write_market1501, read_market1501, "query/0004_c1_000101_00.jpg"),
        (write_dukemtmc, read_dukemtmc, "bounding_box_test/0004_c1_0000101.jpg"),
        (write_cuhk03_np, read_cuhk03, "labeled/bounding_box_train/0001_c1_9.jpg"),
    ],
)
def test_badly_named_image_names_the_file(tmp_path, writer, reader, relative):
    written = writer(tmp_path)
    _copy_image(written.root / written.expected["path"].iloc[0], tmp_path / relative)
    with pytest.raises(DatasetFormatError, match=relative.split("/")[-1]):
        reader(tmp_path)


@pytest.mark.parametrize(
    ("writer", "reader", "folder"),
    [
        (write_market1501, read_market1501, "bounding_box_test"),
        (write_market1501, read_market1501, "query"),
        (write_dukemtmc, read_dukemtmc, "bounding_box_train"),
        (write_cuhk03_np, read_cuhk03, "labeled/query"),
        (write_veri776, read_veri776, "image_query"),
    ],
)
def test_missing_split_folder_names_the_folder(tmp_path, writer, reader, folder):
    writer(tmp_path)
    shutil.rmtree(tmp_path / folder)
    with pytest.raises(DatasetFormatError, match=folder.split("/")[-1]):
        reader(tmp_path)


def test_empty_split_folder_is_an_error(tmp_path):
    write_market1501(tmp_path)
    for image in (tmp_path / "query").glob("*.jpg"):
        image.unlink()
    with pytest.raises(DatasetFormatError, match="contains no images"):
        read_market1501(tmp_path)


@pytest.mark.parametrize("name", sorted(REID_READERS))
def test_truncated_image_names_the_file(tmp_path, name):
    written = REID_WRITERS[name](tmp_path)
    expected = written.expected
    if name == "cuhk03":  # only the default variant is read
        expected = expected[expected["variant"] == "labeled"]
    victim = expected[expected["split"] == "gallery"]["path"].iloc[0]
    truncate_file(written.root / victim)
    with pytest.raises(DatasetFormatError, match=victim.split("/")[-1]):
        REID_READERS[name](written.root)


def test_missing_root_is_an_error(tmp_path):
    with pytest.raises(DatasetFormatError, match="nowhere"):
        read_market1501(tmp_path / "nowhere")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_msmt17_both_layouts_and_val_merging(tmp_path, version):
    write_msmt17(tmp_path, version=version, train_ids=(0, 1, 2), test_ids=(0, 1), cameras=(7, 15), per_camera=2)
    train_dir = "train" if version == "v1" else "mask_train_v2"
    merged = read_msmt17(tmp_path, merge_val=True)
    assert {s: len(f) for s, f in merged.frames.items()} == {
        "train": 3 * 2 * 2,
        "query": 2 * 2,
        "gallery": 2 * 2 * 2,
    }
    assert merged.frames["train"]["path"].str.startswith(f"MSMT17_{version.upper()}/{train_dir}/").all()
    rows = _all_rows(merged)
    assert set(rows["camera"]) == {7, 15}
    assert set(rows["frame"]) == {-1}
    # pid 0 is a real MSMT17 person, kept in train and allowed in the query
    assert 0 in set(merged.frames["train"]["label"]) and 0 in set(merged.frames["query"]["label"])

    separate = read_msmt17(tmp_path)  # the default keeps val separate, as torchreid and fast-reid do
    assert {s: len(f) for s, f in separate.frames.items()} == {"train": 9, "val": 3, "query": 4, "gallery": 8}
    assert sorted(pd.concat([separate.frames["train"], separate.frames["val"]])["path"]) == sorted(
        merged.frames["train"]["path"]
    )


def test_msmt17_root_may_be_the_version_folder(tmp_path):
    written = write_msmt17(tmp_path, version="v2")
    raw = read_msmt17(tmp_path / "MSMT17_V2")
    paths = sorted(_all_rows(raw)["path"])
    assert paths == sorted(p.removeprefix("MSMT17_V2/") for p in written.expected["path"])


def test_msmt17_with_both_versions_needs_the_version_option(tmp_path):
    write_msmt17(tmp_path, version="v1", train_ids=(0,), test_ids=(0,))
    write_msmt17(tmp_path, version="v2", train_ids=(0, 1), test_ids=(0,))
    with pytest.raises(DatasetFormatError, match="version"):
        read_msmt17(tmp_path)
    assert len(read_msmt17(tmp_path, version="v2", merge_val=True).frames["train"]) == 2 * 3 * 2


def test_msmt17_list_naming_a_missing_image_names_list_line_and_path(tmp_path):
    write_msmt17(tmp_path)
    list_path = tmp_path / "MSMT17_V1" / "list_query.txt"
    missing = list_path.read_text().splitlines()[1].split()[0]
    (tmp_path / "MSMT17_V1" / "test" / missing).unlink()
    with pytest.raises(DatasetFormatError, match=rf"list_query\.txt line 2: .*{missing}"):
        read_msmt17(tmp_path)


def test_msmt17_list_pid_disagreeing_with_the_name_is_an_error(tmp_path):
    write_msmt17(tmp_path)
    list_path = tmp_path / "MSMT17_V1" / "list_gallery.txt"
    lines = list_path.read_text().splitlines()
    lines[2] = lines[2].split()[0] + " 99"
    write_text_lines(list_path, lines)
    with pytest.raises(DatasetFormatError, match=r"list_gallery\.txt line 3: pid 99"):
        read_msmt17(tmp_path)


def test_msmt17_missing_layout_names_what_it_looked_for(tmp_path):
    write_msmt17(tmp_path)
    shutil.rmtree(tmp_path / "MSMT17_V1" / "test")
    with pytest.raises(DatasetFormatError, match="MSMT17_V1"):
        read_msmt17(tmp_path)


@pytest.mark.parametrize("variant", ["labeled", "detected"])
def test_cuhk03_variants(tmp_path, variant):
    written = write_cuhk03_np(tmp_path, train_ids=(1, 2, 3), test_ids=(4, 5), per_camera=2)
    raw = read_cuhk03(tmp_path, variant=variant)
    assert {s: len(f) for s, f in raw.frames.items()} == {
        "train": 3 * 2 * 2,
        "query": 2 * 2,
        "gallery": 2 * 2 * 1,
    }
    rows = _all_rows(raw)
    assert rows["path"].str.startswith(f"{variant}/").all() and rows["path"].str.endswith(".png").all()
    assert set(rows["camera"]) == {1, 2}
    mine = written.expected[written.expected["variant"] == variant]
    assert sorted(rows["path"]) == sorted(mine["path"])


def test_cuhk03_unknown_variant_is_an_error(tmp_path):
    write_cuhk03_np(tmp_path)
    with pytest.raises(DatasetFormatError, match="variant"):
        read_cuhk03(tmp_path, variant="both")


def test_veri776_reads_the_same_with_and_without_name_lists(tmp_path):
    with_lists = read_veri776(write_veri776(tmp_path / "a", with_lists=True).root)
    without = read_veri776(write_veri776(tmp_path / "b", with_lists=False).root)
    for split in ("train", "query", "gallery"):
        pd.testing.assert_frame_equal(with_lists.frames[split], without.frames[split])


def test_veri776_name_parses_to_vehicle_camera_and_timestamp(tmp_path):
    written = write_veri776(tmp_path)
    name = "0776_c020_00123456_1.jpg"
    _copy_image(written.root / written.expected["path"].iloc[0], tmp_path / "image_test" / name)
    list_path = tmp_path / "name_test.txt"
    write_text_lines(list_path, [*list_path.read_text().splitlines(), name])
    row = read_veri776(tmp_path).frames["gallery"].set_index("path").loc[f"image_test/{name}"]
    assert (row["label"], row["camera"], row["timestamp"], row["frame"]) == (776, 20, 123456, -1)


def test_veri776_lists_are_the_source_of_truth(tmp_path):
    written = write_veri776(tmp_path)
    _copy_image(written.root / written.expected["path"].iloc[0], tmp_path / "image_train" / "0009_c001_00000005_0.jpg")
    assert len(read_veri776(tmp_path).frames["train"]) == written.counts["train"]  # unlisted file ignored

    list_path = tmp_path / "name_query.txt"
    missing = list_path.read_text().splitlines()[0]
    (tmp_path / "image_query" / missing).unlink()
    with pytest.raises(DatasetFormatError, match=rf"name_query\.txt line 1: .*{missing}"):
        read_veri776(tmp_path)


@pytest.mark.parametrize("name", sorted(REID_READERS))
def test_an_image_that_is_a_symlink_loop_is_named_not_dropped(tmp_path, name):
    """Path.is_file() answers False for a loop, so the image used to vanish from the manifest silently."""
    written = REID_WRITERS[name](tmp_path)
    rows = written.expected
    if "variant" in rows:  # CUHK03-NP: the reader reads the labeled variant by default
        rows = rows[rows["variant"] == "labeled"]
    victim = written.root / rows["path"].iloc[0]
    victim.unlink()
    victim.symlink_to(victim.name)  # points at itself
    with pytest.raises(DatasetFormatError, match="symbolic link loop") as info:
        REID_READERS[name](written.root)
    assert victim.name in str(info.value)


def test_a_split_folder_that_is_a_symlink_loop_is_named(tmp_path):
    written = write_market1501(tmp_path)
    shutil.rmtree(written.root / "query")
    (written.root / "query").symlink_to("query")
    with pytest.raises(DatasetFormatError, match=r"split folder .*query is a symbolic link loop"):
        read_market1501(written.root)


@pytest.mark.parametrize("name", ["dukemtmc", "msmt17", "cuhk03", "veri776"])
def test_max_pixels_refuses_a_huge_image_before_decoding_it(tmp_path, name):
    """Formats that declare no image size accepted any size; max_pixels bounds it (header only, no decode)."""
    written = REID_WRITERS[name](tmp_path)  # 16 x 8 images: 128 pixels
    assert len(_all_rows(REID_READERS[name](written.root, max_pixels=128))) == sum(written.counts.values())
    with pytest.raises(DatasetFormatError, match=r"8x16 = 128 pixels, above max_pixels 127"):
        REID_READERS[name](written.root, max_pixels=127)
    with pytest.raises(DatasetFormatError, match="max_pixels must be an integer >= 1"):
        REID_READERS[name](written.root, max_pixels="big")


def test_a_decompression_bomb_is_the_readers_error_naming_the_file(tmp_path, monkeypatch):
    from PIL import Image

    written = write_market1501(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # 16 x 8 = 128 > 2 x 50: PIL raises DecompressionBombError
    with pytest.raises(DatasetFormatError, match=r"\.jpg: image too large to decode safely"):
        read_market1501(written.root, max_pixels=10**6)
