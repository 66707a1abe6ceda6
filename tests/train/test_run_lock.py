"""One run per output folder (issue 22 item 5): a lock held for the run's life and dropped when
its process dies, nothing written into a folder before it is known to be this run's, and under
torchrun only rank 0 decides (a refused rerun is one line, with no rank-1 gloo traceback).

Each test failed before the lock (noted per test)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf import cli
from rlhf.train.run import RunDirError, acquire_run_lock, prepare_output_dir, release_run_lock

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _holder(folder: Path) -> subprocess.Popen:
    """Another process that takes the folder's lock (prepare_output_dir, as a run does) and waits."""
    code = ("import sys, time; from rlhf.train.run import prepare_output_dir; "
            "prepare_output_dir(sys.argv[1], 'auto'); print('locked', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code, str(folder)], env=_env(), stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    return p


def _sft_args(tiny_llama, data, out, *extra) -> list[str]:
    return [f"output_dir={out}", f"model.name_or_path={tiny_llama}", f"data.train={data['train']}",
            "data.chat_template=none", "data.max_length=64", "data.max_samples=40", "train.batch_size=8",
            "train.max_steps=2", "train.progress=false", "train.save_model_in_checkpoints=false", *extra]


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [x for x in err.splitlines() if x.startswith("rlhf ")]


def test_a_second_run_into_a_locked_folder_is_refused_and_the_lock_dies_with_its_holder(
        tiny_llama, instruction_data, tmp_path, capsys):
    """Before: nothing stopped the second run (a duplicated metrics step, a misleading
    `trainer_state.json: No such file`, a .tmp checkpoint left in a finished run)."""
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        rc = cli.main(["sft", *_sft_args(tiny_llama, instruction_data, out)])
        err = _error_lines(capsys)
        assert rc == 1 and len(err) == 1, err
        assert f"{out} is in use by another run (pid {holder.pid} holds its lock)" in err[0], err
        assert list(out.iterdir()) == []  # nothing written by the refused run
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up: the kernel drops the lock
        holder.wait()
    assert prepare_output_dir(out, "auto") is None  # not stale: taken at once
    release_run_lock(out)


def test_the_lock_is_reentrant_in_one_process_and_released(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    acquire_run_lock(d)
    acquire_run_lock(d)  # the same process again (a resumed run in a notebook): fine
    release_run_lock(d)
    holder = _holder(d)  # another process can take it now
    try:
        with pytest.raises(RunDirError, match="in use by another run"):
            acquire_run_lock(d)
    finally:
        holder.kill()
        holder.wait()


def test_an_unrelated_folder_is_refused_before_anything_is_deleted_or_written(
        tiny_llama, instruction_data, tmp_path, capsys):
    """Before: a file with a debris-like name was deleted and config.yaml written, then refused."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "draft.tmp-99999999").write_text("mine too")  # the pattern of a killed run's temp file
    (out / "config.yaml").write_text("learning: yes\n")  # someone else's config
    before = {p.name: p.read_text() for p in out.iterdir()}
    rc = cli.main(["sft", *_sft_args(tiny_llama, instruction_data, out)])
    err = _error_lines(capsys)
    assert rc == 1 and len(err) == 1, err
    assert f"{out} is not empty and holds no rlhf run" in err[0] and "nothing was deleted" in err[0], err
    assert {p.name: p.read_text() for p in out.iterdir()} == before


@pytest.mark.slow
def test_torchrun_refusal_is_one_line_from_rank_0(tiny_llama, instruction_data, tmp_path):
    """torchrun x 2 into a finished run's folder: rank 0 refuses, rank 1 is told and exits
    quietly. Before: rank 1 waited at a barrier for rank 0, which had exited, and added a gloo
    traceback ("Connection closed by peer") to the one line."""
    out = tmp_path / "done"
    out.mkdir()
    (out / "config.yaml").write_text(f"output_dir: {out}\n")
    (out / "summary.json").write_text("{}")
    t = time.time()
    p = subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2",
                        "-m", "rlhf.cli", "sft", *_sft_args(tiny_llama, instruction_data, out)],
                       env=_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert p.returncode != 0
    lines = [x for x in p.stderr.splitlines() if x.startswith("rlhf sft")]
    assert len(lines) == 1 and "already holds a finished run" in lines[0], p.stderr[-3000:]
    assert "gloo" not in p.stderr.lower() and "Connection closed" not in p.stderr, p.stderr[-3000:]
    assert time.time() - t < 300


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(x) for x in text]
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie waiting for a reaper is dead


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_a_killed_torchrun(tiny_llama, instruction_data, tmp_path):
    """Issue 22 item 6: `kill -9` of torchrun x 2 mid-run. Before: both workers ran on as orphans,
    finished the run alone and wrote final/ (a rerun raced them). Now they die within seconds."""
    out = tmp_path / "run"
    p = subprocess.Popen([str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node",
                          "2", "-m", "rlhf.cli", "sft",
                          *_sft_args(tiny_llama, instruction_data, out, "train.max_steps=100000", "train.batch_size=2",
                                     "data.max_samples=1000")],
                         env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    workers: list[int] = []
    try:
        deadline = time.time() + 300
        while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip()):
            assert p.poll() is None and time.time() < deadline, "the run ended or never logged a step"
            time.sleep(0.5)
        workers = _children(p.pid)
        assert len(workers) == 2, workers
        p.send_signal(signal.SIGKILL)
        p.wait()
        deadline = time.time() + 30
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "the workers outlived torchrun"
        assert not (out / "final").exists() and not (out / "summary.json").exists()
    finally:
        if p.poll() is None:
            workers += _children(p.pid)
            p.kill()
        for w in workers:  # orphans of a failed check: end them here
            if _alive(w):
                os.kill(w, signal.SIGKILL)


def test_a_pipeline_into_an_unrelated_folder_is_refused_before_anything_is_deleted(tmp_path):
    """A pipeline folder must be new, empty, a pipeline's (pipeline.json) or hold only its stage
    folders. Before: remove_debris deleted a file with a temporary-looking name there first."""
    from rlhf.pipeline import run_pipeline

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "draft.tmp-99999999").write_text("mine too")
    spec = {"output_dir": str(out), "stages": [{"name": "d", "type": "call", "args": {"function": "x:y"}}]}
    with pytest.raises(RunDirError, match="is not empty and holds no rlhf pipeline"):
        run_pipeline(spec)
    assert sorted(p.name for p in out.iterdir()) == ["draft.tmp-99999999", "notes.txt"]


def test_a_failed_in_process_run_frees_its_folder(tiny_llama, instruction_data, tmp_path, capsys):
    """A command run in-process (a notebook, tests/cli_batch.py) that fails after taking the lock
    releases it when the command ends: another process may then use the folder. Before the
    release, the catalogue's parallel workers were refused 'in use by another run'."""
    out = tmp_path / "run"
    rc = cli.main(["sft", *_sft_args(tiny_llama, instruction_data, out, "train.lr=1e12")])
    assert rc == 1 and "optimizer updates were skipped" in capsys.readouterr().err
    holder = _holder(out)  # another process takes the lock (fails, reading '' not 'locked', if still held)
    holder.kill()
    holder.wait()


def test_a_pipeline_run_in_process_frees_its_folder_when_it_returns(tmp_path):
    """run_pipeline (the Python API, rlhf quickstart's main) releases the folder's lock when it
    returns, so that another process may resume or extend it. Before, the lock was kept until the
    calling process ended: bench/demo_seeds.py resuming a run made in-process was refused."""
    from rlhf.pipeline import run_pipeline

    out = tmp_path / "pipe"
    spec = {"output_dir": str(out), "stages": [{"name": "data", "type": "call", "args": {
        "function": "rlhf.tools.quickstart:write_data", "seed": 0, "n_sft": 8, "n_prompts": 8, "n_eval": 4}}]}
    assert run_pipeline(spec, log=lambda _: None)["stages"][0]["status"] == "done"
    code = "import sys; from rlhf.train.run import acquire_run_lock; print(acquire_run_lock(sys.argv[1]))"
    p = subprocess.run([sys.executable, "-c", code, str(out)], env=_env(), capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "True", p.stderr[-2000:]
    acquire_run_lock(out)  # a caller holding the lock keeps it: the pipeline releases only its own
    run_pipeline(spec, log=lambda _: None)
    p = subprocess.run([sys.executable, "-c", code, str(out)], env=_env(), capture_output=True, text=True)
    assert p.returncode != 0 and "in use by another run" in p.stderr, p.stderr[-2000:]
    release_run_lock(out)
