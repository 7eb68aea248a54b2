"""python_install.py wheel|checkout SOURCE_DIR BUILD_DIR - the two ways to get `import mha`.

Run with the test venv's Python (tests/python_install.cmake registers both as CTest tests).

wheel     What `pip install .` does, without the network: this Python (the test venv, which has
          scikit-build-core from tests/requirements.txt) builds the wheel of SOURCE_DIR with
          `pip wheel --no-build-isolation --no-deps --no-index`; a fresh venv in
          BUILD_DIR/python_wheel installs it with `pip install --no-index --no-deps`; then, in that
          venv, from a folder outside the source tree, without MHA_LIBRARY or PYTHONPATH:
          `import mha` loads the package's own copy of libmha.so, calls into it, and imports
          neither numpy nor torch (the fresh venv has neither). The wheel holds exactly the
          package's .py files and mha/libmha.so, is tagged py3-none-<platform>, and its metadata
          has the library's version (CMakeLists.txt), numpy and the torch extra.
checkout  From a checkout after `make` (BUILD_DIR is SOURCE_DIR/build):
          `PYTHONPATH=SOURCE_DIR/python python -c "import mha"` loads BUILD_DIR/libmha.so;
          MHA_LIBRARY naming a copy of it elsewhere loads that copy instead; MHA_LIBRARY naming a
          file that does not exist raises ImportError naming the path.
Which library a process loaded is read from its /proc/self/maps, not only from mha.LIBRARY_PATH.
"""
import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile

# Run in a child Python: imports mha, prints what the checks need as JSON.
PROBE = r"""
import json, os, sys
try:
    import mha
except ImportError as e:
    print(json.dumps({"import_error": str(e)}))
    sys.exit(0)
maps = [l.split()[-1] for l in open("/proc/self/maps") if "libmha" in l]
print(json.dumps({
    "file": mha.__file__, "library_path": mha.LIBRARY_PATH, "version": mha.__version__,
    "threads": mha.get_num_threads(), "describe": mha.describe().splitlines()[0],
    "mapped": sorted(set(maps)), "numpy": "numpy" in sys.modules, "torch": "torch" in sys.modules,
}))
"""

FAILURES = []


def check(ok, what):
    print(("ok:   " if ok else "FAIL: ") + what)
    if not ok:
        FAILURES.append(what)
    return ok


def run(argv, **kw):
    """Runs argv; on failure prints its output and stops the test."""
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if r.returncode != 0:
        print(r.stdout)
        sys.exit(f"FAIL: {' '.join(map(str, argv))} exited {r.returncode}")
    return r.stdout


