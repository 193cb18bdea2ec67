"""Write a wheelhouse: the wheels the scripts need besides torch, for a machine without internet.

    python benchmark/make_wheelhouse.py WH --python-version 3.12                  # for a GPU node's Python 3.12
    python benchmark/make_wheelhouse.py WH --python-version 3.12 --have have.txt  # less what the node has
    python benchmark/make_wheelhouse.py WH --python-version 3.11 tyro==1.0.17     # other requirements

Run it on a machine that reaches the package index, copy WH to the one that does not, and there
`python benchmark/gpu_check.py OUT --wheelhouse WH` installs what that Python lacks with
`pip --no-index` (or by hand: `pip install --no-index --find-links WH -r WH/requirements.txt`).

`pip download --only-binary=:all:` resolves the requirements and all their dependencies for CPython
--python-version on Linux --arch, accepting manylinux wheels for a C library (glibc) up to --glibc,
and for no other platform. The GPU machine's own PyTorch is used, so torch is never asked for. The
default requirements are the repository's pins of gymnasium[mujoco], gymnasium-robotics, mujoco and
tyro (requirements.txt), plus tensorboard, matplotlib and pytest at any version. To keep the folder
small, --have FILE (the target's `python -m pip list --format=freeze`) and --omit NAME,... delete the
wheels of packages the target already has; it must then have versions that fit.
Writes WH/requirements.txt (what the wheels are for) and prints every wheel with its size.
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINNED = ("gymnasium", "gymnasium-robotics", "mujoco", "tyro")  # taken with their pins from requirements.txt
ANY_VERSION = ("tensorboard", "matplotlib", "pytest")  # a GPU image often has them; any version works


class WheelhouseError(Exception):
    pass


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise WheelhouseError(message)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def default_requirements() -> list[str]:
    """The repository's pins of PINNED (requirements.txt), then ANY_VERSION by name."""
    found = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        name = normalize(re.split(r"[\[=<>!~; ]", line, maxsplit=1)[0]) if line else ""
        if name in PINNED:
            found[name] = line
    missing = [name for name in PINNED if name not in found]
    if missing:
        raise WheelhouseError(f"requirements.txt pins no {', '.join(missing)}")
    return [found[name] for name in PINNED] + list(ANY_VERSION)


def platform_tags(arch: str, glibc: str) -> list[str]:
    """manylinux tags a machine with this glibc accepts (pip matches tags exactly, so name them all)."""
    major, minor = (int(x) for x in glibc.split("."))
    if major != 2:
        raise WheelhouseError(f"--glibc {glibc}: expected 2.N")
    first = 5 if arch == "x86_64" else 17
    tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, first - 1, -1)]
    legacy = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}  # the older names of 2_17, 2_12, 2_5
    tags += [f"{name}_{arch}" for name, m in legacy.items() if first <= m <= minor]
    return tags


def wheel_name(path: Path) -> str:
    return normalize(path.name.split("-")[0])


def parse_args(argv):
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dest", help="the wheelhouse folder to write (new or empty)")
    p.add_argument("requirements", nargs="*", help="requirements (default: see above)")
    p.add_argument(
        "--python-version",
        default=f"{sys.version_info.major}.{sys.version_info.minor}",
        help="the target's Python, e.g. 3.12 (default: this one's)",
    )
    p.add_argument("--arch", default="x86_64", choices=["x86_64", "aarch64"], help="the target's processor")
    p.add_argument("--glibc", default="2.28", help="the newest glibc the target has (default 2.28: RHEL 8 and later)")
    p.add_argument("--omit", default="", help="comma-separated packages the target already has: their wheels are left out")
    p.add_argument("--have", help="the target's `pip list --format=freeze`: the wheels of those packages are left out")
    args = p.parse_args(argv)
    if not re.fullmatch(r"3\.\d{1,2}", args.python_version):
        raise WheelhouseError(f"--python-version {args.python_version}: expected 3.N, e.g. 3.12")
    if not re.fullmatch(r"\d+\.\d+", args.glibc):
        raise WheelhouseError(f"--glibc {args.glibc}: expected 2.N, e.g. 2.28")
    args.omit = {normalize(x) for x in args.omit.split(",") if x.strip()}
    if args.have:
        if not Path(args.have).is_file():
            raise WheelhouseError(f"--have {args.have}: no such file")
        for line in Path(args.have).read_text().splitlines():
            name = re.split(r"[=@ ;\[]", line.strip(), maxsplit=1)[0]
            if name and not line.startswith(("#", "-")) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
                args.omit.add(normalize(name))
    if "torch" in {normalize(re.split(r"[\[=<>!~; ]", r, maxsplit=1)[0]) for r in args.requirements}:
        raise WheelhouseError("torch is not put in a wheelhouse: the check uses the PyTorch the GPU machine has")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    dest = Path(args.dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise WheelhouseError(f"{dest} exists and is not an empty folder (two versions of a package would stop the install)")
    requirements = args.requirements or default_requirements()
    tags = platform_tags(args.arch, args.glibc)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        args.python_version,
        "--dest",
        str(dest),
        *[f"--platform={tag}" for tag in tags],
        *requirements,
    ]
    print("$ " + subprocess.list2cmdline(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        last = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "no message")
        print(f"error: pip download failed: {last.strip()}", file=sys.stderr)
        return 1
    wheels = sorted(dest.glob("*.whl"))
    names = {}
    for wheel in wheels:
        names.setdefault(wheel_name(wheel), []).append(wheel.name)
    twice = {n: w for n, w in names.items() if len(w) > 1}
    if twice:
        print(f"error: two versions of one package: {twice}", file=sys.stderr)
        return 1
    omitted = [w for w in wheels if wheel_name(w) in args.omit]
    for wheel in omitted:
        wheel.unlink()
    unused = sorted(args.omit - {wheel_name(w) for w in omitted})
    kept = [w for w in wheels if w not in omitted]
    (dest / "requirements.txt").write_text(
        f"# for CPython {args.python_version}, Linux {args.arch}, glibc <= {args.glibc}; "
        f"written by benchmark/make_wheelhouse.py\n" + "\n".join(requirements) + "\n"
    )
    total = sum(w.stat().st_size for w in kept)
    for wheel in kept:
        print(f"{wheel.stat().st_size / 2**20:8.2f} MiB  {wheel.name}")
    if omitted:
        print(f"left out (--omit): {', '.join(w.name for w in omitted)}")
    if unused:
        print(f"{len(unused)} packages of --omit/--have were not needed")
    print(f"{len(kept)} wheels, {total / 2**20:.1f} MiB in {dest}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except WheelhouseError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
