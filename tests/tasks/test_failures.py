"""Issue 29, findings 5 and 7: what git and DVC print when they fail becomes one line naming the cause (a full or
read-only remote, an unknown revision, an unreachable repository), and only a cause that may pass is retried."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.publishing.vcs import PublishError, failure_detail, is_transient
from synthaug.tasks.core.sources.readers import fetch_dvc

# What `dvc push` printed on 2026-12-07 to a full tmpfs remote and to a read-only one (DVC 3.67).
FULL = """ERROR: failed to transfer 'fc08d72ecf5ab63ed310f26108883ad9' - [Errno 28] No space left on device: \
'/repo/.dvc/cache/files/md5/fc/08d72ecf5ab63ed310f26108883ad9' -> '/full/files/md5/fc/.w9P1AX-id8ghCpfbiOYXbg.tmp'
ERROR: failed to push data to the cloud - 2 files failed to upload

Having any troubles? Hit us up at https://dvc.org/support, we are always happy to help!
"""
READ_ONLY = """ERROR: unexpected error - [Errno 30] Read-only file system: '/ro/store'

Having any troubles? Hit us up at https://dvc.org/support, we are always happy to help!
"""


def test_a_full_or_read_only_remote_is_named_with_its_fix() -> None:
    """A full remote said nothing of ENOSPC (`--quiet` hid DVC's error lines: only "exit status 1")."""
    full = failure_detail(FULL, 1)
    assert full.startswith("ERROR: failed to transfer") and "[Errno 28] No space left on device" in full
    assert "the disk or remote is full" in full and "Having any troubles" not in full
    read_only = failure_detail(READ_ONLY, 255)
    assert "[Errno 30] Read-only file system" in read_only and "point publish.remote" in read_only
    assert failure_detail("", 1) == "exit status 1"
    assert not is_transient(full) and not is_transient(read_only)
    assert is_transient("fatal: unable to access 'https://h/r.git/': Connection timed out after 300001 ms")


def test_publish_errors_carry_whether_a_retry_may_help() -> None:
    from synthaug.flows.augment import transient

    def state(error: BaseException):
        class Failed:
            def result(self, raise_on_failure: bool = False) -> BaseException:
                return error
        return Failed()

    assert transient(None, None, state(RuntimeError("a bug, or a crash")))
    assert not transient(None, None, state(UserError("bad input")))
    assert not transient(None, None, state(PublishError("dvc push failed: [Errno 28] No space left on device")))
    assert transient(None, None, state(PublishError("git push failed: Connection refused", transient=True)))


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_an_unreachable_repository_or_unknown_revision_names_the_cause(tmp_path: Path) -> None:
    """An unreachable data.repo said only `SCM error`; an unknown revision raised scmrepo's own exception."""
    with pytest.raises(UserError) as caught:
        fetch_dvc(str(tmp_path / "no-such-repo"), None, "data", tmp_path / "cache")
    assert "No git repository was found" in str(caught.value) and "SCM error" not in str(caught.value)

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "data").mkdir()
    (repo / "data" / "x.txt").write_text("x")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    with pytest.raises(UserError) as caught:
        fetch_dvc(str(repo), "no-such-tag", "data", tmp_path / "cache")
    assert "unknown Git revision 'no-such-tag'" in str(caught.value) and "\n" not in str(caught.value)
