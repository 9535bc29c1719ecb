"""A full disk refused in one line (vfu_nb.diskspace): the file, the cause with the free bytes, the way out, and no
``.tmp`` left behind; for training the last good checkpoint and --resume, for the image cache a refusal before it
starts, with both sizes.

The disk is a small tmpfs mounted for the test where that works (root with mount rights); elsewhere (or with
VFU_NB_NO_TMPFS=1) the writes under the test's folder raise an injected OSError(ENOSPC) once the test "fills" it.
"""

import errno
import json
import os
import subprocess

import pytest
import torch

from vfu_nb import diskspace
from vfu_nb.diskspace import DiskFullError


class SmallDisk:
    """A folder on a small file system that the test can fill up and free again."""

    def __init__(self, path, mounted: bool, monkeypatch):
        self.path, self.mounted, self.monkeypatch = path, mounted, monkeypatch
        self.filler = path / "filler"
        self.full = False

    def fill(self, leave: int = 0) -> None:
        """Leave about ``leave`` bytes free (a tmpfs) or make every later write under the folder fail."""
        if self.mounted:
            with open(self.filler, "ab") as f:
                chunk = b"\0" * 65536
                while diskspace.free_bytes(self.path) > leave + len(chunk):
                    f.write(chunk)
                    f.flush()
                try:
                    while diskspace.free_bytes(self.path) > leave:
                        f.write(b"\0" * 4096)
                        f.flush()
                except OSError:
                    pass
        self.full = True

    def release(self) -> None:
        self.filler.unlink(missing_ok=True)
        self.full = False


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    path = tmp_path / "disk"
    path.mkdir()
    mounted = os.environ.get("VFU_NB_NO_TMPFS") != "1" and os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(path)],
                                                   capture_output=True).returncode == 0
    disk = SmallDisk(path, mounted, monkeypatch)
    if not mounted:                           # inject ENOSPC into the project's writes under the folder
        write = diskspace._Recording.write

        def failing(self, data):
            if disk.full and str(getattr(self.f, "name", "")).startswith(str(path)):
                self.error = OSError(errno.ENOSPC, "No space left on device")
                raise self.error
            return write(self, data)

        monkeypatch.setattr(diskspace._Recording, "write", failing)
    yield disk
    if mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def leftovers(folder) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name or "partial" in p.name)


def test_a_full_disk_keeps_the_old_file_and_leaves_no_tmp(small_disk):
    path = small_disk.path / "metrics.json"
    diskspace.atomic_write(path, '{"old": 1}')
    small_disk.fill()
    with pytest.raises(DiskFullError) as err:
        diskspace.atomic_write(path, "x" * 200_000, way_out="free space, then run it again")
    free = err.value.free
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
    assert str(err.value) == (f"{path}: not written: no space left on the device ({diskspace.human(free)} free, "
                              f"about 200.0 kB needed); free space, then run it again")
    assert path.read_text() == '{"old": 1}' and leftovers(small_disk.path) == []
    with pytest.raises(DiskFullError, match=r"last\.pt: not written: no space left on the device \(.* free, about "
                                            r"4\.0 MB needed\)$"):
        from vfu_nb.training.rundir import save_checkpoint
        save_checkpoint(small_disk.path / "last.pt", {"model": {"w": torch.zeros(1_000_000)}, "epoch": 1})
    assert leftovers(small_disk.path) == []


def test_human_sizes():
    assert [diskspace.human(n) for n in (0, 999, 1000, 1_234_567, 31e9)] == ["0 bytes", "999 bytes", "1.0 kB",
                                                                          "1.2 MB", "31.0 GB"]


