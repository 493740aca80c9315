"""Bad input on the data side and in the evaluator: unreadable shards, bad captions, wrong detectors and
bad videos. Each is skipped and counted by name, or stops with one line naming the file (and line), exit 2,
no traceback; what the user sees is asserted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_evaluate import save_detectors
from tests.test_faults import ENV, ROOT, _shard, flags
from training import distill
from training import evaluate as ev
from training.data import Batches, DataError, ImageCaptions, VideoClips
from training.samples import encode_mp4
from training.toy.world import toy_clip, write_toy_image_shards, write_toy_shards


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_toy_shards(tmp_path_factory.mktemp("good"), num_clips=4, per_shard=4, frames=8, size=16)


def with_bad_shards(root: Path, good: Path) -> Path:
    """The good shard, a copy cut at 40 % (its first samples readable) and a file named .tar that is not one."""
    root.mkdir()
    shutil.copy(good / "toy-00000.tar", root)
    data = (good / "toy-00000.tar").read_bytes()
    (root / "toy-00000c.tar").write_bytes(data[: len(data) * 2 // 5])
    (root / "toy-00000b.tar").write_bytes(b"<html>not a tar</html>" * 40)
    return root


def reasons_of(batches: Batches, n: int) -> dict[str, int]:
    total = {}
    for _ in range(n):
        for reason, k in next(batches)["skip_reasons"].items():
            total[reason] = total.get(reason, 0) + k
    return total


# --- class 2: shards ---------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_shard_is_skipped_and_counted_by_name_and_the_samples_before_a_cut_are_used(
    tmp_path, good, workers, capfd
):
    root = with_bad_shards(tmp_path / "data", good)
    batches = Batches(VideoClips(root, 4, 1, 16, "center"), 2, workers)
    reasons = reasons_of(batches, 6)  # 12 good samples: more than two passes over the 4 + the cut copy's readable ones
    assert set(reasons) == {"unreadable shard toy-00000b.tar", "unreadable shard toy-00000c.tar"}
    assert all(n >= 2 for n in reasons.values())  # once per pass
    err = capfd.readouterr().err
    assert "unreadable shard toy-00000b.tar: not a tar file" in err and "unreadable shard toy-00000c.tar: " in err
    cut = VideoClips(tmp_path / "data" / "toy-00000c.tar", 4, 1, 16, "center")
    items = [x for x, _ in zip(iter(cut), range(3))]
    assert "video" in items[0] and items[-1]["reason"] == "unreadable shard toy-00000c.tar"


def test_a_bad_shard_in_the_middle_of_a_toy_run_is_counted_by_name_in_the_summary(tmp_path, good):
    root = with_bad_shards(tmp_path / "data", good)
    run = distill.train(
        distill.parse_args(
            flags(
                tmp_path,
                root,
                "--max-train-steps",
                "4",
                "--checkpointing-steps",
                "10",
                "--train-batch-size",
                "2",
                "--no-disc",
                "--num-workers",
                "2",
            )
        )
    )
    summary = json.loads((run / "summary.json").read_text())
    assert (
        summary["steps"] == 4
    )  # 8 samples: more than a pass (4 + at most 3 of the cut copy), so both bad shards were reached
    assert summary["skipped_by_reason"].get("unreadable shard toy-00000b.tar", 0) >= 1
    assert summary["skipped_by_reason"].get("unreadable shard toy-00000c.tar", 0) >= 1


def test_a_run_on_only_unreadable_shards_stops_with_one_line_naming_them(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.tar").write_bytes(b"")
    (root / "b.tar").write_bytes(b"garbage" * 100)
    cmd = [
        sys.executable,
        "training/distill.py",
        *flags(tmp_path / "out", root, "--max-train-steps", "2", "--no-disc", "--num-workers", "2"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no usable video" in last
    assert "unreadable shard a.tar" in last and "unreadable shard b.tar" in last


def test_a_decoder_error_in_a_worker_process_is_skipped_and_counted(good, monkeypatch):
    from training import data

    real, first = data.decode_video, next(data.tar_groups(good / "toy-00000.tar"))[1][".mp4"]

    def failing(raw):  # a decoder bug on one of the 4 clips, raised in a worker (forked with this patch)
        if raw == first:
            raise RuntimeError("decoder crashed")
        return real(raw)

    monkeypatch.setattr(data, "decode_video", failing)
    reasons = reasons_of(
        Batches(VideoClips(good, 4, 1, 16, "center"), 1, num_workers=2), 4
    )  # 4 good: more than a pass of 3
    assert list(reasons) == ["RuntimeError"] and reasons["RuntimeError"] >= 1


def test_a_worker_killed_by_a_decoder_crash_stops_the_run_with_one_line(tmp_path, good, monkeypatch, capsys):
    import os

    from training import data

    real, third = data.decode_video, list(data.tar_groups(good / "toy-00000.tar"))[2][1][".mp4"]

    def crashing(raw):  # what a segfault in the decoder does to the worker process
        if raw == third:
            os._exit(1)
        return real(raw)

    monkeypatch.setattr(data, "decode_video", crashing)
    argv = flags(tmp_path, good, "--max-train-steps", "6", "--train-batch-size", "1", "--no-disc", "--num-workers", "2")
    assert distill.main(argv) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith(
        f"error: {good}: a data loader worker died (DataLoader worker (pid"
    ), err


def test_a_loader_that_dies_while_a_batch_is_fetched_leaves_a_checkpoint_of_the_steps_done(tmp_path, good, monkeypatch):
    import torch.utils.data

    real = torch.utils.data.DataLoader

    class DiesAfterThree(real):  # as torch reports a dead worker when the main process waits for its batch
        def __iter__(self):
            for item, _ in zip(super().__iter__(), range(3)):
                yield item
            raise RuntimeError(
                "DataLoader worker (pid 123) exited unexpectedly with exit code 1. "
                "Details are lost due to multiprocessing."
            )

    monkeypatch.setattr(torch.utils.data, "DataLoader", DiesAfterThree)
    args = distill.parse_args(
        flags(
            tmp_path,
            good,
            "--max-train-steps",
            "6",
            "--checkpointing-steps",
            "10",
            "--train-batch-size",
            "1",
            "--no-disc",
            "--run-name",
            "died",
        )
    )
    with pytest.raises(DataError, match="a data loader worker died"):
        distill.train(args)
    assert json.loads((tmp_path / "died" / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3


def test_an_unreadable_image_shard_is_skipped_and_counted_by_name(tmp_path):
    root = write_toy_image_shards(tmp_path / "images", num_images=4, size=16)
    (root / "images-00001.tar").write_bytes(b"not a tar" * 50)
    reasons = reasons_of(Batches(ImageCaptions(root, 16), 2), 4)
    assert set(reasons) == {"unreadable shard images-00001.tar"}


# --- class 3: captions -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mp4s():
    return [encode_mp4(toy_clip(i, frames=8, size=16)[0]) for i in range(2)]


def test_shard_captions_that_are_not_utf8_or_not_text_are_skipped_by_reason(tmp_path, mp4s):
    ok = json.dumps({"caption": "a red square"}).encode()
    _shard(
        tmp_path / "s.tar",
        [
            ("a.mp4", mp4s[0]),
            ("a.json", ok),
            ("b.mp4", mp4s[0]),
            ("b.json", b'{"caption": "caf\xe9"}'),
            ("c.mp4", mp4s[0]),
            ("c.txt", b"na\xefve text"),
            ("d.mp4", mp4s[0]),
            ("d.json", b'{"caption": 5}'),
            ("e.mp4", mp4s[0]),
            ("e.json", b'["a list"]'),
            ("f.mp4", mp4s[0]),
            ("f.json", b'{"caption": "  "}'),
            ("g.mp4", mp4s[1]),
            ("g.txt", "\ufeffa blue circle\n".encode()),
        ],
    )
    items = [x for x, _ in zip(iter(VideoClips(tmp_path / "s.tar", 4, 1, 16, "center")), range(7))]
    assert [x.get("reason") for x in items] == [
        None,
        "caption not UTF-8",
        "caption not UTF-8",
        "bad caption",
        "bad caption",
        "no caption",
        None,
    ]
    assert items[-1]["caption"] == "a blue circle"  # a BOM is not part of the caption


def _folder(root: Path, mp4s, names) -> Path:
    root.mkdir()
    for name in names:
        (root / name).write_bytes(mp4s[0])
    return root


def test_folder_captions_that_are_not_utf8_or_not_text_are_skipped_by_reason(tmp_path, mp4s):
    root = _folder(tmp_path / "videos", mp4s, ["a.mp4", "b.mp4", "c.mp4", "d.mp4", "e.mp4", "f.mp4"])
    (root / "captions.jsonl").write_bytes(
        b'{"file": "a.mp4", "caption": "a red square"}\n'
        b'{"file": "b.mp4", "caption": "caf\xe9"}\n'
        b'{"file": "c.mp4", "caption": ["a", "list"]}\n'
        b'{"file": "d.mp4"}\n'
        b'{"file": "e.mp4", "caption": null}\n'
    )
    (root / "d.txt").write_text("from the sidecar")  # no caption in the index: the sidecar is read
    (root / "f.txt").write_bytes(b"\xff\xfe broken")
    items = [x for x, _ in zip(iter(VideoClips(root, 4, 1, 16, "center")), range(6))]
    assert {x["key"]: x.get("reason") or x["caption"] for x in items} == {
        "a.mp4": "a red square",
        "b.mp4": "caption not UTF-8",
        "c.mp4": "bad caption",
        "d.mp4": "from the sidecar",
        "e.mp4": "bad caption",
        "f.mp4": "caption not UTF-8",
    }
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(images / "x.png")
    (images / "x.txt").write_bytes(b"\xc3\x28")
    assert next(iter(ImageCaptions(images, 16)))["reason"] == "caption not UTF-8"


@pytest.mark.parametrize(
    "line,says",
    [
        (b'["a.mp4", "a caption"]', "a JSON list"),
        (b"42", "a JSON int"),
        (b'{"caption": "no file"}', "'file' = None"),
        (b'{"file": "a.mp4", "caption": "cut', "not JSON"),
        (b'{"file": "\xff.mp4", \xff}', "not JSON"),
        (b"[" * 5000, "JSON nested too deeply"),  # found by the fuzz campaign: a RecursionError (a traceback)
    ],
)
def test_a_captions_jsonl_line_that_names_no_file_is_an_error_naming_file_and_line(tmp_path, mp4s, line, says):
    root = _folder(tmp_path / "videos", mp4s, ["a.mp4"])
    (root / "captions.jsonl").write_bytes(b'{"file": "a.mp4", "caption": "fine"}\n\n' + line + b"\n")
    with pytest.raises(DataError, match=rf"captions\.jsonl:3: .*{says}.*expected one JSON object"):
        VideoClips(root, 4, 1, 16, "center")


def test_the_trainer_reports_a_broken_captions_index_in_one_line(tmp_path, mp4s, capsys):
    root = _folder(tmp_path / "videos", mp4s, ["a.mp4"])
    (root / "captions.jsonl").write_bytes(b'["a.mp4", "a caption"]\n')
    assert distill.main(flags(tmp_path / "out", root, "--max-train-steps", "1", "--no-disc")) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # (diffusers may warn before)
    assert last.startswith("error: ") and f"{root / 'captions.jsonl'}:1: a JSON list" in last and "Traceback" not in err


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header (with a valid CRC) declares ``width`` x ``height`` pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_an_image_declaring_more_pixels_than_pil_decodes_is_skipped_and_listed(tmp_path):
    """Found by the fuzz campaign: PIL's DecompressionBombError escaped ``decode_image``, so the evaluator's image and
    frame-folder readers ended with a traceback (the trainer's loader skipped it under the exception's name)."""
    from PIL import Image

    from training.eval_inputs import read_images, read_videos

    root = tmp_path / "images"
    (root / "clip").mkdir(parents=True)
    (root / "bomb.png").write_bytes(png_declaring(1, 2**31 - 1))
    Image.new("RGB", (16, 16)).save(root / "ok.png")
    for name in ("bomb", "ok"):
        (root / f"{name}.txt").write_text(f"a {name}")
    images, skipped = read_images(root, log=lambda line: None)
    assert len(images) == 1 and list(skipped) == ["bomb.png"] and skipped["bomb.png"].startswith("image too large: ")
    reasons = reasons_of(Batches(ImageCaptions(root, 16), 1), 2)
    assert reasons == {"image too large": reasons["image too large"]} and reasons["image too large"] >= 1
    shutil.copy(root / "bomb.png", root / "clip" / "000.png")
    shutil.copy(root / "ok.png", root / "clip" / "001.png")
    with pytest.raises(DataError, match="no usable videos.*image too large"):
        read_videos(root, log=lambda line: None)


# --- class 10: the evaluator -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
    root = tmp_path_factory.mktemp("detectors")
    save_detectors(root)
    torch.save({"weight": torch.zeros(2)}, root / "state_dict.pt")  # a checkpoint, not TorchScript
    (root / "random.pt").write_bytes(bytes(range(256)) * 8)
    return root


@pytest.fixture()
def videos(tmp_path):
    real, fake = tmp_path / "real", tmp_path / "fake"
    for folder, seed in ((real, 10), (fake, 20)):
        folder.mkdir()
        for i in range(3):
            (folder / f"{i}.mp4").write_bytes(encode_mp4(toy_clip(seed + i, 4, 32)[0]))
    return real, fake


def _cli(capsys, *argv) -> tuple[int, str]:
    code = ev.main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "flag,name,expected",
    [
        (
            "--i3d",
            "inception.pt",
            "without \\['rescale', 'resize'\\]: not the detector expected here \\(i3d_torchscript.pt",
        ),
        ("--i3d", "random.pt", "not a TorchScript module .*expected i3d_torchscript.pt"),
        ("--inception", "state_dict.pt", "not a TorchScript module .*expected inception-2015-12-05.pt"),
        ("--inception", "i3d.pt", "the detector failed on a uint8 \\[.*\\] batch .*expected inception-2015-12-05.pt"),
    ],
)
def test_a_detector_of_the_wrong_kind_is_one_line_naming_the_file_and_what_was_expected(
    tmp_path, detectors, videos, capsys, flag, name, expected
):
    import re

    real, fake = videos
    reference = ["--real-videos", real] if flag == "--i3d" else ["--real-images", tmp_path / "images"]
    if flag == "--inception":
        (tmp_path / "images").mkdir()
        from PIL import Image

        Image.new("RGB", (16, 16)).save(tmp_path / "images" / "0.png")
    code, err = _cli(
        capsys,
        "--videos",
        f"x:1={fake}",
        flag,
        detectors / name,
        *reference,
        "--fvd-frames",
        4,
        "--out",
        tmp_path / "eval",
    )
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {detectors / name}: ") and re.search(expected, err), err


def test_bad_videos_among_many_are_skipped_and_listed_in_results_json(tmp_path, detectors, videos, capsys):
    real, fake = videos
    (fake / "3.mp4").write_bytes(b"\x00" * 300)  # undecodable
    (fake / "4.mp4").write_bytes(b"")
    (fake / "5.mp4").write_bytes(encode_mp4(toy_clip(5, 2, 32)[0]))  # 2 frames, 4 needed
    (real / "9.mp4").write_bytes(b"garbage")
    out = tmp_path / "eval"
    code, err = _cli(
        capsys,
        "--videos",
        f"x:1={fake}",
        "--i3d",
        detectors / "i3d.pt",
        "--real-videos",
        real,
        "--fvd-frames",
        4,
        "--out",
        out,
    )
    assert code == 0, err
    report = json.loads((out / "results.json").read_text())
    row = report["rows"][0]
    assert row["videos"] == 3 and row["fvd"] >= 0
    assert {k: v.split(":")[0] for k, v in row["skipped"].items()} == {
        "3.mp4": "undecodable",
        "4.mp4": "empty file",
        "5.mp4": "too few frames",
    }
    assert list(report["reference_skipped"]["real_videos"]) == ["9.mp4"]
    assert f"warning: {fake}: skipped 3 of 6 videos" in err and f"warning: {real}: skipped 1 of 4 videos" in err


def test_a_video_whose_metadata_is_not_utf8_is_read(tmp_path):
    """Found by the fuzz campaign: PyAV's UnicodeDecodeError for a tag that is not UTF-8 (one byte of an mp4's
    encoder tag) escaped ``decode_video``; the evaluator stopped with ``error: 'utf-8' codec can't decode ...``, a line
    naming no file, and the trainer skipped the clip. The frames are fine: the video is read."""
    from training.eval_inputs import read_videos

    data = encode_mp4(toy_clip(0, 4, 16)[0])
    at = data.index(b"Lavf") + 4  # the encoder tag, e.g. Lavf62.12.102
    root = tmp_path / "videos"
    root.mkdir()
    (root / "a.mp4").write_bytes(data[:at] + b"\xae" + data[at + 1 :])
    (root / "a.txt").write_text("a caption")
    videos, _, skipped = read_videos(root, log=lambda line: None)
    assert len(videos) == 1 and videos[0].shape == (4, 16, 16, 3) and skipped == {}
    item = next(iter(VideoClips(root, 4, 1, 16, "center")))
    assert item["video"].shape == (3, 4, 16, 16)


def test_evaluator_input_errors_are_one_line_and_exit_2(tmp_path, detectors, videos, capsys):
    real, fake = videos
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.mp4").write_bytes(b"")
    (tmp_path / "prompts.txt").write_bytes(b"caf\xe9 au lait\n")
    (fake / "captions.jsonl").write_text('{"file": "0.mp4", "caption": "ok"}\n42\n')
    (tmp_path / "file").write_text("x")
    cases = [
        (["--videos", f"x:1={bad}"], f"{bad}: no usable videos"),
        (["--videos", f"x:1={fake}"], f"{fake / 'captions.jsonl'}:2: a JSON int"),
        (
            ["--teacher", "tiny-animatediff", "--prompts", tmp_path / "prompts.txt"],
            f"{tmp_path / 'prompts.txt'}: not UTF-8 text",
        ),
        (["--videos", "nonsense"], "--videos 'nonsense': expected METHOD:STEPS=FOLDER"),
        (["--videos", f"x:1={real}", "--out", tmp_path / "file"], str(tmp_path / "file")),
    ]
    for argv, says in cases:
        code, err = _cli(capsys, *argv, "--device", "cpu")
        last = err.strip().splitlines()[-1]  # (a warning about skipped videos may come before)
        assert code == 2 and "Traceback" not in err and last.startswith("error: ") and says in last, (argv, err)


def test_the_evaluator_command_prints_no_traceback(tmp_path, detectors, videos):
    real, fake = videos
    proc = subprocess.run(
        [
            sys.executable,
            "training/evaluate.py",
            "--videos",
            f"x:1={fake}",
            "--i3d",
            str(detectors / "inception.pt"),
            "--real-videos",
            str(real),
            "--out",
            str(tmp_path / "eval"),
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {detectors / 'inception.pt'}: ") and "i3d_torchscript.pt" in proc.stderr


def test_a_process_forked_after_decoding_video_decodes_too():
    """DataLoader workers are forked from a trainer that has already decoded video (in-process loading, the toy's
    shards). With PyAV's default swscale slice threads, such a child waited forever in its first frame conversion
    (PyAV 18.1.1: the parent's thread pool state is copied, its threads are not); the decoder converts on the calling
    thread, so the child finishes."""
    import multiprocessing

    import numpy as np

    from training.samples import decode_video, encode_mp4

    data = encode_mp4(np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8))
    decode_video(data)  # the parent converts frames first
    child = multiprocessing.get_context("fork").Process(target=decode_video, args=(data,))
    child.start()
    child.join(120)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung and child.exitcode == 0
