"""The trainer's configuration (training/config.py) as a user meets it: every spelling of a flag gives the
same run, defaults < toy preset < YAML < command line, bad values are refused naming the flag (exit 2, no
traceback), config.yaml in the run folder repeats the run, and a resume may not change what it trained with."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_runs import tiny_run_flags
from training import config as tc
from training import distill
from training.models import tiny_teacher
from training.toy.world import write_toy_shards

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ["--teacher", "x/y", "--data", "shards"]


def refused(capsys, *argv) -> str:
    """The error a user sees for ``argv`` through the CLI's entry point (asserting exit 2, no traceback)."""
    with pytest.raises(SystemExit) as exc:
        distill.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    return err


def yaml_file(tmp_path, text: str, name: str = "run.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- spellings and precedence ---------------------------------------------------------------------------------


@pytest.mark.parametrize("base", [[], OFFICIAL], ids=["toy", "official"])
def test_every_spelling_of_a_flag_gives_the_same_config(tmp_path, base):
    spellings = [
        ["--lora-rank", "4", "--no-disc-augment", "--learning-rate", "1e-4", "--seed", "3"],
        ["--lora-rank=4", "--no-disc-augment", "--learning-rate=1e-4", "--seed=3"],
        ["--config", yaml_file(tmp_path, "lora-rank: 4\ndisc_augment: false\nlearning-rate: 1e-4\nseed: '3'\n")],
        [
            "--config",
            yaml_file(tmp_path, "lora_rank: '4'\ndisc-augment: no\nlearning_rate: 0.0001\n", "b.yaml"),
            "--seed",
            "3",
        ],
    ]
    configs = [dataclasses.replace(distill.parse_args(base + s), config=None) for s in spellings]
    assert all(c == configs[0] for c in configs), [
        (c.lora_rank, c.disc_augment, c.learning_rate, c.seed) for c in configs
    ]
    assert (configs[0].lora_rank, configs[0].disc_augment, configs[0].learning_rate, configs[0].seed) == (
        4,
        False,
        1e-4,
        3,
    )


def test_abbreviated_flags_are_refused(capsys):
    err = refused(capsys, "--lora-r", "4")
    assert "unrecognized arguments: --lora-r" in err


def test_defaults_then_toy_preset_then_yaml_then_command_line(tmp_path):
    official = distill.parse_args(OFFICIAL)
    toy = distill.parse_args([])
    assert (official.lora_rank, official.max_train_steps, official.disc_augment, official.frame_interval) == (
        64,
        30000,
        True,
        8,
    )
    assert (toy.lora_rank, toy.max_train_steps, toy.disc_augment, toy.frame_interval) == (8, 200, False, 1)
    both = yaml_file(tmp_path, "lora-rank: 5\nmax_train_steps: 7\ndisc-augment: true\n")
    from_yaml = distill.parse_args(["--config", both])  # the found bug: the toy preset used to beat the file (200)
    assert (from_yaml.lora_rank, from_yaml.max_train_steps, from_yaml.disc_augment, from_yaml.data) == (
        5,
        7,
        True,
        "toy",
    )
    cli = distill.parse_args(["--config", both, "--lora-rank=4", "--max-train-steps", "9", "--no-disc-augment"])
    assert (cli.lora_rank, cli.max_train_steps, cli.disc_augment) == (4, 9, False)
    assert distill.parse_args(["--lora-rank=4"]).lora_rank == 4  # the found bug: the = form gave 8 in toy mode


def test_the_toy_preset_applies_only_without_teacher_and_data_in_cli_and_yaml(tmp_path):
    real = yaml_file(tmp_path, "teacher: x/y\ndata: shards\n")
    cfg = distill.parse_args(["--config", real])
    assert (cfg.lora_rank, cfg.resolution, cfg.toy_eval, cfg.disc_images) == (64, 512, False, None)
    toy_data_only = distill.parse_args(["--teacher", "tiny-animatediff", "--data", "toy"])
    assert (toy_data_only.lora_rank, toy_data_only.frame_interval, toy_data_only.toy_eval) == (64, 1, True)


# --- the YAML file ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("colour: red\n", "unknown key 'colour'"),
        ("lora-rank: abc\n", "key 'lora-rank': expected an integer, got 'abc'"),
        ("lora_rank: 7.5\n", "key 'lora_rank': expected an integer, got 7.5"),
        ("learning-rate: fast\n", "key 'learning-rate': expected a number"),
        ("mixed-precision: no\n", "quote the value"),
        ("disc: 1\n", "key 'disc': expected true or false"),
        ("loss-type: l1\n", "key 'loss-type': 'l1' is not one of huber, l2"),
        ("seed: 0\nseed_: 1\n", "unknown key 'seed_'"),
        ("seed: 0\nlora-rank: 4\nlora_rank: 4\n", "given twice"),
        ("config: other.yaml\n", "cannot name another"),
        ("- lora-rank\n", "expected a mapping"),
        ("lora-rank: [4\n", "not a readable YAML file"),
        # found by the fuzz campaign (tests/fuzz/test_fuzz_training.py): each was a traceback, or taken silently
        ("seed: 2020-13-45\n", "not a readable YAML file (month must be in 1..12)"),
        ("lora-rank: " + "1" * 5000 + "\n", "not a readable YAML file (Exceeds the limit (4300 digits)"),
        ("learning-rate: 1" + "0" * 400 + "\n", "key 'learning-rate': expected a number, got 1000"),
        ("seed: " + "[" * 5000 + "\n", "not a readable YAML file (nested too deeply)"),
        ("lora-rank: 4\nlora-rank: 8\n", "the key 'lora-rank' is given twice"),
    ],
)
def test_bad_yaml_is_refused_naming_the_file_and_the_key(tmp_path, capsys, text, expected):
    path = yaml_file(tmp_path, text)
    err = refused(capsys, "--config", path)
    assert f"--config {path}" in err and expected in err


