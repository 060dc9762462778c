"""``livesight serve``: the token from a file (not the process list), ``--ray``'s refusals before
anything starts, and where ``--ray`` serves the page."""

from __future__ import annotations

import argparse

import pytest

from app.cli.main import main
from app.cli.serve import read_token


def ns(token=None, token_file=None) -> argparse.Namespace:
    return argparse.Namespace(token=token, token_file=token_file)


def test_token_comes_from_the_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("s3cret-token\nignored second line\n")
    assert read_token(ns(token_file=str(path))) == "s3cret-token"
    assert read_token(ns(token="from-env-or-flag")) == "from-env-or-flag"
    assert read_token(ns()) is None


def test_bad_token_files_say_what_is_wrong(tmp_path, monkeypatch):
    monkeypatch.delenv("LIVESIGHT_TOKEN", raising=False)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        read_token(ns(token_file=str(empty)))
    with pytest.raises(ValueError, match="cannot read --token-file"):
        read_token(ns(token_file=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="not both"):
        read_token(ns(token="x", token_file=str(empty)))


def test_serve_refuses_a_missing_token_file_before_loading(tmp_path, capsys):
    rc = main(["serve", "--no-ui", "--token-file", str(tmp_path / "missing"), "--model", "tiny-smolvlm"])
    assert rc == 2
    assert "cannot read --token-file" in capsys.readouterr().err


def test_ray_refuses_bad_settings_before_starting(tmp_path, capsys):
    rc = main(["serve", "--ray", "--replicas", "0", "--memory-root", str(tmp_path), "--model", "tiny-smolvlm"])
    assert rc == 2
    assert "replicas must be" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["serve", "--ray", "--memory-root", str(blocker / "sub"), "--model", "tiny-smolvlm",
               "--ws-port", "0"])
    assert rc == 2
    assert "cannot create memory root" in capsys.readouterr().err
    rc = main(["serve", "--ray", "--host", "0.0.0.0", "--memory-root", str(tmp_path), "--model", "tiny-smolvlm",
               "--ws-port", "0"])
    assert rc == 2
    assert "token" in capsys.readouterr().err


def test_the_page_under_ray_shares_the_proxy_port_and_asks_for_the_token_beyond_loopback():
    from app.serving.cluster.page import page_auth, page_url

    assert page_url("127.0.0.1", 8765) == "http://127.0.0.1:8765/page/"
    assert page_url("::1", 8765) == "http://[::1]:8765/page/"
    assert page_auth("127.0.0.1", "tok") is None  # loopback: as the single-process page
    assert page_auth("0.0.0.0", "tok") == ("livesight", "tok")
    assert page_auth("0.0.0.0", None) is None  # (the CLI refuses a non-loopback host without a token)
