#!/usr/bin/env python3
"""Builds the container image's root filesystem without a container engine: the Dockerfile's stages are
carried out step by step on a debootstrap'd Debian root (docs/install.md, "Container image").

    scripts/build_rootfs.py [--dockerfile Dockerfile] [--context .] [--tar image.tar]

`FROM debian:<suite>-slim` is `debootstrap --variant=minbase <suite>` with the slim image's dpkg excludes
(built once, cached); RUN runs `/bin/sh -c` chrooted into the stage's root, in its own mount and PID
namespaces with /proc mounted and the host's resolv.conf, as the stage's USER, in its WORKDIR, with its
ENV; COPY (also --from=<stage>) copies from the context or another stage; ENV, USER, WORKDIR, EXPOSE,
STOPSIGNAL, HEALTHCHECK, ENTRYPOINT and CMD are recorded. Like an engine's build cache, the root after
each RUN is kept under a key of everything before it (instructions and the content of what was copied),
so a rebuild after a code change reruns only the steps from the first COPY of changed files on.

Prints the final root (.../rootfs/images/<key>/root) and writes image.json beside it (Env, User, WorkingDir, Entrypoint, Cmd,
Healthcheck, StopSignal, ExposedPorts, as an image config has them); --tar also writes the root as a tar
for `podman import`. Cache: ${PGDOORMAN_CACHE:-/var/cache/pgdoorman}/rootfs (one build at a time: a lock).
Root only (debootstrap, chroot, unshare).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MIRROR = os.environ.get("PGDOORMAN_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What the debian:*-slim images leave out (their /etc/dpkg/dpkg.cfg.d/docker).
SLIM_EXCLUDES = """path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
"""


class BuildError(Exception):
    pass


@dataclass
class Stage:
    name: str
    root: Path
    key: str
    env: dict[str, str] = field(default_factory=lambda: {"PATH": DEFAULT_PATH})
    user: str = ""
    workdir: str = "/"
    config: dict[str, object] = field(default_factory=dict)
    # The root is made only when something must run or be read in it: until then it is `src` (the base or
    # a cached layer) plus the COPYs recorded since.
    src: Path | None = None
    pending: list[tuple[str, str]] = field(default_factory=list)  # (COPY arguments, WORKDIR then)

    def materialize(self, context: Path, stages: dict[str, Stage]) -> None:
        if self.src is not None:
            copy_tree(self.src, self.root)
            self.src = None
        for args, workdir in self.pending:
            do_copy(self.root, workdir, args, context, stages)
        self.pending = []


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    if buf:
        raise BuildError(f"unterminated continuation: {buf[:60]}")
    return out


def sh(*cmd: str, **kw: object) -> None:
    r = subprocess.run(list(cmd), **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} exited {r.returncode}")


def base_root(cache: Path, image: str) -> Path:
    """debootstrap's minbase root for debian:<suite>[-slim], built once."""
    m = re.fullmatch(r"debian:([a-z]+)(-slim)?", image)
    if not m:
        raise BuildError(f"FROM {image}: only debian:<suite>-slim can be made with debootstrap here")
    root = cache / "base" / f"debian-{m.group(1)}-slim"
    if (root / ".complete").exists():
        return root
    if not (root / ".debootstrapped").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        print(f"build_rootfs: debootstrap --variant=minbase {m.group(1)} (once; cached in {root})", flush=True)
        sh("debootstrap", "--variant=minbase", m.group(1), str(root), MIRROR, stdout=subprocess.DEVNULL)
        (root / ".debootstrapped").touch()
    (root / "etc/dpkg/dpkg.cfg.d/docker").write_text(SLIM_EXCLUDES)
    (root / "etc/apt/apt.conf.d/docker-clean").write_text(
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };\n')
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True)
    for sub in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale"):
        for p in (root / sub).glob("*"):
            if not (p / "copyright").exists():
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
    (root / ".complete").touch()
    return root


