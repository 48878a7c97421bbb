"""OCI images written by hand for the tests (no registry is reachable, and neither umoci nor
skopeo is installed): layer tars, blobs, manifest, index and config, as an OCI layout
directory, an oci-archive or a docker save tarball. ``app_image`` makes the test application
from the busybox image's tree."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

START_SH = """\
#!/bin/sh
# The test application: says who and where it runs, counts its starts in /data, then ticks
# until SIGTERM. Anything but "serve" is run instead (docker-entrypoint.sh style).
if [ "$1" != serve ]; then exec "$@"; fi
echo "app $GREETING pid=$$ init=$(cat /proc/1/comm) uid=$(id -u) gid=$(id -g) groups=$(id -G) cwd=$(pwd)"
echo "$GREETING" >> /data/starts.log
echo "starts=$(wc -l < /data/starts.log) layer=$(cat /app/state 2>/dev/null || echo fresh)"
echo "written by $GREETING" > /app/state
trap 'echo "bye $GREETING"; exit 0' TERM
while true; do echo "tick $GREETING"; sleep 1; done
"""
PASSWD = ("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
          "nobody:x:65534:65534:nobody:/:/bin/false\n")
GROUP = "root:x:0:\ntty:x:5:\napp:x:1000:\nextra:x:2000:app\nnogroup:x:65534:\n"


@dataclass
class Entry:
    """One member of a layer tar."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    pax: dict[str, str] = field(default_factory=dict)


def file(name: str, data: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(name, data=data.encode() if isinstance(data, str) else data, mode=mode, uid=uid, gid=gid)


def directory(name: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(name, tarfile.DIRTYPE, mode=mode, uid=uid, gid=gid)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.SYMTYPE, mode=0o777, linkname=target)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.LNKTYPE, linkname=target)


def whiteout(path: str) -> Entry:
    parent, _, base = path.rpartition("/")
    return file(f"{parent}/.wh.{base}" if parent else f".wh.{base}", b"")


def opaque(directory_path: str) -> Entry:
    return file(f"{directory_path}/.wh..wh..opq", b"")


def layer_tar(entries: list[Entry]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type, info.mode, info.uid, info.gid = entry.type, entry.mode, entry.uid, entry.gid
            info.linkname, info.mtime, info.pax_headers = entry.linkname, 1_700_000_000, entry.pax
            if entry.type == tarfile.CHRTYPE:
                info.devmajor, info.devminor = 1, 3
            info.size = len(entry.data) if entry.type == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(entry.data) if info.size else None)
    return out.getvalue()


def tree_layer(root: Path) -> bytes:
    """A layer holding the tree at ``root`` (owners, modes and symbolic links as they are)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(root, arcname=".")
    return out.getvalue()


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def image_config(layers: list[bytes], **run: object) -> dict:
    """An image config whose rootfs lists ``layers`` (uncompressed tars)."""
    return {
        "created": "2026-11-30T00:00:00Z", "architecture": "amd64", "os": "linux",
        "config": run, "rootfs": {"type": "layers", "diff_ids": [sha256(layer) for layer in layers]},
    }


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


class Layout:
    """An OCI image layout being written: blobs, then a manifest, then index.json."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        (dest / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.manifests: list[dict] = []

    def blob(self, data: bytes, media_type: str) -> dict:
        digest = sha256(data)
        (self.dest / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def add_image(self, layers: list[bytes], config: dict, *, ref: str | None = "v1",
                  name: str | None = None, compression: str = "gzip",
                  layer_media: str | None = None) -> dict:
        descriptors = []
        for layer in layers:
            data = _gzip(layer) if compression == "gzip" else layer
            media = layer_media or (OCI_LAYER + "+gzip" if compression == "gzip" else OCI_LAYER)
            descriptors.append(self.blob(data, media))
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": self.blob(json.dumps(config).encode(), OCI_CONFIG),
                    "layers": descriptors}
        entry = self.blob(json.dumps(manifest).encode(), OCI_MANIFEST)
        annotations = {}
        if ref:
            annotations["org.opencontainers.image.ref.name"] = ref
        if name:
            annotations["io.containerd.image.name"] = name
        if annotations:
            entry["annotations"] = annotations
        self.manifests.append(entry)
        self.write_index()
        return manifest

    def write_index(self) -> None:
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": self.manifests}
        (self.dest / "index.json").write_text(json.dumps(index))

    def blob_path(self, descriptor: dict) -> Path:
        return self.dest / "blobs" / "sha256" / descriptor["digest"].split(":")[1]


def oci_layout(dest: Path, layers: list[bytes], *, name: str | None = "app:v1",
               compression: str = "gzip", **run: object) -> Layout:
    layout = Layout(dest)
    layout.add_image(layers, image_config(layers, **run), name=name, compression=compression)
    return layout


def tar_directory(source: Path, dest: Path, *, gzip_it: bool = False) -> Path:
    """``source``'s files as a tarball (an oci-archive when ``source`` is a layout)."""
    with tarfile.open(dest, "w:gz" if gzip_it else "w") as tar:
        for path in sorted(source.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(source)), recursive=False)
    return dest


def docker_archive(dest: Path, layers: list[bytes], *, tags: list[str], **run: object) -> Path:
    """A classic ``docker save`` tarball: manifest.json, <id>.json, <n>/layer.tar."""
    config = json.dumps(image_config(layers, **run)).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    members = {config_name: config}
    names = []
    for n, layer in enumerate(layers):
        names.append(f"{n:064x}/layer.tar")
        members[names[-1]] = layer
    members["manifest.json"] = json.dumps(
        [{"Config": config_name, "RepoTags": tags, "Layers": names}]).encode()
    with tarfile.open(dest, "w") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


def app_layers(busybox_rootfs: Path, version: int) -> list[bytes]:
    """The test application: busybox, a layer with files to hide, the app layer (which hides
    them with a whiteout and an opaque directory)."""
    junk = layer_tar([directory("opt"), directory("opt/junk"), file("opt/junk/a", "a"),
                      file("opt/junk/b", "b"), file("etc/motd", "lower motd\n")])
    app = layer_tar([
        file("etc/passwd", PASSWD), file("etc/group", GROUP),
        directory("home/app", 0o755, 1000, 1000),
        directory("app", 0o755, 1000, 1000),
        file("app/start.sh", START_SH, 0o755),
        file("app/VERSION", f"{version}\n"),
        opaque("opt/junk"), file("opt/junk/c", "c"), whiteout("etc/motd"),
    ])
    return [tree_layer(busybox_rootfs), junk, app]


def app_run_config(version: int) -> dict:
    return {"Entrypoint": ["/app/start.sh"], "Cmd": ["serve"],
            "Env": ["PATH=/bin:/sbin:/usr/bin:/usr/sbin", f"GREETING=hello from v{version}"],
            "WorkingDir": "/app", "User": "app", "ExposedPorts": {"8080/tcp": {}},
            "Volumes": {"/var/lib/app": {}}, "StopSignal": "SIGTERM"}


def app_image(dest: Path, busybox_rootfs: Path, version: int = 1) -> Layout:
    """The test application as an OCI layout named ``app:v<version>``."""
    return oci_layout(dest, app_layers(busybox_rootfs, version), name=f"app:v{version}",
                      **app_run_config(version))
