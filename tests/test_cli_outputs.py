"""test_cli_outputs.py - what `mha forward` guarantees about its output files (the library's
mha_outputs underneath), and the number of heads a weights file records.

Run as `MHA_BIN=build/mha python -m pytest -q tests/test_cli_outputs.py` (CTest: tests/cli.cmake).
Needs numpy only. The disk-full and busy-destination cases run mha inside a private mount
namespace (`unshare -rm`: a small tmpfs, a bind mount), the sticky-directory case as the user
nobody; each skips, saying why, only where the machine cannot provide that.
"""
import os
import shutil
import pathlib
import stat
import subprocess
import sys
import tempfile

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mha_py  # noqa: E402
from test_cli import OLD, np_state_dict  # noqa: E402

E, H, B, L = 8, 2, 2, 5


def mha_bin():
    b = os.environ.get("MHA_BIN")
    if not b or not os.access(b, os.X_OK):
        pytest.fail(f"MHA_BIN must name the built mha binary (got {b!r})")
    return b


def run(*args, cwd=None, **kw):
    p = subprocess.run([mha_bin(), *map(str, args)], capture_output=True, text=True,
                       timeout=60, cwd=cwd, **kw)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture
def fx(tmp_path):
    r = np.random.default_rng(3)
    mha_py.save_safetensors(tmp_path / "w.safetensors", np_state_dict(E))
    mha_py.save_safetensors(tmp_path / "w2.safetensors", np_state_dict(E),
                            metadata={"num_heads": "2"})
    np.save(tmp_path / "q.npy", r.standard_normal((B, L, E)).astype(np.float32))
    (tmp_path / "y.npy").write_bytes(OLD)
    return tmp_path


def fwd(d, *extra):
    return ["forward", "--weights", d / "w.safetensors", "--heads", H, "--query", d / "q.npy",
            *extra]


def leftovers(d):
    return [p.name for p in d.iterdir() if p.name.startswith(".mha-")]


def test_one_file_under_two_names_is_refused(fx):
    """Fault 4: ./y.npy, sub/../y.npy, a symbolic link or a hard link name y.npy too."""
    (fx / "sub").mkdir()
    os.symlink("y.npy", fx / "sym.npy")
    os.link(fx / "y.npy", fx / "hard.npy")
    for other in ("./y.npy", "sub/../y.npy", "sym.npy", "hard.npy", str(fx / "y.npy")):
        rc, out, err = run(*fwd(fx, "--out", "y.npy", "--attn-out", other), cwd=fx)
        lines = err.splitlines()
        assert rc == 1 and len(lines) == 2, (other, rc, err)
        assert "--out and --attn-out name the same file" in lines[0], err
        assert lines[1].startswith("hint: "), err
    # and two outputs that do not exist yet
    rc, _, err = run(*fwd(fx, "--out", "new.npy", "--attn-out", "sub/../new.npy"), cwd=fx)
    assert rc == 1 and "name the same file" in err, err
    assert (fx / "y.npy").read_bytes() == OLD and not (fx / "new.npy").exists()
    assert not leftovers(fx)


def test_special_files_are_never_replaced(fx):
    """Fault 3: a device node (what /dev/null is) or a FIFO as an output is refused before
    anything is computed, and stays what it was."""
    nodes = [fx / "fifo"]
    os.mkfifo(nodes[0])
    if os.geteuid() == 0:
        os.mknod(fx / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        nodes.append(fx / "null")
    for node in nodes:
        kind = os.stat(node).st_mode
        rc, _, err = run(*fwd(fx, "--out", node))
        assert rc == 2 and len(err.splitlines()) == 1, err
        assert "--out" in err and "expected a regular file or a new name" in err, err
        assert stat.S_IFMT(os.stat(node).st_mode) == stat.S_IFMT(kind)
    assert not leftovers(fx)


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_umask_applies_and_replaced_files_keep_their_mode(fx):
    """Fault 10: under umask 077 a new output is 0600 (it was 0644); replacing keeps the mode."""
    rc, _, err = run(*fwd(fx, "--out", fx / "private.npy"), preexec_fn=lambda: os.umask(0o077))
    assert rc == 0, err
    assert _mode(fx / "private.npy") == 0o600
    rc, _, err = run(*fwd(fx, "--out", fx / "open.npy"), preexec_fn=lambda: os.umask(0o022))
    assert rc == 0 and _mode(fx / "open.npy") == 0o644, err
    os.chmod(fx / "y.npy", 0o640)
    rc, _, err = run(*fwd(fx, "--out", fx / "y.npy"), preexec_fn=lambda: os.umask(0o077))
    assert rc == 0 and _mode(fx / "y.npy") == 0o640, err


def test_longest_file_names_work(fx):
    """Fault 10: a 254-byte name failed (its temporary's suffix made it too long)."""
    for n in (254, 255):
        name = "y" * (n - 4) + ".npy"
        rc, _, err = run(*fwd(fx, "--out", fx / name))
        assert rc == 0, err
        assert np.load(fx / name).shape == (B, L, E)
        rc, _, err = run(*fwd(fx, "--out", fx / name))  # replacing it
        assert rc == 0, err
    assert not leftovers(fx)


def _unshare_or_skip():
    if not shutil.which("unshare"):
        pytest.skip("no unshare(1) for a private mount namespace")
    p = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"unshare -rm is not allowed here: {p.stderr.decode().strip()}")


