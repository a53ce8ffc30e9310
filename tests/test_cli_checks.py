"""Argument and model checks that run before any work starts."""

import json

import pytest

from toau.cli import main, positive_int


def test_positive_int_rejects_zero():
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="at least 1, got 0"):
        positive_int("0")


@pytest.mark.parametrize("argv", [
    ["edge", "video.mp4", "-o", "x.toau", "--threads", "0"],
    ["prepare", "--max-clips", "0"],
])
def test_zero_counts_rejected(argv, capsys):
    with pytest.raises(SystemExit) as error:
        main(argv)
    assert error.value.code == 2
    assert "at least 1" in capsys.readouterr().err


def test_edge_missing_output_folder(tmp_path, capsys):
    video = tmp_path / "video.mp4"
    video.write_bytes(b"not read")
    code = main(["edge", str(video), "-o", str(tmp_path / "x.toau"), "--preview", str(tmp_path / "no" / "p.mp4")])
    assert code == 2
    assert "--preview" in capsys.readouterr().err


def test_edge_video_is_folder(tmp_path, capsys):
    code = main(["edge", str(tmp_path), "-o", str(tmp_path / "x.toau")])
    assert code == 2
    assert "is a folder" in capsys.readouterr().err


def test_edge_output_is_folder(tmp_path, capsys):
    video = tmp_path / "video.mp4"
    video.write_bytes(b"not read")
    code = main(["edge", str(video), "-o", str(tmp_path)])
    assert code == 2
    assert f"-o: {tmp_path} is a folder" in capsys.readouterr().err


def test_send_url_without_scheme(tmp_path, capsys):
    packet = tmp_path / "clip.toau"
    packet.write_bytes(b"not read")
    code = main(["send", str(packet), "--question", "what?", "--url", "127.0.0.1:8000"])
    assert code == 2
    assert "write http://127.0.0.1:8000" in capsys.readouterr().err


def test_projector_for_other_codebook_rejected(tmp_path):
    from toau.cloud.service import check_projector_codebook, random_tokenizer

    tokenizer = random_tokenizer()
    (tmp_path / "cloud.json").write_text(json.dumps({"codebook_hash": "00" * 8}))
    with pytest.raises(ValueError, match=tokenizer.hash.hex()):
        check_projector_codebook(tmp_path, tokenizer)


def test_projector_for_same_codebook_accepted(tmp_path):
    from toau.cloud.service import check_projector_codebook, random_tokenizer

    tokenizer = random_tokenizer()
    (tmp_path / "cloud.json").write_text(json.dumps({"codebook_hash": tokenizer.hash.hex()}))
    check_projector_codebook(tmp_path, tokenizer)  # raises on a mismatch