def test_a_prompts_file_name_with_a_nul_byte_is_named(tmp_path, capsys):
    path = yaml_file(tmp_path, 'validation-prompts: "a\\0b"\nvalidation-steps: 5\n')
    assert "error: --validation-prompts a\x00b: cannot read it (embedded null byte)" in refused(
        capsys, "--config", path
    )


@pytest.mark.parametrize("token, shown", [("", "''"), ("x\ny", "'x\\ny'"), ("two words", "'two words'")])
def test_an_unrecognized_argument_is_shown_visibly_on_one_line(capsys, token, shown):
    err = refused(capsys, "--seed", "1", token)
    assert err.strip().splitlines()[-1].endswith(f"error: unrecognized arguments: {shown}"), err


def test_a_missing_config_file_is_named(tmp_path, capsys):
    assert f"--config {tmp_path / 'none.yaml'}: no such file" in refused(capsys, "--config", tmp_path / "none.yaml")


# --- ranges and contradictions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, expected", [
    (["--checkpointing-steps", "0"], "--checkpointing-steps 0: must be at least 1"),
    (["--resolution", "0"], "--resolution 0: must be at least 1"),
    (["--resolution=-32"], "--resolution -32: must be at least 1"),
    (["--learning-rate", "0"], "--learning-rate 0.0: must be > 0"),
    (["--learning-rate", "nan"], "--learning-rate nan: must be a finite number"),
    (["--gradient-accumulation-steps", "0"], "--gradient-accumulation-steps 0"),
    (["--train-batch-size", "0"], "--train-batch-size 0"),
    (["--lambda-real", "1.5"], "--lambda-real 1.5: must lie in [0, 1]"),
    (["--ema-decay", "1"], "--ema-decay 1.0: must lie in [0, 1)"),
    (["--w-min", "7", "--w-max", "5"], "--w-min 7 is above --w-max 5"),
    (["--disc-frames", "9"], "--disc-frames 9: at most --num-frames (8)"),
    (["--lora-rank", "0"], "--lora-rank 0"),
    (["--num-workers", "-1"], "--num-workers -1"),
    (["--disc-update-every", "0"], "--disc-update-every 0"),
    (["--max-train-steps", "0"], "--max-train-steps 0"),
    (["--huber-c", "0"], "--huber-c 0.0"),
    (["--eval-seeds", "0"], "--eval-seeds 0"),
    (["--num-frames", "1"], "--num-frames 1: must be at least 2"),
    (["--seed", "-1"], "--seed -1"),
    (["--checkpoints-total-limit", "0"], "--checkpoints-total-limit 0"),
    (["--disc-layers", "2,x"], "--disc-layers '2,x'"),
    (["--eval-teacher-steps", "4;50"], "--eval-teacher-steps '4;50'"),
    (["--frame-interval", "8"], "--frame-interval 8: 8 frames at this stride span 57 frames; the toy clips have 16"),
    (["--disc-real", "images", "--teacher", "x/y", "--data", "shards"], "--disc-real images needs --disc-images"),
    (["--lora-rank", "four"], "argument --lora-rank: invalid int value: 'four'"),
    (["--teacher", "tiny-animatediff"], "--teacher and --data go together"),
    (["--disc-layers", "\u00b2"], "--disc-layers '\u00b2': expected comma-separated integers"),  # '²'.isdigit()
    (["--eval-teacher-steps=--5"], "--eval-teacher-steps '--5': expected comma-separated integers"),
    (["--output-dir", "a" * 300], f"--output-dir {'a' * 300}: File name too long"),
])  # fmt: skip
def test_a_value_out_of_range_is_refused_naming_the_flag(capsys, argv, expected):
    err = refused(capsys, *argv)
    assert f"error: {expected}" in err, err