def test_disk_full_says_so(tmp_path):
    """Fault 8: a full disk was reported as 'write failed: No such file or directory'."""
    _unshare_or_skip()
    r = np.random.default_rng(4)
    mha_py.save_safetensors(tmp_path / "w.safetensors", np_state_dict(E))
    np.save(tmp_path / "q.npy", r.standard_normal((2, 200, E)).astype(np.float32))
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f'mount -t tmpfs -o size=64k tmpfs "{disk}" && printf "{OLD.decode().strip()}" '
              f'> "{disk}/y.npy" && "{mha_bin()}" forward --weights "{tmp_path}/w.safetensors" '
              f'--heads 2 --query "{tmp_path}/q.npy" --out "{disk}/y.npy" --attn-out '
              f'"{disk}/a.npy" --per-head; echo "rc=$?"; cat "{disk}/y.npy"; echo; ls -A "{disk}"')
    p = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                       timeout=60)
    assert "rc=2" in p.stdout, (p.stdout, p.stderr)
    assert "write: No space left on device" in p.stderr and "--attn-out" in p.stderr, p.stderr
    rest = p.stdout.split("rc=2\n", 1)[1].split("\n")
    assert rest[0] == OLD.decode().strip(), p.stdout  # the earlier output is untouched
    assert rest[1:] == ["y.npy", ""], p.stdout  # and nothing else is left on the disk


@pytest.fixture
def world_dir():
    """A directory every user can search (pytest's tmp_path is under a 0700 one)."""
    d = tempfile.mkdtemp(prefix="mha-outputs-", dir="/tmp")
    os.chmod(d, 0o755)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_sticky_directory_fails_before_any_rename(world_dir):
    """Fault 2: --out could be replaced, --attn-out not (EPERM: a sticky directory and a file of
    another user, run as nobody): the run fails before the first rename, --out is untouched.
    (A rename failing for another reason puts the earlier outputs back: tests/test_outputs.c.)"""
    if os.geteuid() != 0:
        pytest.skip("needs root to run mha as another user")
    if open("/proc/sys/fs/protected_hardlinks").read().strip() not in ("0", "1"):
        pytest.skip("unknown protected_hardlinks setting")
    base = world_dir
    parents = [p for p in base.parents if not os.stat(p).st_mode & stat.S_IXOTH]
    if parents:
        pytest.skip(f"{parents[0]} is not searchable by other users")
    mha_py.save_safetensors(base / "w.safetensors", np_state_dict(E))
    np.save(base / "q.npy", np.random.default_rng(5).standard_normal((B, L, E)).astype(np.float32))
    sticky = base / "out"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    for name, owner in (("y.npy", 65534), ("a.npy", 0)):
        (sticky / name).write_bytes(OLD)
        os.chown(sticky / name, owner, owner)
        os.chmod(sticky / name, 0o666)

    def as_nobody():
        os.setgid(65534)
        os.setuid(65534)

    rc, _, err = run("forward", "--weights", base / "w.safetensors", "--heads", H, "--query",
                     base / "q.npy", "--out", sticky / "y.npy", "--attn-out", sticky / "a.npy",
                     preexec_fn=as_nobody)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "--attn-out" in err, err
    assert "cannot replace it: Operation not permitted (a sticky" in err, err
    assert (sticky / "y.npy").read_bytes() == OLD and (sticky / "a.npy").read_bytes() == OLD
    assert os.stat(sticky / "y.npy").st_uid == 65534
    assert not leftovers(sticky)


