"""io_numpy.py - cross-checks mha's .npy and safetensors I/O against numpy and tests/mha_py.py.

Usage: build/venv/bin/python io_numpy.py path/to/libmha.so   (the test venv; CTest: io.cmake)

Drives the shared library through ctypes: files numpy writes (np.save, format versions 1.0, 2.0,
3.0) must load in mha with the same bytes; files mha writes must load in numpy (np.load) and
in mha_py.load_safetensors; what mha does not support must fail with MHA_ERR_UNSUPPORTED.
Fails (exit 1) when numpy is missing: `make test` installs it in the test venv.
"""
import ctypes
import os
import sys
import tempfile

try:
    import numpy as np
except ImportError as e:
    print(f"io_numpy: FAIL: {e} (run through `make test`, which sets up the test venv)")
    sys.exit(1)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mha_py  # noqa: E402  (needs numpy)

MAX_DIMS = 5
OK, ERR_FORMAT, ERR_UNSUPPORTED = 0, -5, -7
DTYPES = {0: np.dtype("<f4"), 1: np.dtype("bool"), 2: np.dtype("<i4"), 3: np.dtype("<f8")}
CODE = {v: k for k, v in DTYPES.items()}


class Array(ctypes.Structure):
    _fields_ = [("dtype", ctypes.c_int), ("ndim", ctypes.c_int),
                ("shape", ctypes.c_int64 * MAX_DIMS), ("data", ctypes.c_void_p)]


lib = ctypes.CDLL(sys.argv[1])
lib.mha_last_errmsg.restype = ctypes.c_char_p
lib.mha_st_name.restype = ctypes.c_char_p
lib.mha_st_find.restype = ctypes.POINTER(Array)
lib.mha_st_count.argtypes = [ctypes.c_void_p]
lib.mha_st_name.argtypes = [ctypes.c_void_p, ctypes.c_int]
lib.mha_st_find.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lib.mha_st_free.argtypes = [ctypes.c_void_p]
lib.mha_st_set.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p,
                           ctypes.POINTER(Array)]
lib.mha_st_save.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p]
lib.mha_st_load.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
lib.mha_st_create.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
lib.mha_npy_load.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(Array)]
lib.mha_npy_save.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(Array)]
lib.mha_array_alloc.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(Array)]
lib.mha_array_free.argtypes = [ctypes.POINTER(Array)]

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("  FAIL:", what)


def errmsg():
    return lib.mha_last_errmsg().decode(errors="replace")


def to_numpy(a):
    """A copy of an mha_array as a numpy array."""
    shape = tuple(a.shape[i] for i in range(a.ndim))
    dt = DTYPES[a.dtype]
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    raw = ctypes.string_at(a.data, n) if n else b""
    return np.frombuffer(raw, dtype=dt).reshape(shape).copy()


def from_numpy(x):
    """A new mha_array (free with mha_array_free) holding x's values."""
    x = np.require(x, requirements="C")  # ascontiguousarray would make a 0-d array 1-d
    a = Array()
    shape = (ctypes.c_int64 * MAX_DIMS)(*x.shape)
    st = lib.mha_array_alloc(None, CODE[x.dtype], x.ndim, shape, ctypes.byref(a))
    assert st == OK, errmsg()
    if x.nbytes:
        ctypes.memmove(a.data, x.tobytes(), x.nbytes)
    return a


def same(x, y):
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def sample(dt, shape, seed):
    rng = np.random.default_rng(seed)
    if dt == np.dtype("bool"):
        return rng.random(shape) < 0.5
    if dt.kind == "i":
        return rng.integers(-2**31, 2**31, size=shape, dtype=np.int64).astype(dt)
    x = rng.standard_normal(shape).astype(dt)
    if x.size >= 3:  # special values survive too
        x.flat[0], x.flat[1], x.flat[2] = np.inf, -0.0, np.nan
    return x


SHAPES = [(), (1,), (7,), (2, 3), (2, 0, 3), (3, 1, 4, 2), (1, 2, 3, 2, 2)]