def clean_env(**extra):
    """This environment without what would point Python at the checkout's package or library."""
    env = {k: v for k, v in os.environ.items() if k not in ("MHA_LIBRARY", "PYTHONPATH")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def probe(python, env, cwd):
    out = run([python, "-c", PROBE], env=env, cwd=cwd)
    return json.loads(out.strip().splitlines()[-1])


def same_file(a, b):
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def loaded(p, want):
    """p (a probe's result) has exactly the file want mapped, whatever name it was opened by."""
    return len(p["mapped"]) == 1 and same_file(p["mapped"][0], want)


def cmake_version(src):
    text = open(os.path.join(src, "CMakeLists.txt"), encoding="utf-8").read()
    return re.search(r"project\(mha VERSION ([0-9.]+)", text).group(1)


# ------------------------------------------------------------------------------------------
def wheel(src, build):
    work = os.path.join(build, "python_wheel")
    shutil.rmtree(work, ignore_errors=True)
    dist, venv = os.path.join(work, "dist"), os.path.join(work, "venv")
    os.makedirs(dist)
    env = clean_env()
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", "2")

    print(f"python_wheel: building the wheel of {src} with {sys.executable}")
    run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-input",
         "--no-cache-dir", "--no-build-isolation", "--no-deps", "--no-index", "-w", dist, src],
        env=env)
    wheels = [f for f in os.listdir(dist) if f.endswith(".whl")]
    if not check(len(wheels) == 1, f"one wheel built: {wheels}"):
        return
    whl = os.path.join(dist, wheels[0])

    version = cmake_version(src)
    plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    want = f"mha-{version}-py3-none-{plat}.whl"
    check(wheels[0] == want, f"wheel name {wheels[0]} is {want} (any CPython 3, this platform)")

    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        meta_name = f"mha-{version}.dist-info/METADATA"
        meta = email.parser.Parser().parsestr(z.read(meta_name).decode()) \
            if meta_name in names else None
    pkg = os.path.join(src, "python", "mha")
    py = {"mha/" + os.path.relpath(os.path.join(d, f), pkg).replace(os.sep, "/")
          for d, dirs, files in os.walk(pkg) if "__pycache__" not in d
          for f in files if f.endswith(".py")}
    files = {n for n in names if ".dist-info/" not in n}
    want = py | {"mha/libmha.so"}
    check(files == want,
          f"wheel holds python/mha's {len(py)} .py files and mha/libmha.so, nothing else: "
          f"missing {sorted(want - files)}, extra {sorted(files - want)}")
    if check(meta is not None, f"wheel has {meta_name}"):
        reqs = meta.get_all("Requires-Dist") or []
        check(meta["Name"] == "mha" and meta["Version"] == version,
              f"metadata name {meta['Name']} version {meta['Version']} (CMakeLists.txt: {version})")
        check(meta["Requires-Python"] == ">=3.9", f"Requires-Python {meta['Requires-Python']}")
        check("numpy" in reqs, f"numpy required: {reqs}")
        check(any(r.startswith("torch") and "extra == \"torch\"" in r for r in reqs),
              f"torch as the extra 'torch' only: {reqs}")

    print(f"python_wheel: installing {wheels[0]} into a fresh venv {venv}")
    run([sys.executable, "-m", "venv", venv], env=env)
    vpy = os.path.join(venv, "bin", "python")
    run([vpy, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--no-index",
         "--no-deps", whl], env=env)

    with tempfile.TemporaryDirectory() as cwd:  # outside the source tree: no python/ to find
        p = probe(vpy, clean_env(), cwd)
    print(f"python_wheel: {json.dumps(p)}")
    if not check("import_error" not in p, f"import mha in the fresh venv: {p.get('import_error')}"):
        return
    site = run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['platlib'])"]).strip()
    pkg_dir = os.path.dirname(p["file"])
    check(same_file(pkg_dir, os.path.join(site, "mha")),
          f"mha imported from the venv's site-packages: {p['file']}")
    lib = os.path.join(pkg_dir, "libmha.so")
    check(p["library_path"] == lib, f"mha.LIBRARY_PATH {p['library_path']} is {lib}")
    check(loaded(p, lib), f"the process mapped the package's libmha.so only: {p['mapped']}")
    check(p["threads"] >= 1, f"mha.get_num_threads() {p['threads']} >= 1")
    check(p["version"] == version, f"mha.__version__ {p['version']} is the library's {version}")
    check(not p["numpy"] and not p["torch"], "import mha imported neither numpy nor torch")


# ------------------------------------------------------------------------------------------
def checkout(src, build):
    py = sys.executable
    built = os.path.join(build, "libmha.so")
    pkg_lib = os.path.join(src, "python", "mha", "libmha.so")
    if not check(not os.path.exists(pkg_lib),
                 f"no {pkg_lib} in the checkout (it would come before build/libmha.so)"):
        return
    with tempfile.TemporaryDirectory() as tmp:
        env = clean_env(PYTHONPATH=os.path.join(src, "python"))
        p = probe(py, env, tmp)
        print(f"python_checkout: {json.dumps(p)}")
        if check("import_error" not in p, f"PYTHONPATH=python import mha: {p.get('import_error')}"):
            check(same_file(p["file"], os.path.join(src, "python", "mha", "__init__.py")),
                  f"the checkout's package: {p['file']}")
            check(same_file(p["library_path"], built), f"LIBRARY_PATH {p['library_path']} is "
                  f"{built}")
            check(loaded(p, built), f"the process mapped {built} only: {p['mapped']}")

        # MHA_LIBRARY comes first: a copy elsewhere is the one loaded.
        copy = os.path.join(tmp, "elsewhere", "libmha-copy.so")
        os.makedirs(os.path.dirname(copy))
        shutil.copy(os.path.realpath(built), copy)
        p = probe(py, dict(env, MHA_LIBRARY=copy), tmp)
        print(f"python_checkout: MHA_LIBRARY={copy}: {json.dumps(p)}")
        if check("import_error" not in p, f"MHA_LIBRARY=copy import mha: {p.get('import_error')}"):
            check(p["library_path"] == copy, f"LIBRARY_PATH {p['library_path']} is {copy}")
            check(loaded(p, copy), f"the process mapped the copy only: {p['mapped']}")

        # A path that does not exist: ImportError naming it (no fallback to build/).
        missing = os.path.join(tmp, "nowhere", "libmha.so")
        p = probe(py, dict(env, MHA_LIBRARY=missing), tmp)
        print(f"python_checkout: MHA_LIBRARY={missing}: {json.dumps(p)}")
        check(missing in p.get("import_error", ""), "MHA_LIBRARY missing: ImportError naming "
              f"{missing}: {p.get('import_error')}")


def main():
    mode, src, build = sys.argv[1], os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3])
    {"wheel": wheel, "checkout": checkout}[mode](src, build)
    if FAILURES:
        print(f"python_{mode}: {len(FAILURES)} check(s) failed")
        return 1
    print(f"python_{mode}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
