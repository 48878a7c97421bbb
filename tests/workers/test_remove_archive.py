"""What the host task ``berth.host.remove_archive`` does for the panel (retention, or a backup
its owner deleted): only a Berth archive's path is touched, with its .sha256 beside it."""

from __future__ import annotations

import pytest

from workers.backups import removable_archive, remove_archive


@pytest.fixture
def archive(tmp_path):
    folder = tmp_path / "backups" / ("ab" * 16)
    folder.mkdir(parents=True)
    path = folder / "backup-7-20260101-000000.tar.zst"
    path.write_bytes(b"x")
    path.with_name(path.name + ".sha256").write_text("x  y\n")
    return path


def test_removes_the_archive_its_checksum_and_the_emptied_folder(archive):
    assert removable_archive(str(archive)) == archive
    remove_archive(str(archive))
    assert not archive.exists() and not archive.with_name(archive.name + ".sha256").exists()
    assert not archive.parent.exists()
    remove_archive(str(archive))  # again: nothing left to do, no error


@pytest.mark.parametrize("bad", [
    "relative/{uuid}/backup-7.tar.zst", "{root}/{uuid}/../{uuid}/backup-7-20260101-000000.tar.zst",
    "{root}/{uuid}/backup-7.tar", "{root}/not-a-uuid/backup-7-20260101-000000.tar.zst",
    "{root}/{uuid}/Bad Name.tar.zst", None, 5,
])
def test_anything_else_is_left_alone(archive, bad):
    if isinstance(bad, str):
        bad = bad.format(root=archive.parent.parent, uuid=archive.parent.name)
    assert removable_archive(bad) is None
