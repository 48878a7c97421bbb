"""Importing OCI images into the shared image store, as application images for containers.

Accepted: an OCI image layout (a directory with ``oci-layout``, ``index.json`` and
``blobs/``), the same as a tarball (``oci-archive``, also what ``docker save`` writes since
Docker 25) and the classic ``docker save`` tarball (``manifest.json``, ``<id>.json``,
``<id>/layer.tar``). Tarballs may be gzip-compressed. Nothing is ever extracted from the
archive itself: its members are read by name.

The order of work is what makes a refusal leave nothing behind:

1. Index, manifest and config are read (JSON objects of at most 4 MiB, known media types,
   linux/amd64) and the config's entrypoint, command, env, working dir, user, exposed ports,
   volumes and stop signal checked.
2. Every blob is read once to check its size and sha256 (or sha512) digest against the
   manifest, **before anything is unpacked** (``docker save``'s legacy manifest lists no
   digests or sizes: its config is named by its digest, and each layer.tar is checked against
   the config's ``rootfs.diff_ids``).
3. The layers are unpacked, in order, into a temporary directory inside the image store
   (``<image_dir>/oci/.importing-*``, mode 0700), checked again on the way (compressed digest,
   uncompressed ``diff_id``), with OCI whiteouts honoured (``.wh.<name>`` hides a lower
   layer's file, ``.wh..wh..opq`` a directory's lower contents). Every member is checked by
   this module, not by tarfile's extraction (which is never used): no absolute names, no
   ``..``, nothing written through a symbolic link, no relative symlink climbing out of the
   image, hard links only to files already in the image, owners within the 65536 ids a
   container has. Device nodes are **skipped** and reported (a container gets its devices from
   Berth's /dev). Extended attributes (file capabilities) are not kept, and reported.
4. The user is resolved against the unpacked /etc/passwd and /etc/group; the tree's checksum
   and ``image.json`` are written; the directory is renamed to ``<image_dir>/oci/<id>``, where
   ``<id>`` is the config's sha256 (the image id, as Docker names it). The same image
   imported again (under any name) is found there and not unpacked twice.

Any refusal raises ``OciImportError`` with a sentence for people, after removing the
temporary directory. ``<image_dir>/oci`` is 0700: the trees keep the image's owners and
set-uid bits (container ids are shifted by the idmapped mount), which no host user may reach.

Compression: gzip and uncompressed layers. zstd is refused: Python 3.11 has no zstd decoder,
and Berth adds no dependency for it (recompress with gzip: ``skopeo copy
--dest-compress-format gzip``).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import signal
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

from workers.images.base import (
    META,
    AppConfig,
    BuiltImage,
    ImageConfig,
    Progress,
    load_image,
    tree_checksum,
)

OCI_DIR = "oci"  # <image_dir>/oci/<config sha256>/{rootfs,image.json}
DEFAULT_MAX_BYTES = 16 << 30  # unpacked size refused beyond this (a decompression bomb)
MAX_ENTRIES = 2_000_000
MAX_LAYERS = 127  # overlayfs stacks at most 128 layers; Docker's own limit is the same
MAX_JSON = 4 << 20
MAX_VOLUMES = 16
IDS = 65536  # a container maps 65536 uids and gids
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHUNK = 1 << 20

INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"}
MANIFEST_TYPES = {"application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json"}
CONFIG_TYPES = {"application/vnd.oci.image.config.v1+json",
                "application/vnd.docker.container.image.v1+json"}
GZIP, PLAIN, ZSTD = "gzip", "tar", "zstd"
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": PLAIN,
    "application/vnd.oci.image.layer.v1.tar+gzip": GZIP,
    "application/vnd.oci.image.layer.v1.tar+zstd": ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar": PLAIN,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": ZSTD,
    "application/vnd.docker.image.rootfs.diff.tar": PLAIN,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": GZIP,
    "application/vnd.docker.image.rootfs.diff.tar.zstd": ZSTD,
}
DIGEST_RE = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
# A Docker reference's repository and tag (lower-case path components; the tag's alphabet)
REPOSITORY_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
ENV_NAME_RE = re.compile(r"^[^=\0]+$")
PORT_RE = re.compile(r"^([0-9]{1,5})(?:/(tcp|udp|sctp))?$")
VOLUME_RE = re.compile(r"^/[A-Za-z0-9._@+-]+(?:/[A-Za-z0-9._@+-]+)*$")
# Berth mounts these itself in every container: a volume there would hide or fight them.
RESERVED_PATHS = ("/proc", "/sys", "/dev", "/run")
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


class OciImportError(Exception):
    """The archive was refused; the message says why, for the admin who gave it."""


@dataclass(frozen=True)
class ImportedImage:
    """What ``import_oci`` made (or found already imported)."""

    name: str  # "repository:tag", the catalogue name
    image_id: str  # "sha256:<hex>" of the config: the same image always gets the same id
    manifest_digest: str  # "" for a legacy docker save archive (it has no manifest blob)
    built: BuiltImage
    summary: dict  # entrypoint, cmd, env, working_dir, user, exposed_ports, volumes, ...
    notes: tuple[str, ...] = ()  # what was skipped (device nodes, extended attributes)
    reused: bool = False  # already in the store: nothing was unpacked


@dataclass(frozen=True)
class _Blob:
    what: str  # "layer 2", "the config", for messages
    path: str  # member name in the archive / file below the layout directory
    digest: str  # "" when the format gives none (legacy docker layers: see diff_id)
    size: int | None
    compression: str = PLAIN
    diff_id: str = ""  # digest of the uncompressed layer tar (the config's rootfs.diff_ids)


@dataclass
class _Plan:
    name: str
    image_id: str
    manifest_digest: str
    config: dict
    config_blob: _Blob
    manifest_blob: _Blob | None
    layers: list[_Blob] = field(default_factory=list)


def import_oci(source: Path | BinaryIO, image_dir: Path, *, name: str | None = None,
               progress: Progress = lambda _m: None, max_bytes: int = DEFAULT_MAX_BYTES,
               check: Callable[[str, str], None] | None = None) -> ImportedImage:
    """Import the image in ``source`` (a layout directory, a tarball path or an open tarball)
    into ``image_dir/oci/``. ``name`` ("repository[:tag]", tag "latest" by default) is taken
    from the archive when not given. ``check(name, image_id)``, called once the archive is
    verified and before anything is unpacked, may refuse the import by raising.
    Raises OciImportError; nothing is left behind then."""
    with _open_source(source) as archive:
        plan = _read_plan(archive, name)
        summary = _summarise(plan.config)
        progress(f"{plan.name}: {len(plan.layers)} layer(s), checking every blob's digest")
        for blob in [b for b in (plan.manifest_blob, plan.config_blob) if b] + plan.layers:
            _verify(archive, blob)
        if check is not None:
            check(plan.name, plan.image_id)
        store = image_dir / OCI_DIR
        final = store / plan.image_id.split(":", 1)[1]
        if (existing := _existing(final)) is not None:
            progress(f"{plan.name}: already in the image store as {plan.image_id}")
            return ImportedImage(plan.name, plan.image_id, plan.manifest_digest, existing,
                                 _stored_summary(final) or summary, reused=True)
        store.mkdir(parents=True, exist_ok=True)
        os.chmod(store, 0o700)
        tmp = Path(tempfile.mkdtemp(prefix=".importing-", dir=store))
        try:
            rootfs = tmp / "rootfs"
            rootfs.mkdir(mode=0o755)
            unpacker = _Unpacker(rootfs, max_bytes)
            for number, layer in enumerate(plan.layers, 1):
                progress(f"{plan.name}: unpacking layer {number} of {len(plan.layers)}")
                _unpack_layer(archive, layer, unpacker)
            unpacker.finish()
            config = _image_config(summary, rootfs)
            summary["uid"], summary["gid"] = config.app.uid, config.app.gid  # type: ignore[union-attr]
            progress(f"{plan.name}: computing checksum")
            checksum, size = tree_checksum(rootfs)
            meta = {
                "name": plan.name, "size_bytes": size, "checksum": checksum,
                "config": asdict(config),
                "oci": {"image_id": plan.image_id, "manifest_digest": plan.manifest_digest,
                        "layers": [b.digest or b.diff_id for b in plan.layers],
                        "summary": summary, "notes": unpacker.notes()},
            }
            (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
            os.chmod(tmp, 0o755)
            try:
                os.rename(tmp, final)
            except OSError:  # imported meanwhile by someone else: theirs is as good
                if (existing := _existing(final)) is None:
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
                return ImportedImage(plan.name, plan.image_id, plan.manifest_digest, existing,
                                     summary, reused=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        progress(f"{plan.name}: imported, {size // 1024} KiB, {checksum}")
        built = BuiltImage(name=plan.name, path=final, size_bytes=size, checksum=checksum,
                           config=config)
        return ImportedImage(plan.name, plan.image_id, plan.manifest_digest, built, summary,
                             notes=tuple(unpacker.notes()))


def _existing(final: Path) -> BuiltImage | None:
    built = load_image(final)
    return built if built is not None and (final / "rootfs").is_dir() else None


def _stored_summary(final: Path) -> dict | None:
    try:
        return json.loads((final / META).read_text())["oci"]["summary"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --- reading the archive --------------------------------------------------------------------

class _Archive:
    """Read-only access to the files of a layout directory or a tarball, by name."""

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def open(self, name: str, what: str) -> IO[bytes]:
        raise NotImplementedError


class _Directory(_Archive):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise OciImportError(f"refused: {name!r} is not a path inside the layout")
        path = self.root
        for part in parts:
            path = path / part
            # a blob that is a symbolic link could make the import read any host file
            if path.is_symlink():
                raise OciImportError(f"refused: {name} in the layout is a symbolic link")
        return path

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def open(self, name: str, what: str) -> IO[bytes]:
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise OciImportError(f"{what} ({name}) is missing from the layout") from None
        except OSError as exc:
            raise OciImportError(f"cannot read {what} ({name}): {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OciImportError(f"{what} ({name}) is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")


class _Tarball(_Archive):
    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.members: dict[str, tarfile.TarInfo] = {}
        for member in tar.getmembers():
            self.members[_normal(member.name)] = member

    def exists(self, name: str) -> bool:
        return name in self.members

    def open(self, name: str, what: str) -> IO[bytes]:
        member = self.members.get(name)
        if member is None:
            raise OciImportError(f"{what} ({name}) is missing from the archive")
        # links inside the archive are followed by tarfile to another member, never to a file
        # of the host; docker save uses them for layers shared by several images
        try:
            handle = self.tar.extractfile(member)
        except (KeyError, tarfile.TarError) as exc:
            raise OciImportError(f"{what} ({name}) cannot be read from the archive: {exc}") from None
        if handle is None:
            raise OciImportError(f"{what} ({name}) is not a file in the archive")
        return handle


def _normal(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


@contextlib.contextmanager
def _open_source(source: Path | BinaryIO) -> Iterator[_Archive]:
    if isinstance(source, Path | str):
        path = Path(source)
        if path.is_dir():
            yield _Directory(path)
            return
        if not path.is_file():
            raise OciImportError(f"{path} is neither a directory (OCI layout) nor a file (tarball)")
        opener = {"name": str(path)}
    else:
        opener = {"fileobj": source}
    try:
        tar = tarfile.open(mode="r:*", **opener)  # type: ignore[arg-type]  # noqa: SIM115 (closed below)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise OciImportError(
            f"not a tar archive (or compressed with something other than gzip): {exc}") from None
    with tar:
        try:
            archive = _Tarball(tar)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise OciImportError(f"the archive is damaged: {exc}") from None
        yield archive


def _read_json(archive: _Archive, name: str, what: str) -> dict:
    with archive.open(name, what) as f:
        data = f.read(MAX_JSON + 1)
    return _parse_json(data, what)


def _parse_json(data: bytes, what: str) -> dict:
    if len(data) > MAX_JSON:
        raise OciImportError(f"{what} is larger than {MAX_JSON >> 20} MiB: not an image's JSON")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OciImportError(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise OciImportError(f"{what} is JSON but not an object")
    return value


def _blob_path(digest: str) -> str:
    algorithm, _, hexa = digest.partition(":")
    return f"blobs/{algorithm}/{hexa}"


def _descriptor(value: object, what: str) -> tuple[str, str, int, dict]:
    """(media type, digest, size, annotations) of an OCI descriptor, checked."""
    if not isinstance(value, dict):
        raise OciImportError(f"{what}: a descriptor must be a JSON object")
    media, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise OciImportError(f"{what}: {digest!r} is not a sha256 or sha512 digest")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise OciImportError(f"{what}: its size must be a non-negative integer")
    if not isinstance(media, str):
        raise OciImportError(f"{what}: it has no media type")
    annotations = value.get("annotations") or {}
    return media, digest, size, annotations if isinstance(annotations, dict) else {}


def _read_plan(archive: _Archive, name: str | None) -> _Plan:
    if archive.exists("index.json"):
        if not archive.exists("oci-layout"):
            raise OciImportError("index.json without an oci-layout file: not an OCI image layout")
        layout = _read_json(archive, "oci-layout", "oci-layout")
        if layout.get("imageLayoutVersion") != "1.0.0":
            raise OciImportError(f"unsupported OCI layout version {layout.get('imageLayoutVersion')!r}")
        return _oci_plan(archive, name)
    if archive.exists("manifest.json"):
        return _docker_plan(archive, name)
    raise OciImportError("neither an OCI image layout (oci-layout, index.json) nor a "
                         "docker save archive (manifest.json)")


def _split_name(name: str, what: str) -> tuple[str, str]:
    """("repository", "tag") of "repository[:tag]"; refused unless both are well formed."""
    if "@" in name:
        raise OciImportError(f"{what} {name!r}: give a tag, not a digest")
    repository, colon, tag = name.rpartition(":")
    if not colon or "/" in tag:  # "registry:5000/app" has no tag
        repository, tag = name, "latest"
    for prefix in ("docker.io/library/", "docker.io/"):
        if repository.startswith(prefix):
            repository = repository[len(prefix):]
            break
    if not REPOSITORY_RE.match(repository) or len(repository) > 80:
        raise OciImportError(f"{what} {name!r}: a repository name is lower-case letters, "
                             "digits and separators (. _ - /), at most 80 characters")
    if not TAG_RE.match(tag):
        raise OciImportError(f"{what} {name!r}: a tag is letters, digits, '_', '.' and '-'")
    return repository, tag


def _full_name(name: str, what: str) -> str:
    repository, tag = _split_name(name, what)
    return f"{repository}:{tag}"


def _oci_plan(archive: _Archive, name: str | None) -> _Plan:
    index = _read_json(archive, "index.json", "index.json")
    media, digest, size, annotations, ref = _pick_manifest(archive, index, name, depth=0)
    manifest_blob = _Blob("the manifest", _blob_path(digest), digest, size)
    with archive.open(manifest_blob.path, "the manifest") as f:
        data = f.read(MAX_JSON + 1)
    _check_bytes(data, manifest_blob)
    manifest = _parse_json(data, "the manifest")
    if manifest.get("schemaVersion") != 2:
        raise OciImportError("the manifest's schemaVersion is not 2")
    c_media, c_digest, c_size, _ = _descriptor(manifest.get("config"), "the manifest's config")
    if c_media not in CONFIG_TYPES:
        raise OciImportError(f"unsupported config media type {c_media!r} (not a container image)")
    config_blob = _Blob("the config", _blob_path(c_digest), c_digest, c_size)
    with archive.open(config_blob.path, "the config") as f:
        data = f.read(MAX_JSON + 1)
    _check_bytes(data, config_blob)
    config = _parse_json(data, "the config")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise OciImportError("the manifest lists no layers")
    if len(layers) > MAX_LAYERS:
        raise OciImportError(f"{len(layers)} layers: at most {MAX_LAYERS} are supported")
    diff_ids = _diff_ids(config, len(layers))
    blobs = []
    for number, value in enumerate(layers, 1):
        l_media, l_digest, l_size, _ = _descriptor(value, f"layer {number}")
        compression = LAYER_TYPES.get(l_media)
        if compression is None:
            raise OciImportError(f"layer {number} has the unsupported media type {l_media!r}")
        if compression == ZSTD:
            raise OciImportError(
                f"layer {number} is zstd-compressed, which Berth cannot unpack (Python 3.11 "
                "has no zstd decoder): export the image with gzip layers, e.g. "
                "skopeo copy --dest-compress-format gzip")
        blobs.append(_Blob(f"layer {number}", _blob_path(l_digest), l_digest, l_size,
                           compression, diff_ids[number - 1]))
    chosen = name or _name_from_annotations(annotations, ref, index)
    if not chosen:
        raise OciImportError("the archive does not name its image: give a name (NAME[:TAG])")
    return _Plan(_full_name(chosen, "image name"), c_digest, digest, config, config_blob,
                 manifest_blob, blobs)


def _name_from_annotations(annotations: dict, ref: str, index: dict) -> str:
    for candidate in (annotations.get(CONTAINERD_NAME), (index.get("annotations") or {}).get(
            CONTAINERD_NAME) if isinstance(index.get("annotations"), dict) else None):
        if isinstance(candidate, str) and candidate:
            return candidate
    # ref.name is a tag ("v1") or a whole reference ("app:v1"); a bare tag names no image
    if ref and (":" in ref or "/" in ref):
        return ref
    return ""


def _pick_manifest(archive: _Archive, index: dict, name: str | None,
                   depth: int) -> tuple[str, str, int, dict, str]:
    """The manifest descriptor to import: the one tagged as ``name`` asks, else the only one,
    else the linux/amd64 one."""
    entries = index.get("manifests")
    if not isinstance(entries, list) or not entries:
        raise OciImportError("the index lists no manifests")
    found = []
    for number, value in enumerate(entries, 1):
        media, digest, size, annotations = _descriptor(value, f"index entry {number}")
        platform = value.get("platform") if isinstance(value, dict) else None
        found.append((media, digest, size, annotations, platform))
    if name:
        repository, tag = _split_name(name, "image name")
        tagged = [f for f in found if f[3].get(REF_NAME) in (tag, f"{repository}:{tag}", name)
                  or f[3].get(CONTAINERD_NAME) in (name, f"{repository}:{tag}")]
        if tagged:
            found = tagged
    if len(found) > 1:
        found = [f for f in found if isinstance(f[4], dict) and f[4].get("os") == "linux"
                 and f[4].get("architecture") == "amd64"] or found
    if len(found) > 1:
        refs = sorted({str(f[3].get(REF_NAME)) for f in found if f[3].get(REF_NAME)})
        raise OciImportError(f"the archive holds {len(found)} images; name the one to import"
                             + (f" ({', '.join(refs)})" if refs else ""))
    media, digest, size, annotations, _ = found[0]
    if media in INDEX_TYPES:
        if depth >= 3:
            raise OciImportError("image indexes nested too deeply")
        blob = _Blob("an image index", _blob_path(digest), digest, size)
        with archive.open(blob.path, "an image index") as f:
            data = f.read(MAX_JSON + 1)
        _check_bytes(data, blob)
        media, digest, size, inner, ref = _pick_manifest(
            archive, _parse_json(data, "an image index"), name, depth + 1)
        return media, digest, size, {**annotations, **inner}, ref or str(annotations.get(REF_NAME) or "")
    if media not in MANIFEST_TYPES:
        raise OciImportError(f"unsupported manifest media type {media!r}")
    return media, digest, size, annotations, str(annotations.get(REF_NAME) or "")


def _diff_ids(config: dict, count: int) -> list[str]:
    rootfs = config.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or len(ids) != count:
        raise OciImportError(f"the config lists {len(ids) if isinstance(ids, list) else 'no'} "
                             f"layer diff_ids for {count} layer(s)")
    for diff_id in ids:
        if not isinstance(diff_id, str) or not DIGEST_RE.match(diff_id):
            raise OciImportError(f"the config's diff_id {diff_id!r} is not a digest")
    return ids


def _docker_plan(archive: _Archive, name: str | None) -> _Plan:
    with archive.open("manifest.json", "manifest.json") as f:
        data = f.read(MAX_JSON + 1)
    if len(data) > MAX_JSON:
        raise OciImportError("manifest.json is too large to be a docker save manifest")
    try:
        entries = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OciImportError(f"manifest.json is not JSON: {exc}") from None
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise OciImportError("manifest.json is not a docker save manifest (a list of images)")
    if name and len(entries) > 1:
        full = _full_name(name, "image name")
        entries = [e for e in entries if full in [_full_name(t, "tag") for t in e.get("RepoTags") or []
                                                  if isinstance(t, str)]] or entries
    if len(entries) > 1:
        tags = sorted(t for e in entries for t in e.get("RepoTags") or [] if isinstance(t, str))
        raise OciImportError(f"the archive holds {len(entries)} images; name the one to import"
                             + (f" ({', '.join(tags)})" if tags else ""))
    entry = entries[0]
    config_name = entry.get("Config")
    if not isinstance(config_name, str):
        raise OciImportError("manifest.json names no config")
    config_name = _normal(config_name)
    match = re.fullmatch(r"(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json)?", config_name)
    if match is None:
        raise OciImportError(f"the config {config_name!r} is not named by its sha256 digest")
    config_blob = _Blob("the config", config_name, f"sha256:{match.group(1)}", None)
    with archive.open(config_name, "the config") as f:
        data = f.read(MAX_JSON + 1)
    _check_bytes(data, config_blob)
    config = _parse_json(data, "the config")
    layers = entry.get("Layers")
    if not isinstance(layers, list) or not all(isinstance(layer, str) for layer in layers):
        raise OciImportError("manifest.json lists no layers")
    if len(layers) > MAX_LAYERS:
        raise OciImportError(f"{len(layers)} layers: at most {MAX_LAYERS} are supported")
    diff_ids = _diff_ids(config, len(layers))
    # the legacy format names layers by path and lists neither digests nor sizes: each layer
    # is checked against its diff_id (digest of the uncompressed tar) instead
    blobs = [_Blob(f"layer {n}", _normal(path), "", None, PLAIN, diff_ids[n - 1])
             for n, path in enumerate(layers, 1)]
    tags = [t for t in entry.get("RepoTags") or [] if isinstance(t, str)]
    chosen = name or (tags[0] if tags else "")
    if not chosen:
        raise OciImportError("the archive does not name its image: give a name (NAME[:TAG])")
    return _Plan(_full_name(chosen, "image name"), config_blob.digest, "", config, config_blob,
                 None, blobs)


# --- digests ----------------------------------------------------------------------------------

class _Hashing(io.RawIOBase):
    """Reads through ``inner``, counting bytes and hashing them."""

    def __init__(self, inner: IO[bytes], algorithm: str = "sha256") -> None:
        self.inner = inner
        self.hash = hashlib.new(algorithm)
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        data = self.inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.hash.update(data)
        self.count += n
        return n

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def digest(self) -> str:
        return f"{self.hash.name}:{self.hash.hexdigest()}"


def _check_bytes(data: bytes, blob: _Blob) -> None:
    _compare(blob, len(data), f"{blob.digest.split(':')[0]}:"
             f"{hashlib.new(blob.digest.split(':')[0], data).hexdigest()}")


def _compare(blob: _Blob, size: int, digest: str, *, expected: str | None = None) -> None:
    expected = expected or blob.digest
    if blob.size is not None and size != blob.size:
        raise OciImportError(f"{blob.what} ({blob.path}) is {size} bytes, the manifest says "
                             f"{blob.size}: the archive is damaged or was tampered with")
    if digest != expected:
        raise OciImportError(f"{blob.what} ({blob.path}) has the digest {digest}, not {expected} "
                             "as the manifest says: the archive is damaged or was tampered with")


def _verify(archive: _Archive, blob: _Blob) -> None:
    """Size and digest of one blob, read in full, before anything is unpacked."""
    if blob.digest:
        with archive.open(blob.path, blob.what) as f:
            reader = _Hashing(f, blob.digest.split(":")[0])
            reader.drain()
        _compare(blob, reader.count, reader.digest())
        return
    # a legacy docker layer: only the uncompressed digest is known
    with archive.open(blob.path, blob.what) as f, _decompressed(f, blob, sniff=True) as tar_stream:
        reader = _Hashing(tar_stream, blob.diff_id.split(":")[0])
        reader.drain()
    _compare(blob, reader.count, reader.digest(), expected=blob.diff_id)


@contextlib.contextmanager
def _decompressed(raw: IO[bytes], blob: _Blob, *, sniff: bool = False) -> Iterator[IO[bytes]]:
    """The layer's tar stream. ``sniff``: docker save's layer.tar is plain, or gzip when
    another tool wrote it; its magic number says which."""
    compression = blob.compression
    if sniff:
        if not hasattr(raw, "peek"):
            raw = io.BufferedReader(raw, CHUNK)  # type: ignore[arg-type]
        head = raw.peek(4)[:4]  # type: ignore[attr-defined]
        if head[:2] == b"\x1f\x8b":
            compression = GZIP
        elif head == b"\x28\xb5\x2f\xfd":
            raise OciImportError(f"{blob.what} is zstd-compressed, which Berth cannot unpack "
                                 "(Python 3.11 has no zstd decoder)")
    if compression != GZIP:
        yield raw
        return
    stream = gzip.GzipFile(fileobj=raw, mode="rb")
    try:
        yield _GzipErrors(stream, blob)  # type: ignore[misc]
    finally:
        stream.close()


class _GzipErrors(io.RawIOBase):
    """A gzip stream whose decoding errors become OciImportError."""

    def __init__(self, inner: IO[bytes], blob: _Blob) -> None:
        self.inner, self.blob = inner, blob

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        try:
            data = self.inner.read(len(buffer))
        except (OSError, EOFError, zlib.error) as exc:
            raise OciImportError(f"{self.blob.what} is not valid gzip data: {exc}") from None
        buffer[:len(data)] = data
        return len(data)


# --- the image's config -----------------------------------------------------------------------

def _strings(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and "\0" not in v for v in value):
        raise OciImportError(f"the image config's {what} must be a list of strings")
    return value


def _summarise(config: dict) -> dict:
    """The image config's runtime part, checked; the user is resolved once unpacked."""
    os_name, arch = config.get("os", "linux"), config.get("architecture", "amd64")
    if os_name != "linux" or arch != "amd64":
        raise OciImportError(f"the image is for {os_name}/{arch}; Berth's hosts run linux/amd64")
    run = config.get("config") or {}
    if not isinstance(run, dict):
        raise OciImportError("the image config's 'config' is not an object")
    env: dict[str, str] = {}
    for item in _strings(run.get("Env"), "Env"):
        key, eq, value = item.partition("=")
        if not eq or not ENV_NAME_RE.match(key):
            raise OciImportError(f"the image config's Env entry {item[:60]!r} is not NAME=value")
        env[key] = value
    workdir = run.get("WorkingDir") or "/"
    if not isinstance(workdir, str) or "\0" in workdir:
        raise OciImportError("the image config's WorkingDir must be a path")
    workdir = posixpath.normpath(posixpath.join("/", workdir))
    user = run.get("User") or ""
    if not isinstance(user, str) or "\0" in user or len(user) > 200:
        raise OciImportError("the image config's User must be a string")
    if not isinstance(run.get("ExposedPorts") or {}, dict) or not isinstance(run.get("Volumes") or {}, dict):
        raise OciImportError("the image config's ExposedPorts and Volumes must be objects")
    ports = []
    for port in (run.get("ExposedPorts") or {}):
        match = PORT_RE.match(port) if isinstance(port, str) else None
        if match is None or not 0 < int(match.group(1)) < 65536:
            raise OciImportError(f"the image config's exposed port {port!r} is not PORT[/tcp|udp]")
        ports.append(f"{int(match.group(1))}/{match.group(2) or 'tcp'}")
    volumes = ["/data"]
    for volume in run.get("Volumes") or {}:
        path = posixpath.normpath(volume) if isinstance(volume, str) else ""
        if not VOLUME_RE.match(path) or ".." in path.split("/"):
            raise OciImportError(f"the image config's volume {volume!r} is not an absolute path "
                                 "of letters, digits and . _ - @ +")
        if any(path == r or path.startswith(r + "/") for r in RESERVED_PATHS):
            raise OciImportError(f"the image config's volume {path} is below {path.split('/')[1]}, "
                                 "which Berth mounts itself")
        if path not in volumes:
            volumes.append(path)
    if len(volumes) > MAX_VOLUMES:
        raise OciImportError(f"the image declares {len(volumes)} volumes; at most {MAX_VOLUMES}")
    return {
        "entrypoint": _strings(run.get("Entrypoint"), "Entrypoint"),
        "cmd": _strings(run.get("Cmd"), "Cmd"),
        "env": env, "working_dir": workdir, "user": user, "exposed_ports": sorted(set(ports)),
        "volumes": volumes, "stop_signal": _stop_signal(run.get("StopSignal")),
        "created": config.get("created") if isinstance(config.get("created"), str) else "",
    }


