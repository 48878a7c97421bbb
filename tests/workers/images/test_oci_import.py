"""Importing OCI images (workers/images/oci.py): layouts, oci-archive and docker save
tarballs unpacked into the image store with whiteouts honoured and the config read; and every
kind of bad archive refused with a sentence, leaving no partial image and writing nothing
outside the store."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from tests.workers.images import oci_layouts as L
from workers.images.base import load_config, load_image, tree_checksum
from workers.images.oci import OciImportError, import_oci


@pytest.fixture(scope="module")
def app_v1(tmp_path_factory, busybox_image):
    return L.app_image(tmp_path_factory.mktemp("layout") / "app", busybox_image.rootfs)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "images"


def test_imports_a_layout_with_whiteouts_owners_and_config(app_v1, store):
    messages: list[str] = []
    imported = import_oci(app_v1.dest, store, progress=messages.append)
    assert imported.name == "app:v1" and not imported.reused
    config_digest = app_v1.manifests and json.loads(
        app_v1.blob_path(app_v1.manifests[0]).read_text())["config"]["digest"]
    assert imported.image_id == config_digest
    assert imported.built.path == store / "oci" / config_digest.split(":")[1]
    assert stat.S_IMODE((store / "oci").stat().st_mode) == 0o700  # set-uid trees unreachable
    root = imported.built.rootfs
    # layers applied in order; the app layer's whiteout and opaque directory hide the lower ones
    assert sorted(os.listdir(root / "opt/junk")) == ["c"]
    assert not (root / "etc/motd").exists()
    assert (root / "app/VERSION").read_text() == "1\n"
    assert os.readlink(root / "bin/sh") == "/bin/busybox"  # absolute links are kept as they are
    app_dir = (root / "app").stat()
    assert (app_dir.st_uid, app_dir.st_gid) == (1000, 1000)  # owners as in the layer
    assert stat.S_IMODE((root / "app/start.sh").stat().st_mode) == 0o755
    assert (root / "etc/passwd").read_text() == L.PASSWD
    # the image's config, as the driver will run it
    config = load_config(imported.built.path)
    app = config.app
    assert app.entrypoint == ("/app/start.sh",) and app.cmd == ("serve",)
    assert config.init == ("/app/start.sh", "serve") and not config.console_shell
    assert (app.uid, app.gid, app.groups) == (1000, 1000, (2000,))
    assert app.workdir == "/app" and app.volumes == ("/data", "/var/lib/app")
    assert app.exposed_ports == ("8080/tcp",) and config.stop_signal == "SIGTERM"
    assert config.env["GREETING"] == "hello from v1" and config.env["HOME"] == "/home/app"
    assert config.env["PATH"] == "/bin:/sbin:/usr/bin:/usr/sbin"
    meta = load_image(imported.built.path)
    assert meta.checksum == tree_checksum(root)[0] == imported.built.checksum
    assert imported.summary["user"] == "app" and imported.summary["uid"] == 1000
    assert any("checking every blob" in m for m in messages) and "imported" in messages[-1]
    assert sorted(os.listdir(store / "oci")) == [config_digest.split(":")[1]]


def test_the_same_image_again_is_not_unpacked_twice(app_v1, store):
    first = import_oci(app_v1.dest, store)
    mtime = first.built.rootfs.stat().st_mtime_ns
    again = import_oci(app_v1.dest, store, name="other:latest")
    assert again.reused and again.name == "other:latest" and again.image_id == first.image_id
    assert again.built.path == first.built.path and first.built.rootfs.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("gzip_it", [False, True])
def test_imports_an_oci_archive(app_v1, store, tmp_path, gzip_it):
    archive = L.tar_directory(app_v1.dest, tmp_path / "app.tar", gzip_it=gzip_it)
    imported = import_oci(archive, store)
    assert imported.name == "app:v1" and (imported.built.rootfs / "app/start.sh").is_file()
    with open(archive, "rb") as f:  # an upload: an open file rather than a path
        assert import_oci(f, tmp_path / "other-store").image_id == imported.image_id


def test_imports_a_docker_save_archive(busybox_image, store, tmp_path):
    layers = L.app_layers(busybox_image.rootfs, 2)
    archive = L.docker_archive(tmp_path / "save.tar", layers, tags=["registry.example/app:v2"],
                               **L.app_run_config(2))
    imported = import_oci(archive, store)
    assert imported.name == "registry.example/app:v2" and imported.manifest_digest == ""
    root = imported.built.rootfs
    assert sorted(os.listdir(root / "opt/junk")) == ["c"] and not (root / "etc/motd").exists()
    assert load_config(imported.built.path).env["GREETING"] == "hello from v2"


def test_a_name_given_wins_and_is_checked(app_v1, store):
    assert import_oci(app_v1.dest, store, name="shop/web").name == "shop/web:latest"
    with pytest.raises(OciImportError, match="repository name"):
        import_oci(app_v1.dest, store, name="Bad Name")


def test_device_nodes_are_skipped_and_reported(tmp_path, store):
    layer = L.layer_tar([L.directory("dev"), L.Entry("dev/null", tarfile.CHRTYPE, mode=0o666),
                         L.file("hello", "hi"), L.file("cap", "x", 0o755)])
    layout = L.oci_layout(tmp_path / "l", [layer], Cmd=["/hello"])
    imported = import_oci(layout.dest, store)
    assert not (imported.built.rootfs / "dev/null").exists()
    assert any("skipped 1 device node(s) (/dev/null" in note for note in imported.notes)


def test_extended_attributes_are_reported_not_kept(tmp_path, store):
    entry = L.file("bin/ping", "elf", 0o755)
    entry.pax = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}
    layout = L.oci_layout(tmp_path / "l", [L.layer_tar([L.directory("bin"), entry])], Cmd=["/bin/ping"])
    imported = import_oci(layout.dest, store)
    assert any("1 extended attribute" in note for note in imported.notes)
    assert os.listxattr(imported.built.rootfs / "bin/ping") == []


def test_replacing_across_layers(tmp_path, store):
    lower = L.layer_tar([L.directory("a"), L.file("a/f", "lower"), L.symlink("b", "a"),
                         L.directory("c"), L.file("c/x", "x"), L.file("d", "file")])
    upper = L.layer_tar([L.file("a", "now a file"), L.directory("b"), L.file("b/g", "g"),
                         L.whiteout("c"), L.directory("d"), L.hardlink("e", "b/g")])
    layout = L.oci_layout(tmp_path / "l", [lower, upper], Cmd=["/x"])
    root = import_oci(layout.dest, store).built.rootfs
    assert (root / "a").read_text() == "now a file"
    assert (root / "b").is_dir() and not (root / "b").is_symlink()
    assert not (root / "c").exists() and (root / "d").is_dir()
    assert (root / "e").stat().st_ino == (root / "b/g").stat().st_ino


@pytest.mark.parametrize("markers_first", [True, False])
def test_whiteouts_hide_only_the_lower_layers(tmp_path, store, markers_first):
    """Whiteouts apply to the layers below, wherever they stand in their own layer's tar."""
    lower = L.layer_tar([L.directory("d"), L.file("d/old", "o"), L.directory("d/sub"),
                         L.file("d/sub/old", "o"), L.directory("k"), L.file("k/gone", "g"),
                         L.file("k/kept", "k")])
    markers = [L.opaque("d"), L.whiteout("k/gone")]
    own = [L.file("d/sub/new", "n"), L.file("d/new", "n")]
    layout = L.oci_layout(tmp_path / "l", [lower, L.layer_tar(markers + own if markers_first
                                                              else own + markers)], Cmd=["/x"])
    root = import_oci(layout.dest, store).built.rootfs
    assert sorted(os.listdir(root / "d")) == ["new", "sub"]
    assert sorted(os.listdir(root / "d/sub")) == ["new"]
    assert sorted(os.listdir(root / "k")) == ["kept"]