def copy_tree(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    sh("cp", "-a", "--reflink=auto", f"{src}/.", str(dst) + "/")


def run_in(stage: Stage, command: str) -> None:
    """RUN: /bin/sh -c in the stage's root (private mount and PID namespaces, /proc, resolv.conf)."""
    root = stage.root
    resolv = root / "etc/resolv.conf"
    had_resolv = resolv.read_bytes() if resolv.exists() and not resolv.is_symlink() else None
    shutil.copy("/etc/resolv.conf", resolv) if os.path.exists("/etc/resolv.conf") else None
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    env = [f"{k}={v}" for k, v in stage.env.items()] + ["HOME=/root", "DEBIAN_FRONTEND=noninteractive"]
    user = ["--userspec", stage.user] if stage.user else []
    inner = (f"mount -t proc proc {shlex.quote(str(root / 'proc'))} && exec chroot {' '.join(map(shlex.quote, user))} "
             f"{shlex.quote(str(root))} /usr/bin/env -i {' '.join(map(shlex.quote, env))} /bin/sh -c "
             + shlex.quote(f"mkdir -p {shlex.quote(stage.workdir)} && cd {shlex.quote(stage.workdir)} && {command}"))
    try:
        sh("unshare", "--mount", "--pid", "--fork", "--kill-child", "/bin/sh", "-c", inner)
    finally:
        policy.unlink(missing_ok=True)
        if had_resolv is not None:
            resolv.write_bytes(had_resolv)
        else:
            resolv.unlink(missing_ok=True)


def content_key(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        files = sorted(f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(p.parent)).encode() + b"\0" + f.read_bytes() + b"\0")
            h.update(oct(f.stat().st_mode & 0o777).encode())
    return h.hexdigest()


def copy_sources(args: str, context: Path, stages: dict[str, Stage]) -> tuple[list[Path], str, Stage | None]:
    """COPY's source paths, its destination and the stage it copies from (None: the context)."""
    words = shlex.split(args)
    frm = None
    if words[0].startswith("--from="):
        frm = stages[words[0].split("=", 1)[1]]
        words = words[1:]
    *sources, dest = words
    if not sources:
        raise BuildError(f"COPY {args}: no source")
    paths = [context / s for s in sources] if frm is None else [frm.root / s.lstrip("/") for s in sources]
    return paths, dest, frm


def do_copy(root: Path, workdir: str, args: str, context: Path, stages: dict[str, Stage]) -> None:
    paths, dest, frm = copy_sources(args, context, stages)
    if frm is not None:
        frm.materialize(context, stages)
    target = dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest}"
    troot = root / target.lstrip("/")
    for p in paths:
        if not p.exists():
            raise BuildError(f"COPY {args}: {p} does not exist")
        if p.is_dir():
            dst = troot if len(paths) == 1 and not dest.endswith("/") else troot / p.name
            dst.mkdir(parents=True, exist_ok=True)
            sh("cp", "-a", f"{p}/.", str(dst) + "/")
        else:
            dst = troot / p.name if dest.endswith("/") or len(paths) > 1 else troot
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dst)
        if frm is None:  # files from the context belong to root, as an engine's COPY makes them
            sh("chown", "-R", "0:0", str(dst))


