from collections import Counter

import pytest

from voicescreen.train.data import ProtocolError, balanced_subset, load_split, read_protocol


def test_shared_corpus_splits_load(data_dir):
    sizes = {s: len(load_split(data_dir, s)) for s in ("train", "dev", "eval")}
    assert sizes == {"train": 600, "dev": 200, "eval": 200}
    train = load_split(data_dir, "train")
    assert Counter(u.label for u in train) == {"bonafide": 300, "spoof": 300}
    assert all(u.path.is_file() for u in train)
    assert {u.attack for u in train if not u.is_bonafide} == {"A01", "A02", "A03"}


def test_official_layout_is_found(tmp_path, data_dir):
    root = tmp_path / "LA"
    (root / "ASVspoof2019_LA_cm_protocols").mkdir(parents=True)
    (root / "ASVspoof2019_LA_dev" / "flac").mkdir(parents=True)
    src = load_split(data_dir, "dev")[:3]
    lines = []
    for u in src:
        (root / "ASVspoof2019_LA_dev" / "flac" / f"{u.file}.flac").symlink_to(u.path)
        lines.append(f"{u.speaker} {u.file} - {u.attack} {u.label}")
    (root / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.dev.trl.txt").write_text(
        "\n".join(lines) + "\n"
    )
    assert [u.file for u in load_split(root, "dev")] == [u.file for u in src]


def test_bad_protocol_lists_every_problem(tmp_path):
    (tmp_path / "flac").mkdir()
    (tmp_path / "flac" / "A.flac").write_bytes(b"")
    proto = tmp_path / "p.txt"
    proto.write_text("S A - - bonafide\nS B - A01 spoof\ngarbage line\nS C - - maybe\n")
    with pytest.raises(ProtocolError) as e:
        read_protocol(proto, tmp_path / "flac")
    msg = str(e.value)
    assert "2 malformed" in msg and "line 3" in msg and "line 4" in msg
    assert "1 file(s) missing" in msg and "B" in msg


def test_balanced_subset_is_seeded_and_balanced(data_dir):
    train = load_split(data_dir, "train")
    a = balanced_subset(train, 100, seed=7)
    assert [u.file for u in a] == [u.file for u in balanced_subset(train, 100, seed=7)]
    assert [u.file for u in a] != [u.file for u in balanced_subset(train, 100, seed=8)]
    assert Counter(u.label for u in a) == {"bonafide": 50, "spoof": 50}
    b = balanced_subset(train, 60, seed=1, per_attack=True)
    assert Counter(u.attack for u in b if not u.is_bonafide) == {"A01": 10, "A02": 10, "A03": 10}
    assert len(balanced_subset(train, None)) == 600