@pytest.mark.slow
def test_a_full_disk_stops_training_in_one_line_and_resume_finishes_the_run(synth_root, small_disk, tmp_path, capsys):
    """The disk fills during epoch 2: the checkpoint of epoch 2 is refused in one line naming the file, the free
    bytes, the last good checkpoint (epoch 1) and --resume; nothing half-written stays; once there is room,
    --resume finishes the run."""
    from vfu_nb.training.cli import main
    from vfu_nb.training.rundir import load_checkpoint

    run_dir = small_disk.path / "run"
    args = ["--model", "cat", "--data-root", str(synth_root), "--run-dir", str(run_dir), "--epochs", "2",
            "--image-size", "32", "--width", "0.125", "--max-items", "32", "--batch-size", "8", "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]

    def on_step(epoch, batch, step):
        if epoch == 2 and batch == 1:
            small_disk.fill()

    with pytest.raises(SystemExit) as stop:
        main(args, on_step=on_step)
    err = capsys.readouterr().err
    print(err)
    assert stop.value.code == 2 and err.count("\n") == 1
    last = run_dir / "checkpoints" / "last.pt"
    head = f"python -m vfu_nb.training: error: {last}: not written: no space left on the device ("
    assert err.startswith(head), err
    assert err.endswith(f" needed); the last good checkpoint is {last} (epoch 1); free space, then continue with "
                        f"--resume (the same --run-dir)\n"), err
    assert leftovers(run_dir) == [] and load_checkpoint(last)["epoch"] == 1
    small_disk.release()
    metrics = main([*args, "--resume"])
    assert metrics["epochs_run"] == 2 and json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 2


def test_the_cache_build_compares_its_size_with_the_free_space_first(synth_root, small_disk):
    from vfu_nb.data.dataset import DeepFashionC

    if not small_disk.mounted:
        pytest.skip("needs a real small file system (mount a tmpfs as root)")
    small_disk.fill(leave=300_000)
    free = diskspace.free_bytes(small_disk.path)
    with pytest.raises(DiskFullError) as err:             # 140 train images x 64 x 64 x 3 = 1.7 MB
        DeepFashionC(synth_root, "train", 64, cache=True, cache_dir=small_disk.path / "cache", progress=False)
    data = small_disk.path / "cache" / "train-64-stretch-140.u8"
    assert str(err.value) == (
        f"the image cache {data} (140 images of 64 px) needs 1.7 MB and {data.parent} has {diskspace.human(free)} "
        f"free; not started; free space under {data.parent}, or put the cache on a larger disk with --cache-dir DIR "
        f"(cache_dir=)")
    assert err.value.needed > 140 * 64 * 64 * 3 and err.value.free == free
    assert sorted(p.name for p in data.parent.iterdir()) == ["train-64-stretch-140.lock"]   # nothing else written
    small_disk.release()
    ds = DeepFashionC(synth_root, "train", 64, cache=True, cache_dir=small_disk.path / "cache", progress=False)
    assert len(ds) == 140 and leftovers(small_disk.path) == []


def test_a_cache_that_cannot_be_allocated_is_refused_and_removed(synth_root, small_disk, monkeypatch):
    """Free space that the check saw but the allocation did not get (another writer): ENOSPC from the
    preallocation, one line, no partial file."""
    from vfu_nb.data.dataset import DeepFashionC

    monkeypatch.setattr(diskspace, "check_room", lambda *a, **k: None)

    def no_room(f, nbytes):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(diskspace, "reserve", no_room)
    with pytest.raises(DiskFullError, match=r"train-32-stretch-140\.u8: not written: no space left on the device "
                                            r"\(.* free, about 430\.1 kB needed\); free space under "):
        DeepFashionC(synth_root, "train", 32, cache=True, cache_dir=small_disk.path / "c", progress=False)
    assert leftovers(small_disk.path) == []


def test_an_export_on_a_full_disk_is_one_line_and_leaves_the_export_unfinished(small_disk, tmp_path):
    from vfu_nb.study import store

    dest = small_disk.path / "runs" / "k"
    dest.mkdir(parents=True)
    small_disk.fill()
    with pytest.raises(DiskFullError) as err:
        store.write_npz(dest / "predictions.npz", attribute_logits=torch.randn(3000, 51).numpy())
    assert str(err.value).startswith(f"{dest / 'predictions.npz'}: not written: no space left on the device (")
    assert str(err.value).endswith("; free space, then run the same command again (finished runs are only "
                                   "exported again)")
    assert list(dest.iterdir()) == []


def test_the_error_survives_a_trip_between_processes():
    import pickle

    error = DiskFullError("/x/last.pt", 0, 4096, "free space").with_way_out("resume")
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) == "/x/last.pt: not written: no space left on the device (0 bytes free, about " \
                                       "4.1 kB needed); resume"
    assert (again.errno, again.free, again.needed) == (errno.ENOSPC, 0, 4096)