def parse_env(args: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for w in shlex.split(args):
        k, sep, v = w.partition("=")
        if not sep:
            raise BuildError(f"ENV {args}: only the KEY=value form is supported")
        out[k] = v
    return out


def build(dockerfile: Path, context: Path, cache: Path) -> Stage:
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    work = cache / "work"
    for word, args in instructions(dockerfile.read_text()):
        if word == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            if not m:
                raise BuildError(f"FROM {args}")
            name = m.group(2) or f"stage{len(stages)}"
            stage = Stage(name, work / name, hashlib.sha256(f"FROM {m.group(1)}".encode()).hexdigest())
            stage.src = base_root(cache, m.group(1))
            stages[name] = stage
            continue
        if stage is None:
            raise BuildError(f"{word} before FROM")
        step = f"{word} {args}"
        if word == "RUN":
            stage.key = _key(stage.key, step, str(stage.env), stage.user, stage.workdir)
            snap = cache / "layers" / stage.key
            if (snap / ".complete").exists():
                print(f"build_rootfs: [{stage.name}] cached: RUN {args[:70]}", flush=True)
                stage.src, stage.pending = snap, []
            else:
                print(f"build_rootfs: [{stage.name}] RUN {args[:70]}", flush=True)
                stage.materialize(context, stages)
                run_in(stage, args)
                copy_tree(stage.root, snap)
            (snap / ".complete").touch()  # its mtime: when a build last used it
            continue
        if word == "COPY":
            paths, _, frm = copy_sources(args, context, stages)
            stage.key = _key(stage.key, step, frm.key if frm is not None else content_key(paths))
            stage.pending.append((args, stage.workdir))
            continue
        _record(stage, word, args)
        stage.key = _key(stage.key, step)
    if stage is None:
        raise BuildError("no FROM")
    _prune(cache / "layers", lambda p: p / ".complete")
    stage.config.update({"Env": [f"{k}={v}" for k, v in stage.env.items()], "User": stage.user,
                         "WorkingDir": stage.workdir})
    # One root per build key (a test may still be running on an older one).
    image = cache / "images" / stage.key[:24]
    if (image / "image.json").exists():
        print("build_rootfs: the image root is up to date", flush=True)
        (image / "image.json").touch()
        stage.root = image / "root"
        return stage
    stage.materialize(context, stages)
    if stage.workdir != "/":
        (stage.root / stage.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
    shutil.rmtree(image, ignore_errors=True)
    image.mkdir(parents=True)
    stage.root.rename(image / "root")
    stage.root = image / "root"
    (image / "image.json").write_text(json.dumps(stage.config, indent=2) + "\n")
    _prune(cache / "images", lambda p: p / "image.json")
    return stage


def _prune(d: Path, marker: Callable[[Path], Path], days: float = 7) -> None:
    """Removes what no build used for `days` (several Dockerfiles and checkouts share the cache; a test may
    still be running on an older image root, so nothing used recently goes)."""
    cutoff = time.time() - days * 86400
    for old in d.glob("*"):
        m = marker(old)
        used = m.stat().st_mtime if m.exists() else old.stat().st_mtime + 86400 - days * 86400
        if used < cutoff:
            shutil.rmtree(old, ignore_errors=True)


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _record(stage: Stage, word: str, args: str) -> None:
    """The instructions that change no file: the stage's state or the image config."""
    if word == "WORKDIR":
        stage.workdir = args if args.startswith("/") else f"{stage.workdir.rstrip('/')}/{args}"
    elif word == "ENV":
        stage.env.update(parse_env(args))
    elif word == "USER":
        stage.user = args
    elif word == "EXPOSE":
        stage.config["ExposedPorts"] = {f"{p}/tcp" if "/" not in p else p: {} for p in args.split()}
    elif word == "STOPSIGNAL":
        stage.config["StopSignal"] = args
    elif word in ("ENTRYPOINT", "CMD"):
        stage.config["Entrypoint" if word == "ENTRYPOINT" else "Cmd"] = json.loads(args)
    elif word == "HEALTHCHECK":
        m = re.fullmatch(r"((?:--\S+\s+)*)CMD\s+(\[.*\])", args)
        if not m:
            raise BuildError(f"HEALTHCHECK {args}: only the exec form is supported")
        opts = dict(o.lstrip("-").split("=", 1) for o in m.group(1).split())
        stage.config["Healthcheck"] = {"Test": ["CMD", *json.loads(m.group(2))], **opts}
    else:
        raise BuildError(f"{word}: not supported by scripts/build_rootfs.py")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parents[1]
    p.add_argument("--dockerfile", default=str(here / "Dockerfile"))
    p.add_argument("--context", default=str(here))
    p.add_argument("--tar", default=None, help="also write the final root as this tar file")
    p.add_argument("--print-base", action="store_true",
                   help="only make (or find) the debootstrap'd root of the first FROM and print its path "
                        "(for `podman import` as that base image)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("build_rootfs: needs root (debootstrap, chroot, unshare)", file=sys.stderr)
        return 2
    cache = Path(os.environ.get("PGDOORMAN_CACHE", "/var/cache/pgdoorman")) / "rootfs"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if args.print_base:
                first = next(a for w, a in instructions(Path(args.dockerfile).read_text()) if w == "FROM")
                print(base_root(cache, first.split()[0]))
                return 0
            final = build(Path(args.dockerfile), Path(args.context), cache)
        except (BuildError, OSError) as e:
            print(f"build_rootfs: {e}", file=sys.stderr)
            return 1
        if args.tar:
            sh("tar", "-C", str(final.root), "--numeric-owner", "-cf", args.tar, ".")
        print(f"build_rootfs: image root {final.root}, config {final.root.parent / 'image.json'}", flush=True)
        print(final.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