def test_output_dir_on_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "afile").write_text("keep me")
    for target in (tmp_path / "afile", tmp_path / "afile" / "runs"):
        assert f"error: --output-dir {target}: {tmp_path / 'afile'} is a file" in refused(
            capsys, "--output-dir", target
        )
    assert (tmp_path / "afile").read_text() == "keep me"


def test_the_real_cli_refuses_a_zero_checkpoint_interval_without_a_traceback():
    proc = subprocess.run(
        [sys.executable, "training/distill.py", "--checkpointing-steps", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "error: --checkpointing-steps 0: must be at least 1" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- help, config.yaml, resume ---------------------------------------------------------------------------------


def test_help_lists_every_yaml_key_with_its_default(tmp_path):
    parser = tc.build_parser()
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(actions) == {f.name for f in dataclasses.fields(tc.TrainConfig)}
    for name, action in actions.items():
        assert action.option_strings[0] == "--" + name.replace("_", "-") and "default" in action.help, name
    assert "(default: 64) [toy preset: 8]" in actions["lora_rank"].help
    written = tc.write_config(distill.parse_args([]), tmp_path)
    keys = {line.split(":")[0] for line in written.read_text().splitlines() if line and not line.startswith("#")}
    assert keys == {o[2:] for a in actions.values() for o in a.option_strings[:1]} - {"config", "resume", "plan"}


def test_lr_scheduler_names_are_diffusers_names():
    from diffusers.optimization import SchedulerType

    assert set(tc.LR_SCHEDULERS) == {s.value for s in SchedulerType}


@pytest.mark.parametrize(
    "argv",
    [
        [],
        [
            "--teacher",
            "tiny-modelscope",
            "--data",
            "shards",
            "--lora-rank=4",
            "--no-disc",
            "--mixed-precision",
            "no",
            "--learning-rate",
            "3e-5",
            "--adapter-name",
            "yes",
        ],
    ],
)
def test_config_yaml_repeats_the_run(tmp_path, argv):
    cfg = distill.parse_args(argv)
    again = distill.parse_args(["--config", str(tc.write_config(cfg, tmp_path))])
    assert dataclasses.replace(again, config=None) == cfg


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = write_toy_shards(root / "data", num_clips=4, per_shard=4, frames=8, size=16)
    flags = tiny_run_flags(
        root / "runs",
        data,
        "--max-train-steps",
        "1",
        "--checkpointing-steps",
        "1",
        "--no-disc",
        run_name="r",
        learning_rate=None,
    )
    run = distill.train(distill.parse_args(flags), teacher=tiny_teacher("animatediff"))
    return run, flags


def test_the_run_folder_gets_its_config_and_a_resume_may_not_change_what_it_trained_with(toy_run, capsys):
    run, flags = toy_run
    assert distill.parse_args(["--config", str(run / "config.yaml")]) == distill.parse_args(
        [*flags, "--config", str(run / "config.yaml")]
    )
    before = sorted(p.name for p in run.iterdir())
    for change, saved in (["--seed", "1"], "0"), (["--lora-rank", "8"], "4"):
        code = distill.main([*flags, "--resume", str(run), *change])
        err = capsys.readouterr().err
        assert (
            code == 2 and f"{change[0]} {change[1]} (the checkpoint's run: {saved})" in err and "Traceback" not in err
        ), err
    assert sorted(p.name for p in run.iterdir()) == before  # nothing moved, nothing written
    state = {"args": vars(distill.parse_args(flags))}  # an older run: no config.yaml, the flags in trainer_state.json
    (run / "config.yaml").rename(run / "config.yaml.bak")
    try:
        with pytest.raises(ValueError, match=r"--seed 1 \(the checkpoint's run: 0\).*trainer_state.json"):
            tc.check_resume(distill.parse_args([*flags, "--seed", "1"]), run / "checkpoint-1", state)
    finally:
        (run / "config.yaml.bak").rename(run / "config.yaml")
    allowed = [
        "--max-train-steps",
        "5",
        "--checkpointing-steps",
        "2",
        "--num-workers",
        "1",
        "--output-dir",
        "elsewhere",
    ]
    tc.check_resume(distill.parse_args([*flags, *allowed]), run / "checkpoint-1", state)