def _stop_signal(value: object) -> str:
    if value in (None, ""):
        return "SIGTERM"
    if isinstance(value, str):
        name = value.upper()
        try:
            number = int(name)
        except ValueError:
            name = name if name.startswith("SIG") else f"SIG{name}"
            if isinstance(getattr(signal, name, None), signal.Signals):
                return name
        else:
            with contextlib.suppress(ValueError):
                return signal.Signals(number).name
    raise OciImportError(f"the image config's StopSignal {value!r} is not a signal")


def _image_config(summary: dict, rootfs: Path) -> ImageConfig:
    uid, gid, groups, home = _resolve_user(summary["user"], rootfs)
    env = {"PATH": DEFAULT_PATH, "HOME": home, "TERM": "xterm-256color", **summary["env"]}
    app = AppConfig(entrypoint=tuple(summary["entrypoint"]), cmd=tuple(summary["cmd"]),
                    uid=uid, gid=gid, groups=tuple(groups), workdir=summary["working_dir"],
                    volumes=tuple(summary["volumes"]),
                    exposed_ports=tuple(summary["exposed_ports"]))
    return ImageConfig(init=app.entrypoint + app.cmd, env=env,
                       stop_signal=summary["stop_signal"], console_shell=False, app=app)


def _resolve_user(user: str, rootfs: Path) -> tuple[int, int, list[int], str]:
    """(uid, gid, supplementary gids, home) of "user[:group]", names looked up in the image."""
    name, _, group = user.partition(":")
    passwd = _table(rootfs, "etc/passwd")
    uid = gid = 0
    home = "/root"
    username = ""
    if name and not name.isdigit():
        entry = next((e for e in passwd if e[0] == name and len(e) >= 6), None)
        if entry is None or not entry[2].isdigit() or not entry[3].isdigit():
            raise OciImportError(f"the image's user {name!r} is not in its /etc/passwd")
        username, uid, gid, home = name, int(entry[2]), int(entry[3]), entry[5] or "/"
    elif name:
        # as Docker does: a uid the image does not know gets group 0 and HOME=/
        uid = int(name)
        entry = next((e for e in passwd if len(e) >= 6 and e[2] == name and e[3].isdigit()), None)
        username, gid, home = (entry[0], int(entry[3]), entry[5] or "/") if entry else ("", 0, "/")
        if uid == 0 and entry is None:
            home = "/root"
    groups_table = _table(rootfs, "etc/group")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            entry = next((e for e in groups_table if e[0] == group and len(e) >= 3), None)
            if entry is None or not entry[2].isdigit():
                raise OciImportError(f"the image's group {group!r} is not in its /etc/group")
            gid = int(entry[2])
    extra = sorted({int(e[2]) for e in groups_table if len(e) >= 4 and e[2].isdigit()
                    and username and username in e[3].split(",")} - {gid})
    for value in (uid, gid, *extra):
        if not 0 <= value < IDS:
            raise OciImportError(f"the image's user {user!r} has id {value}, outside the "
                                 f"0-{IDS - 1} range a container has")
    return uid, gid, extra, home