# --- refusals -------------------------------------------------------------------------------

@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the store that a careless unpacker would write into."""
    target = tmp_path / "outside"
    target.mkdir()
    return target


def refused(source, store: Path, outside: Path, match: str) -> str:
    with pytest.raises(OciImportError, match=match) as caught:
        import_oci(source, store)
    # no partial image, no temporary directory; nothing written anywhere else
    leftovers = [str(p.relative_to(store)) for p in store.rglob("*")] if store.exists() else []
    assert leftovers in ([], ["oci"]), leftovers
    assert list(outside.iterdir()) == []
    return str(caught.value)


def test_refuses_a_missing_blob(tmp_path, store, outside):
    layer = L.layer_tar([L.file("x", "x")])
    layout = L.oci_layout(tmp_path / "l", [layer], Cmd=["/x"])
    manifest = json.loads(layout.blob_path(layout.manifests[0]).read_text())
    layout.blob_path(manifest["layers"][0]).unlink()
    message = refused(layout.dest, store, outside, r"layer 1 \(blobs/sha256/[0-9a-f]{64}\) is missing")
    assert "from the layout" in message


def test_refuses_a_bad_digest(tmp_path, store, outside):
    layout = L.oci_layout(tmp_path / "l", [L.layer_tar([L.file("x", "x" * 100)])], Cmd=["/x"],
                          compression="none")
    manifest = json.loads(layout.blob_path(layout.manifests[0]).read_text())
    blob = layout.blob_path(manifest["layers"][0])
    data = bytearray(blob.read_bytes())
    data[600] ^= 1  # same size, one bit changed in the file's contents
    blob.write_bytes(bytes(data))
    refused(layout.dest, store, outside, "layer 1 .* has the digest sha256:.*, not sha256:.*tampered")


def test_refuses_a_wrong_size(tmp_path, store, outside):
    layout = L.oci_layout(tmp_path / "l", [L.layer_tar([L.file("x", "x")])], Cmd=["/x"])
    manifest = json.loads(layout.blob_path(layout.manifests[0]).read_text())
    with open(layout.blob_path(manifest["layers"][0]), "ab") as f:
        f.write(b"\0")
    refused(layout.dest, store, outside, r"layer 1 .* is \d+ bytes, the manifest says \d+")


def test_refuses_a_tampered_manifest(tmp_path, store, outside):
    layout = L.oci_layout(tmp_path / "l", [L.layer_tar([L.file("x", "x")])], Cmd=["/x"])
    path = layout.blob_path(layout.manifests[0])
    path.write_text(path.read_text().replace('"schemaVersion": 2', '"schemaVersion":  2'))
    refused(layout.dest, store, outside, "the manifest .* is \\d+ bytes, the manifest says")


@pytest.mark.parametrize(("name", "match"), [
    ("../escape", r"climbs out with '\.\.' \(path traversal\)"),
    ("a/../../escape", r"climbs out with '\.\.' \(path traversal\)"),
    ("/escape", r"has an absolute path \(path traversal\)"),
])
def test_refuses_path_traversal(tmp_path, store, outside, name, match):
    layer = L.layer_tar([L.file("ok", "fine"), L.file(name, "pwned")])
    layout = L.oci_layout(tmp_path / "l", [layer], Cmd=["/ok"])
    refused(layout.dest, store, outside, match)
    assert not (store / "escape").exists() and not (store.parent / "escape").exists()


def test_refuses_a_relative_symlink_that_climbs_out(tmp_path, store, outside):
    layer = L.layer_tar([L.directory("etc"), L.symlink("etc/evil", "../../../../" + str(outside))])
    layout = L.oci_layout(tmp_path / "l", [layer], Cmd=["/x"])
    refused(layout.dest, store, outside, r"symbolic link /etc/evil -> .* points out of the image")


@pytest.mark.parametrize("split", [False, True])
def test_refuses_writing_through_an_absolute_symlink(tmp_path, store, outside, split):
    """The classic escape: a link to a host directory, then a file "inside" it (in the same
    layer or the next). Absolute links are kept, but nothing is ever written through one."""
    entries = [L.symlink("evil", str(outside)), L.file("evil/pwned", "pwned")]
    layers = [L.layer_tar(entries[:1]), L.layer_tar(entries[1:])] if split else [L.layer_tar(entries)]
    layout = L.oci_layout(tmp_path / "l", layers, Cmd=["/x"])
    refused(layout.dest, store, outside, r"/evil is a symbolic link .* nothing is written through a link")


def test_refuses_a_whiteout_through_a_symlink(tmp_path, store, outside):
    (outside / "keep").write_text("host file")
    layers = [L.layer_tar([L.symlink("evil", str(outside))]), L.layer_tar([L.whiteout("evil/keep")])]
    layout = L.oci_layout(tmp_path / "l", layers, Cmd=["/x"])
    with pytest.raises(OciImportError, match="/evil is a symbolic link"):
        import_oci(layout.dest, store)
    assert (outside / "keep").read_text() == "host file"


@pytest.mark.parametrize(("target", "match"), [
    ("../../etc/passwd", "points out of the image"),
    ("/etc/passwd", "has an absolute target"),
    ("missing", "no such file in the image"),
])
def test_refuses_hard_links_out_of_the_image(tmp_path, store, outside, target, match):
    layer = L.layer_tar([L.file("f", "x"), L.hardlink("link", target)])
    layout = L.oci_layout(tmp_path / "l", [layer], Cmd=["/f"])
    refused(layout.dest, store, outside, rf"hard link /link -> .*{match}")


def test_refuses_a_hard_link_through_a_symlink(tmp_path, store, outside):
    (outside / "secret").write_text("host secret")
    layer = L.layer_tar([L.symlink("evil", str(outside)), L.hardlink("stolen", "evil/secret")])
    layout = L.oci_layout(tmp_path / "l", [layer], Cmd=["/x"])
    with pytest.raises(OciImportError, match="/evil is a symbolic link"):
        import_oci(layout.dest, store)
    assert (outside / "secret").stat().st_nlink == 1


def test_refuses_zstd_layers(tmp_path, store, outside):
    layout = L.Layout(tmp_path / "l")
    layer = L.layer_tar([L.file("x", "x")])
    layout.add_image([layer], L.image_config([layer], Cmd=["/x"]), compression="none",
                     layer_media=L.OCI_LAYER + "+zstd", name="app:v1")
    refused(layout.dest, store, outside, "layer 1 is zstd-compressed.*gzip")


def test_refuses_an_unknown_media_type(tmp_path, store, outside):
    layout = L.Layout(tmp_path / "l")
    layer = L.layer_tar([L.file("x", "x")])
    layout.add_image([layer], L.image_config([layer], Cmd=["/x"]), compression="none",
                     layer_media="application/vnd.example.squashfs", name="app:v1")
    refused(layout.dest, store, outside, "unsupported media type 'application/vnd.example.squashfs'")


def test_refuses_a_config_that_is_not_json(tmp_path, store, outside):
    layout = L.Layout(tmp_path / "l")
    layer = layout.blob(gzip.compress(L.layer_tar([L.file("x", "x")])), L.OCI_LAYER + "+gzip")
    manifest = {"schemaVersion": 2, "mediaType": L.OCI_MANIFEST,
                "config": layout.blob(b"{not json", L.OCI_CONFIG), "layers": [layer]}
    layout.manifests.append({**layout.blob(json.dumps(manifest).encode(), L.OCI_MANIFEST),
                             "annotations": {"io.containerd.image.name": "app:v1"}})
    layout.write_index()
    refused(layout.dest, store, outside, "the config is not JSON")


def test_refuses_an_index_that_is_not_json(tmp_path, store, outside):
    layout = L.oci_layout(tmp_path / "l", [L.layer_tar([L.file("x", "x")])], Cmd=["/x"])
    (layout.dest / "index.json").write_text("<html>")
    refused(layout.dest, store, outside, "index.json is not JSON")


def test_refuses_layers_that_do_not_match_the_configs_diff_ids(tmp_path, store, outside):
    layer = L.layer_tar([L.file("x", "x")])
    config = L.image_config([L.layer_tar([L.file("x", "other")])], Cmd=["/x"])
    layout = L.Layout(tmp_path / "l")
    layout.add_image([layer], config, name="app:v1")  # verified blobs, wrong uncompressed digest
    refused(layout.dest, store, outside, r"layer 1 \(uncompressed\) .* has the digest")


def test_refuses_gzip_that_is_not(tmp_path, store, outside):
    layout = L.Layout(tmp_path / "l")
    layer = L.layer_tar([L.file("x", "x")])
    layout.add_image([layer], L.image_config([layer], Cmd=["/x"]), compression="none",
                     layer_media=L.OCI_LAYER + "+gzip", name="app:v1")
    refused(layout.dest, store, outside, "layer 1 is not valid gzip data")


def test_refuses_owners_a_container_cannot_map(tmp_path, store, outside):
    layer = L.layer_tar([L.file("x", "x", uid=70000)])
    layout = L.oci_layout(tmp_path / "l", [layer], Cmd=["/x"])
    refused(layout.dest, store, outside, r"/x belongs to 70000:0, outside the 0-65535 ids")


def test_refuses_an_unknown_user_after_unpacking_without_a_trace(tmp_path, store, outside):
    layer = L.layer_tar([L.directory("etc"), L.file("etc/passwd", "root:x:0:0::/root:/bin/sh\n")])
    layout = L.oci_layout(tmp_path / "l", [layer], Cmd=["/x"], User="www-data")
    refused(layout.dest, store, outside, "user 'www-data' is not in its /etc/passwd")


def test_refuses_another_architecture(tmp_path, store, outside):
    layer = L.layer_tar([L.file("x", "x")])
    config = {**L.image_config([layer], Cmd=["/x"]), "architecture": "arm64"}
    layout = L.Layout(tmp_path / "l")
    layout.add_image([layer], config, name="app:v1")
    refused(layout.dest, store, outside, "the image is for linux/arm64; Berth's hosts run linux/amd64")


@pytest.mark.parametrize(("run", "match"), [
    ({"Volumes": {"/proc/x": {}}}, "volume /proc/x is below proc"),
    ({"Volumes": {"relative": {}}}, "volume 'relative' is not an absolute path"),
    ({"Entrypoint": "/bin/sh -c x"}, "Entrypoint must be a list of strings"),
    ({"Env": ["NOEQUALS"]}, "Env entry 'NOEQUALS' is not NAME=value"),
    ({"StopSignal": "SIGNOPE"}, "StopSignal 'SIGNOPE' is not a signal"),
    ({"ExposedPorts": {"http": {}}}, "exposed port 'http'"),
])
def test_refuses_a_bad_runtime_config(tmp_path, store, outside, run, match):
    layout = L.oci_layout(tmp_path / "l", [L.layer_tar([L.file("x", "x")])], **run)
    refused(layout.dest, store, outside, match)


def test_refuses_what_is_not_an_image(tmp_path, store, outside):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x89PNG not a tar at all" * 40)
    refused(junk, store, outside, "not a tar archive")
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(empty, store, outside, "neither an OCI image layout .* nor a docker save archive")


def test_refuses_a_symlinked_blob_in_a_layout(tmp_path, store, outside):
    layout = L.oci_layout(tmp_path / "l", [L.layer_tar([L.file("x", "x")])], Cmd=["/x"])
    manifest = json.loads(layout.blob_path(layout.manifests[0]).read_text())
    blob = layout.blob_path(manifest["layers"][0])
    (outside.parent / "elsewhere").write_bytes(blob.read_bytes())
    blob.unlink()
    blob.symlink_to(outside.parent / "elsewhere")
    refused(layout.dest, store, outside, "is a symbolic link")


def test_refuses_a_tampered_docker_layer(busybox_image, tmp_path, store, outside):
    layers = [L.layer_tar([L.file("x", "x")])]
    archive = L.docker_archive(tmp_path / "save.tar", layers, tags=["app:v1"], Cmd=["/x"])
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    layer_name = next(n for n in members if n.endswith("layer.tar"))
    members[layer_name] = L.layer_tar([L.file("x", "y")])
    with tarfile.open(archive, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    refused(archive, store, outside, "layer 1 .* has the digest sha256:.*, not sha256:")