def test_heads_from_the_weights_file(fx):
    """The number of heads recorded in __metadata__ is used when --heads is left out and a
    --heads that disagrees is refused (it ran 31% off before)."""
    q = fx / "q.npy"
    rc, _, err = run("forward", "--weights", fx / "w2.safetensors", "--query", q,
                     "--out", fx / "a.npy")
    assert rc == 0, err
    rc, _, err = run("forward", "--weights", fx / "w2.safetensors", "--heads", 2, "--query", q,
                     "--out", fx / "b.npy")
    assert rc == 0, err
    assert (fx / "a.npy").read_bytes() == (fx / "b.npy").read_bytes()
    rc, _, err = run("forward", "--weights", fx / "w2.safetensors", "--heads", 4, "--query", q,
                     "--out", fx / "y.npy")
    lines = err.splitlines()
    assert rc == 1 and lines[0] == (f"mha: error: --heads: got 4, expected 2 (the number of heads "
                                    f"the layer in {fx / 'w2.safetensors'} was saved with)"), err
    # Without the record (a PyTorch export) --heads is required.
    rc, _, err = run("forward", "--weights", fx / "w.safetensors", "--query", q, "--out",
                     fx / "y.npy")
    assert rc == 1 and "--heads is required" in err.splitlines()[0], err
    # A malformed record is the file's fault: a runtime error naming --weights.
    mha_py.save_safetensors(fx / "w3.safetensors", np_state_dict(E), metadata={"num_heads": "3"})
    rc, _, err = run("forward", "--weights", fx / "w3.safetensors", "--query", q, "--out",
                     fx / "y.npy")
    assert rc == 2 and err.startswith("mha: error: --weights: ") and "num_heads" in err, err
    assert (fx / "y.npy").read_bytes() == OLD


def test_usage_errors_name_no_internal_function(fx):
    """--heads 0 and --heads 7 on E = 8 are usage errors (exit 1) in the user's words."""
    for heads, want in (("0", "--heads: got 0, expected a positive number of heads"),
                        ("7", "--heads: got 7, expected a divisor of the embedding size 8")):
        rc, _, err = run(*fwd(fx, "--out", fx / "y.npy", "--heads", heads))
        assert rc == 1 and err.splitlines()[0] == f"mha: error: {want}", err
        assert "mha_" not in err, err


def test_saved_layer_metadata_reads_in_the_reference_library(tmp_path):
    """The layer `mha demo` saves (mha_module_save's format) opens in the safetensors package
    with {"num_heads": "2"} as its metadata, and a file that package writes with it needs no
    --heads either."""
    import safetensors.numpy as st  # in the test venv (tests/requirements.txt)
    from safetensors import safe_open
    rc, _, err = run("demo", "--steps", 1, "--out-dir", tmp_path)
    assert rc == 0, err
    with safe_open(str(tmp_path / "layer.safetensors"), "np") as f:
        assert f.metadata() == {"num_heads": "2"}
        sd = {k: f.get_tensor(k) for k in f.keys()}
    assert set(sd) == {"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"}
    st.save_file(sd, str(tmp_path / "again.safetensors"), metadata={"num_heads": "2"})
    for w in ("layer.safetensors", "again.safetensors"):
        rc, _, err = run("forward", "--weights", tmp_path / w, "--query",
                         tmp_path / "example.npy", "--out", tmp_path / f"{w}.npy")
        assert rc == 0, err
    assert (tmp_path / "layer.safetensors.npy").read_bytes() == \
        (tmp_path / "again.safetensors.npy").read_bytes()


def test_read_only_destination_fails_first(fx):
    """A destination on a read-only file system is refused when the output is declared, before
    anything is loaded or computed (the message names the option and says why)."""
    _unshare_or_skip()
    ro = fx / "ro"
    ro.mkdir()
    script = (f'mount -t tmpfs -o ro tmpfs "{ro}" && "{mha_bin()}" forward --weights '
              f'"{fx}/w.safetensors" --heads 2 --query "{fx}/missing.npy" --out "{fx}/y.npy" '
              f'--attn-out "{ro}/a.npy"; echo "rc=$?"')
    p = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                       timeout=60)
    assert "rc=2" in p.stdout, (p.stdout, p.stderr)
    # --query names a missing file: the output check came first.
    assert p.stderr.startswith("mha: error: --attn-out: ") and "Read-only file system" in \
        p.stderr, p.stderr
    assert (fx / "y.npy").read_bytes() == OLD