def _table(rootfs: Path, rel: str) -> list[list[str]]:
    """The lines of /etc/passwd or /etc/group, split at ':'; empty when it is absent, not a
    regular file, or reached through a symbolic link (never followed out of the image)."""
    fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parts = rel.split("/")
        for part in parts[:-1]:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
            except OSError:
                return []
            os.close(fd)
            fd = nxt
        try:
            file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK |
                              os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            return []
    finally:
        os.close(fd)
    with os.fdopen(file_fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return []
        text = f.read(MAX_JSON).decode(errors="replace")
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


# --- unpacking ------------------------------------------------------------------------------

def _unpack_layer(archive: _Archive, blob: _Blob, unpacker: _Unpacker) -> None:
    """Unpack one layer; its digests are checked again on the way (the file may have changed
    since it was verified): the blob's own and the uncompressed tar's (diff_id)."""
    with archive.open(blob.path, blob.what) as raw:
        compressed = _Hashing(raw, (blob.digest or "sha256:").split(":")[0])
        buffered = io.BufferedReader(compressed, CHUNK)
        with _decompressed(buffered, blob, sniff=not blob.digest) as stream:
            plain = _Hashing(stream, blob.diff_id.split(":")[0])
            try:
                with tarfile.open(fileobj=io.BufferedReader(plain, CHUNK), mode="r|") as tar:
                    unpacker.layer(tar, blob.what)
            except tarfile.TarError as exc:
                raise OciImportError(f"{blob.what} is not a valid tar archive: {exc}") from None
            plain.drain()  # the tar's end-of-archive padding counts in its digest
        buffered.read()
    if blob.digest:
        _compare(blob, compressed.count, compressed.digest())
    uncompressed = _Blob(f"{blob.what} (uncompressed)", blob.path, blob.diff_id, None)
    _compare(uncompressed, plain.count, plain.digest())


class _Unpacker:
    """Applies layers, one after the other, to a rootfs tree; every member checked first."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries = 0
        self.devices: list[str] = []
        self.xattrs = 0
        self.dir_times: dict[str, float] = {}
        self.dirs: set[str] = {""}  # verified real directories (no symlink on the way)
        self.written: set[str] = set()  # entries of the current layer
        self.touched: set[str] = set()  # ... and the directories above them
        self.what = ""

    # -- layers --------------------------------------------------------------------------

    def layer(self, tar: tarfile.TarFile, what: str) -> None:
        self.written, self.touched, self.what = set(), set(), what
        for member in tar:
            self.entries += 1
            if self.entries > MAX_ENTRIES:
                raise OciImportError(f"more than {MAX_ENTRIES} files: refused")
            rel = self._member_path(member.name)
            parent, base = posixpath.split(rel) if rel else ("", "")
            if base.startswith(".wh."):
                if base == ".wh..wh..opq":
                    self._clear_lower(parent)
                elif not base.startswith(".wh..wh."):  # .wh..wh.plnk etc: aufs bookkeeping
                    self._whiteout(posixpath.join(parent, base[4:]))
                continue
            self._entry(tar, member, rel)

    def finish(self) -> None:
        """Directory times last (writing into a directory changes its mtime)."""
        for rel in sorted(self.dir_times, key=lambda r: r.count("/"), reverse=True):
            path = self._abs(rel)
            if path.is_dir() and not path.is_symlink():
                os.utime(path, (self.dir_times[rel], self.dir_times[rel]), follow_symlinks=False)

    def notes(self) -> list[str]:
        notes = []
        if self.devices:
            shown = ", ".join("/" + d for d in self.devices[:5])
            notes.append(f"skipped {len(self.devices)} device node(s) ({shown}"
                         f"{', ...' if len(self.devices) > 5 else ''}): a container's /dev is "
                         "Berth's")
        if self.xattrs:
            notes.append(f"did not keep {self.xattrs} extended attribute(s) (e.g. file "
                         "capabilities)")
        return notes

    # -- checks --------------------------------------------------------------------------

    def _refuse(self, message: str) -> OciImportError:
        return OciImportError(f"{self.what}: {message}; the image was refused")

    def _member_path(self, name: str) -> str:
        if "\0" in name:
            raise self._refuse(f"the entry {name!r} has a NUL byte in its name")
        if name.startswith("/"):
            raise self._refuse(f"the entry {name!r} has an absolute path (path traversal)")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self._refuse(f"the entry {name!r} climbs out with '..' (path traversal)")
        return "/".join(parts)

    def _abs(self, rel: str) -> Path:
        return self.root / rel if rel else self.root

    def _real_dir(self, rel: str, *, create: bool) -> bool:
        """Whether ``rel`` is a directory reached without any symbolic link; missing parents
        are made (mode 0755, root's) when ``create``. A symlink or a file on the way is
        refused: nothing is ever written through a link."""
        if rel in self.dirs:
            return True
        parent, _ = posixpath.split(rel)
        if not self._real_dir(parent, create=create):
            return False
        path = self._abs(rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if not create:
                return False
            os.mkdir(path, 0o755)
            self._mark(rel)
            self.dirs.add(rel)
            return True
        if stat.S_ISLNK(st.st_mode):
            raise self._refuse(f"/{rel} is a symbolic link (to {os.readlink(path)}) and an entry "
                               "goes through it: nothing is written through a link (it could "
                               "point out of the image)")
        if not stat.S_ISDIR(st.st_mode):
            if not create:
                return False
            raise self._refuse(f"/{rel} is a file, but an entry is placed inside it")
        self.dirs.add(rel)
        return True

    def _mark(self, rel: str) -> None:
        self.written.add(rel)
        while rel:
            rel = posixpath.dirname(rel)
            self.touched.add(rel)

    def _forget(self, rel: str) -> None:
        prefix = rel + "/"
        self.dirs = {d for d in self.dirs if d != rel and not d.startswith(prefix)}

    def _remove(self, rel: str) -> None:
        path = self._abs(rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)  # never follows symbolic links
        else:
            os.unlink(path)
        self._forget(rel)

    # -- whiteouts -----------------------------------------------------------------------

    def _whiteout(self, rel: str) -> None:
        """Hide ``rel`` of the lower layers; what this layer itself put there stays."""
        parent = posixpath.dirname(rel)
        if not rel or rel in self.written or not self._real_dir(parent, create=False):
            return
        if rel in self.touched:  # this layer wrote inside it: only the lower part goes
            self._clear_lower(rel)
        else:
            self._remove(rel)

    def _clear_lower(self, rel: str) -> None:
        """Remove everything below directory ``rel`` that this layer did not write."""
        if not self._real_dir(rel, create=False):
            return
        with os.scandir(self._abs(rel)) as entries:
            children = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        for name, is_dir in children:
            child = posixpath.join(rel, name) if rel else name
            if child in self.written or child in self.touched:
                if is_dir:
                    self._clear_lower(child)
            else:
                self._remove(child)

    # -- entries -------------------------------------------------------------------------

    def _entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo, rel: str) -> None:
        if member.uid >= IDS or member.gid >= IDS or member.uid < 0 or member.gid < 0:
            raise self._refuse(f"/{rel} belongs to {member.uid}:{member.gid}, outside the "
                               f"0-{IDS - 1} ids a container has")
        self.xattrs += sum(1 for key in member.pax_headers if key.startswith("SCHILY.xattr."))
        if not rel:  # the root directory itself
            if member.isdir():
                os.chown(self.root, member.uid, member.gid)
                os.chmod(self.root, member.mode & 0o7777)
            return
        if member.ischr() or member.isblk():
            self.devices.append(rel)
            return
        parent = posixpath.dirname(rel)
        self._real_dir(parent, create=True)
        path = self._abs(rel)
        if member.isdir():
            try:
                is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
            except FileNotFoundError:
                is_dir = False
            if not is_dir:  # absent, or a lower layer's file or symbolic link: replaced
                self._remove(rel)
                os.mkdir(path, 0o700)
            self.dirs.add(rel)
            os.chown(path, member.uid, member.gid)
            os.chmod(path, member.mode & 0o7777)
            self.dir_times[rel] = member.mtime
            self._mark(rel)
            return
        if member.islnk():
            target = self._link_target(member, rel)  # checked before anything is removed
            self._remove(rel)
            os.link(self._abs(target), path, follow_symlinks=False)
            self._mark(rel)
            return
        if member.issym():
            self._check_symlink(member.linkname, rel)
            self._remove(rel)
            os.symlink(member.linkname, path)
            os.chown(path, member.uid, member.gid, follow_symlinks=False)
        elif member.isreg():
            self.bytes += member.size
            if self.bytes > self.max_bytes:
                raise self._refuse(f"the image unpacks to more than {self.max_bytes >> 20} MiB")
            self._remove(rel)
            self._write(tar, member, path)
        elif member.isfifo():
            self._remove(rel)
            os.mkfifo(path, 0o600)
            os.chown(path, member.uid, member.gid)
            os.chmod(path, member.mode & 0o7777)
        else:
            raise self._refuse(f"/{rel} is a tar entry of unsupported type {member.type!r}")
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
        self._mark(rel)

    def _write(self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> None:
        source = tar.extractfile(member)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        with os.fdopen(fd, "wb") as out:
            if source is not None:
                shutil.copyfileobj(source, out, CHUNK)
            # chown first: it clears set-uid bits, which the image may have on purpose
            os.fchown(out.fileno(), member.uid, member.gid)
            os.fchmod(out.fileno(), member.mode & 0o7777)

    def _check_symlink(self, target: str, rel: str) -> None:
        if not target or "\0" in target or len(target) > 4095:
            raise self._refuse(f"the symbolic link /{rel} has an invalid target")
        if target.startswith("/"):
            # inside the container "/" is the image's root: absolute links are normal
            # (busybox's applets, Debian's alternatives); none is ever followed here
            return
        depth = rel.count("/")  # directories between the link and the root
        for part in target.split("/"):
            if part == "..":
                depth -= 1
                if depth < 0:
                    raise self._refuse(f"the symbolic link /{rel} -> {target} points out of "
                                       "the image")
            elif part not in ("", "."):
                depth += 1

    def _link_target(self, member: tarfile.TarInfo, rel: str) -> str:
        name = member.linkname
        if name.startswith("/"):
            raise self._refuse(f"the hard link /{rel} -> {name} has an absolute target "
                               "(outside the image)")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts or not parts or "\0" in name:
            raise self._refuse(f"the hard link /{rel} -> {name} points out of the image")
        target = "/".join(parts)
        if target == rel:
            raise self._refuse(f"the hard link /{rel} points to itself")
        if not self._real_dir(posixpath.dirname(target), create=False):
            raise self._refuse(f"the hard link /{rel} -> {target}: no such file in the image")
        try:
            st = os.lstat(self._abs(target))
        except FileNotFoundError:
            raise self._refuse(f"the hard link /{rel} -> {target}: no such file in the "
                               "image") from None
        if stat.S_ISDIR(st.st_mode):
            raise self._refuse(f"the hard link /{rel} -> {target} points to a directory")
        return target