def main():
    tmp = tempfile.mkdtemp(prefix="mha-io-numpy-")
    path = os.path.join(tmp, "x.npy").encode()
    seed = 0
    # numpy -> mha, every dtype, shape and format version.
    for dt in DTYPES.values():
        for shape in SHAPES:
            for version in [(1, 0), (2, 0), (3, 0)]:
                seed += 1
                x = sample(dt, shape, seed)
                with open(path, "wb") as f:
                    np.lib.format.write_array(f, x, version=version)
                a = Array()
                st = lib.mha_npy_load(None, path, ctypes.byref(a))
                check(st == OK, f"numpy->mha {dt} {shape} v{version}: {st} {errmsg()}")
                if st == OK:
                    check(same(to_numpy(a), x), f"numpy->mha {dt} {shape} v{version}: values")
                    lib.mha_array_free(ctypes.byref(a))
    # mha -> numpy.
    for dt in DTYPES.values():
        for shape in SHAPES:
            seed += 1
            x = sample(dt, shape, seed)
            a = from_numpy(x)
            st = lib.mha_npy_save(None, path, ctypes.byref(a))
            lib.mha_array_free(ctypes.byref(a))
            check(st == OK, f"mha->numpy {dt} {shape}: {st} {errmsg()}")
            y = np.load(path.decode(), allow_pickle=False)
            check(same(x, y), f"mha->numpy {dt} {shape}: values")
            with open(path, "rb") as f:  # magic, version, header length (2 or 4 bytes), header
                head = f.read(12)
                major = head[6]
                n = 2 if major == 1 else 4
                offset = 8 + n + int.from_bytes(head[8:8 + n], "little")
                check(offset % 64 == 0, f"mha->numpy {dt} {shape}: data offset {offset}")
    # What numpy can write but mha does not read.
    bad = {"big-endian": np.arange(3, dtype=">f4"), "complex64": np.arange(3, dtype="<c8"),
           "datetime64": np.zeros(3, dtype="M8[D]"),
           "fortran order": np.asfortranarray(np.ones((2, 3), dtype="<f4")),
           "structured": np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")])}
    for what, x in bad.items():
        np.save(path.decode(), x)
        a = Array()
        st = lib.mha_npy_load(None, path, ctypes.byref(a))
        check(st == ERR_UNSUPPORTED, f"numpy {what}: got {st}, expected UNSUPPORTED")
        check("x.npy" in errmsg(), f"numpy {what}: message names the file: {errmsg()}")
    # safetensors: mha_py -> mha.
    spath = os.path.join(tmp, "x.safetensors")
    tensors = {}
    for dt in DTYPES.values():
        for i, shape in enumerate(SHAPES):
            seed += 1
            tensors[f"layer.{i}.{dt.name}"] = sample(dt, shape, seed)
    # mha_py.save_safetensors stores a 0-d array as shape [1] (np.ascontiguousarray), so the
    # scalars go through mha -> mha_py only.
    from_py = {k: v for k, v in tensors.items() if v.ndim > 0}
    mha_py.save_safetensors(spath, from_py, metadata={"format": "pt", "note": "caf\u00e9"})
    st_ptr = ctypes.c_void_p()
    st = lib.mha_st_load(None, spath.encode(), ctypes.byref(st_ptr))
    check(st == OK, f"mha_py->mha: {st} {errmsg()}")
    if st == OK:
        check(lib.mha_st_count(st_ptr) == len(from_py), "mha_py->mha: count")
        for name, x in from_py.items():
            p = lib.mha_st_find(st_ptr, name.encode())
            check(bool(p) and same(to_numpy(p.contents), x), f"mha_py->mha: {name}")
        lib.mha_st_free(st_ptr)
    # mha -> mha_py.
    st_ptr = ctypes.c_void_p()
    assert lib.mha_st_create(None, ctypes.byref(st_ptr)) == OK
    for name, x in tensors.items():
        a = from_numpy(x)
        check(lib.mha_st_set(None, st_ptr, name.encode(), ctypes.byref(a)) == OK, name)
        lib.mha_array_free(ctypes.byref(a))
    unicode_name = "w\u00e9ight \"q\"\\"
    a = from_numpy(np.arange(4, dtype="<f4"))
    lib.mha_st_set(None, st_ptr, unicode_name.encode(), ctypes.byref(a))
    lib.mha_array_free(ctypes.byref(a))
    st = lib.mha_st_save(None, st_ptr, spath.encode())
    lib.mha_st_free(st_ptr)
    check(st == OK, f"mha->mha_py: {st} {errmsg()}")
    back = mha_py.load_safetensors(spath)
    check(set(back) == set(tensors) | {unicode_name}, "mha->mha_py: names")
    for name, x in tensors.items():
        check(name in back and same(back[name], x), f"mha->mha_py: {name}")
    check(np.array_equal(back.get(unicode_name), np.arange(4, dtype="<f4")), "unicode name")
    with open(spath, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
    check(n % 8 == 0, f"header size {n} is a multiple of 8")
    # float16 and int64 are storage dtypes too (every dtype: tests/test_checkpoints.py).
    mha_py.save_safetensors(spath, {"w16": np.ones(3, dtype="<f2")})
    st_ptr = ctypes.c_void_p()
    st = lib.mha_st_load(None, spath.encode(), ctypes.byref(st_ptr))
    check(st == OK and lib.mha_st_find(st_ptr, b"w16").contents.dtype == 4,
          f"F16: {st} {errmsg()}")
    if st == OK:
        lib.mha_st_free(st_ptr)
    for f in os.listdir(tmp):
        os.unlink(os.path.join(tmp, f))
    os.rmdir(tmp)
    if failures:
        print(f"io_numpy: {len(failures)} failures")
        return 1
    print(f"io_numpy: ok (numpy {np.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
