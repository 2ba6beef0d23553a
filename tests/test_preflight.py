"""Checks before loading: flag combinations and --report_to wandb without a key."""

import sys
from types import SimpleNamespace

import pytest

from llava.train.preflight import check_wandb


@pytest.fixture()
def no_wandb_key(monkeypatch, tmp_path):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return tmp_path / "netrc"


def _args(report_to):
    return SimpleNamespace(report_to=report_to)


def test_wandb_without_key_or_terminal_stops_with_the_ways_out(no_wandb_key):
    with pytest.raises(
        ValueError, match=r"no W&B key for api.wandb.ai.*WANDB_MODE=offline.*--report_to none"
    ):
        check_wandb(_args(["wandb"]), interactive=False)
    check_wandb(_args(["wandb"]), interactive=True)  # wandb can ask at the terminal
    check_wandb(_args(["none"]), interactive=False)
    check_wandb(_args([]), interactive=False)


def test_wandb_key_from_env_netrc_or_offline_mode(no_wandb_key, monkeypatch):
    no_wandb_key.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    no_wandb_key.chmod(0o600)
    check_wandb(_args(["wandb"]), interactive=False)
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a key for another host
    with pytest.raises(ValueError, match="wandb.example.org"):
        check_wandb(_args(["wandb"]), interactive=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_wandb(_args(["wandb"]), interactive=False)
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "k")
    check_wandb(_args(["wandb"]), interactive=False)


def test_wandb_not_installed(no_wandb_key, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ValueError, match="wandb is not installed"):
        check_wandb(_args(["wandb"]), interactive=True)


def test_train_stops_before_loading_anything(no_wandb_key, tmp_path, monkeypatch):
    from llava.train.train import train

    monkeypatch.setattr(sys, "stdin", None)  # no terminal
    out = tmp_path / "out"
    argv = (
        f"--model_name_or_path /nonexistent --data_path x.json --output_dir {out} --report_to wandb".split()
    )
    with pytest.raises(ValueError, match="--report_to wandb: no W&B key"):
        train(argv=argv)
    assert not out.exists()
