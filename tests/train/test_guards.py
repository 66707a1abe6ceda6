"""Never publish garbage (issue 15): non-finite guards, the resume fingerprint, path names, one-line
OS errors, crash debris, fsync before publishing renames.

Each test here failed against the code before these guards (noted per test)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from rlhf import cli
from rlhf.config import load_config
from rlhf.pipeline import PipelineError, load_pipeline
from rlhf.train import run as run_mod
from rlhf.train.config import TrainConfig
from rlhf.train.guards import NonFiniteError, check_path_component, config_changes, is_safe_key
from rlhf.train.run import RunDirError, atomic_dir, list_checkpoints, remove_debris, write_json_atomic
from rlhf.train.trainer import Trainer

# --------------------------------------------------------------------------- a toy trainer


@dataclass(frozen=True)
class _RunCfg:
    output_dir: str = ""
    train: TrainConfig = field(default_factory=TrainConfig)


def _toy(tmp_path: Path, **train) -> tuple[Trainer, torch.nn.Module, list[dict]]:
    """A Trainer over a 2 -> 1 linear model (weight (1, 2)), 12 examples, batch 2."""
    cfg = TrainConfig(**{"batch_size": 2, "max_steps": 6, "progress": False, "lr": 0.1,
                         "save_model_in_checkpoints": False, "save_total_limit": None, **train})
    out = tmp_path / "toy"
    tr = Trainer(cfg, out, _RunCfg(str(out), cfg), stage="toy")
    torch.manual_seed(0)
    model = tr.setup(torch.nn.Linear(2, 1, bias=False), num_examples=12)
    data = [{"x": torch.tensor([float(i), 1.0])} for i in range(12)]
    return tr, model, data


def _collate(xs: list[dict]) -> dict[str, torch.Tensor]:
    return {"x": torch.stack([e["x"] for e in xs])}  # (b, 2)


def _units(mb: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.tensor(float(mb["x"].shape[0]))


def _loss(fault: str | None):
    def fn(model, mb, denom):
        y = model(mb["x"])  # (b, 1)
        loss = (y ** 2).sum() / denom
        if fault == "loss":
            loss = loss * float("nan")
        elif fault == "grad":  # finite value (0), non-finite gradient: d sqrt(u)/du at u = 0
            w = model.weight
            loss = loss + torch.sqrt(((w - w.detach()) ** 2).sum())
        return loss, {}
    return fn


def test_a_non_finite_step_is_skipped_and_leaves_weights_and_adamw_untouched(tmp_path):
    """Step 2's loss is NaN, step 3's gradient is NaN (its loss is finite): neither moves a
    weight nor AdamW's moments (before the guard both made every weight NaN); the schedule
    advances; step 4 trains again. Failed before the fix: weights NaN after step 2."""
    tr, model, data = _toy(tmp_path)
    faults = {2: "loss", 3: "grad"}
    snaps = {}
    for step, micro in tr.steps(data, _collate):
        m = tr.optimize(micro, _units, _loss(faults.get(step)))
        snaps[step] = (model.weight.detach().clone(), {k: v.clone() for k, v in
                                                         tr.optimizer.state[model.weight].items()},
                       tr.scheduler.last_epoch, m)
        if step == 4:
            break
    w1, st1, ep1, m1 = snaps[1]
    assert "skipped" not in m1
    for s in (2, 3):
        w, st, ep, m = snaps[s]
        assert m["skipped"] == 1
        assert torch.equal(w, w1) and all(torch.equal(st[k], st1[k]) for k in st1)
        assert ep == ep1 + (s - 1)  # one schedule step per training step, skipped or not
    assert snaps[4][0].isfinite().all() and not torch.equal(snaps[4][0], w1)
    assert snaps[4][1]["step"] == st1["step"] + 1  # AdamW counted exactly one more real update


def test_consecutive_non_finite_steps_stop_the_run_naming_step_and_quantity(tmp_path):
    """max_skipped_steps=2: steps 2 and 3 are skipped, step 4 stops the run with a message that
    names the step, the quantity and the last good checkpoint. Failed before: no error at all."""
    tr, model, data = _toy(tmp_path, max_skipped_steps=2)
    with pytest.raises(NonFiniteError, match=r"\[toy\] step 4: non-finite loss nan and gradient norm nan; 3 "
                                             r"optimizer updates in a row were skipped "
                                             r"\(train.max_skipped_steps=2\).*checkpoint-1"):
        for step, micro in tr.steps(data, _collate):
            tr.optimize(micro, _units, _loss(None if step == 1 else "loss"))
            if step == 1:
                tr.save_checkpoint(1)
    assert [s for s, _ in list_checkpoints(tmp_path / "toy")] == [1]


def test_a_run_whose_last_updates_were_skipped_publishes_no_final(tmp_path):
    """Issue 22 item 4: the last updates skipped within max_skipped_steps: finish() refuses (one
    line naming the count) and writes neither final/ nor summary.json; the count is kept in the
    checkpoint so that a rerun resuming from it refuses too. Failed before: final/ published."""
    tr, model, data = _toy(tmp_path, max_steps=4, max_skipped_steps=3)
    for step, micro in tr.steps(data, _collate):
        tr.optimize(micro, _units, _loss(None if step < 3 else "loss"))
        tr.maybe_checkpoint(step)
    with pytest.raises(NonFiniteError, match=r"\[toy\] the last 2 of 4 optimizer updates were skipped .* "
                                             r"final/ not written \(the last checkpoint is .*checkpoint-4\)"):
        tr.finish(None, {})
    out = tmp_path / "toy"
    assert not (out / "final").exists() and not (out / "summary.json").exists()
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["skipped_in_a_row"] == 2
    tr2, _, data2 = _toy(tmp_path, max_steps=4, max_skipped_steps=3)  # resumes from checkpoint-4
    assert tr2.start_step == 4 and list(tr2.steps(data2, _collate)) == []
    with pytest.raises(NonFiniteError, match="the last 2 of 4"):
        tr2.finish(None, {})
    # a good last update clears the count: a run that recovered publishes
    tr3, _, data3 = _toy(tmp_path / "ok", max_steps=4)
    for step, micro in tr3.steps(data3, _collate):
        tr3.optimize(micro, _units, _loss("loss" if step == 2 else None))
    assert tr3._skipped_in_a_row == 0


def test_weights_with_nan_are_never_checkpointed(tmp_path):
    """A NaN weight (e.g. an overflow in an update whose gradient was finite) makes
    save_checkpoint raise and write nothing, so the last good checkpoint stays the resume point.
    Failed before: checkpoint-2 was written with the NaN."""
    tr, model, data = _toy(tmp_path)
    tr.save_checkpoint(1)
    with torch.no_grad():
        model.weight[0, 1] = float("inf")
    with pytest.raises(NonFiniteError, match=r"checkpoint-2 not written: tensor weight: 1 of 2 values are not "
                                             r"finite \(first at index \(0, 1\): inf\)"):
        tr.save_checkpoint(2)
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == ["checkpoint-1", "config.yaml", "metrics.jsonl"]


def _error_lines(capsys) -> list[str]:
    """The CLI's own stderr lines (transformers' weight-loading bars also go to stderr)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [x for x in err.splitlines() if x.startswith("rlhf ")]


def _sft_cfg_args(tiny_llama, data, out, *extra) -> list[str]:
    return [f"output_dir={out}", f"model.name_or_path={tiny_llama}", f"data.train={data['train']}",
            "data.chat_template=none", "data.max_length=64", "data.max_samples=40", "train.batch_size=8",
            "train.max_steps=4", "train.progress=false", "train.save_model_in_checkpoints=false", *extra]


def test_a_diverging_sft_run_stops_with_one_line_and_publishes_nothing(tiny_llama, instruction_data, tmp_path,
                                                                        capsys):
    """`rlhf sft` with an absurd learning rate: the weights blow up after step 1, every later loss
    is NaN; the run stops (exit 1) with one line naming the step, final/ and summary.json are
    never written. Before: exit 0 and final/ all NaN."""
    out = tmp_path / "sft"
    rc = cli.main(["sft", *_sft_cfg_args(tiny_llama, instruction_data, out, "train.lr=1e30",
                                         "train.max_grad_norm=null", "train.max_steps=8",
                                         "train.max_skipped_steps=1")])
    err = _error_lines(capsys)
    assert rc == 1
    assert len(err) == 1 and "non-finite loss" in err[0] and "step 3:" in err[0], err
    assert not (out / "final").exists() and not (out / "summary.json").exists()


def test_lr_1e12_does_not_exit_0_with_garbage(tiny_llama, instruction_data, tmp_path, capsys):
    """Issue 22 item 4: `train.lr=1e12 train.max_steps=4` exited 0 publishing weights around 1e12
    (the later updates skipped as non-finite within max_skipped_steps=3). Now exit 1, one line."""
    out = tmp_path / "sft"
    rc = cli.main(["sft", *_sft_cfg_args(tiny_llama, instruction_data, out, "train.lr=1e12")])
    err = _error_lines(capsys)
    assert rc == 1, err
    assert len(err) == 1 and "optimizer updates were skipped" in err[0] and "final/ not written" in err[0], err
    assert not (out / "final").exists() and not (out / "summary.json").exists()


def test_a_nan_reward_model_stops_ppo_naming_the_source_and_row(tiny_llama, tmp_path, capsys):
    """`rlhf ppo` against a reward-model folder whose head outputs NaN: exit 1, one line naming
    the source and the row, no final/. Before: exit 0, summary.json written, final/ all NaN."""
    from rlhf.models.config import ModelConfig
    from rlhf.models.load import load_scalar_model, load_tokenizer, save_model
    mcfg = ModelConfig(name_or_path=str(tiny_llama))
    tok = load_tokenizer(mcfg)
    rm = load_scalar_model(mcfg, tokenizer=tok, for_training=False)
    with torch.no_grad():
        rm.score.weight.fill_(float("nan"))
    save_model(rm, tok, tmp_path / "rm")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Q{i}:"}) + "\n" for i in range(4)))
    out = tmp_path / "ppo"
    rc = cli.main(["ppo", f"model.name_or_path={tiny_llama}", f"data.train={prompts}", f"reward={tmp_path / 'rm'}",
                   f"output_dir={out}", "advantage=grpo", "train.batch_size=2", "sampling.num_samples=2",
                   "sampling.max_new_tokens=3", "train.max_steps=2", "train.progress=false", "num_log_samples=0"])
    err = _error_lines(capsys)
    assert rc == 1
    assert len(err) == 1 and f"reward source model:{tmp_path / 'rm'}: reward of row 0 (of 4) is nan" in err[0], err
    assert not (out / "final").exists() and not (out / "summary.json").exists()


# --------------------------------------------------------------------------- resume fingerprint


def test_config_changes_and_the_declared_safe_keys():
    old = {"train": {"lr": 1e-3, "max_steps": 4, "report_to": []}, "data": {"max_length": 64}, "output_dir": "a"}
    new = {"train": {"lr": 2e-3, "max_steps": 8, "report_to": ["tensorboard"]}, "data": {"max_length": 64},
           "output_dir": "b", "extra": 1}
    assert config_changes(old, new) == [("extra", "<absent>", 1), ("output_dir", "a", "b"),
                                        ("train.lr", 1e-3, 2e-3), ("train.max_steps", 4, 8),
                                        ("train.report_to", [], ["tensorboard"])]
    assert [k for k, _, _ in config_changes(old, new) if not is_safe_key(k)] == ["extra", "train.lr"]
    # A rounds recipe's inner training section matches by suffix; a look-alike does not.
    assert is_safe_key("sft.train.max_steps") and is_safe_key("sft.train.progress")
    assert not is_safe_key("train.max_steps_x") and not is_safe_key("sft.train.lr")


def test_resume_refuses_changed_settings_allows_safe_ones_and_records_the_override(
        tiny_llama, instruction_data, tmp_path, crash_run):
    """Before: a resumed run silently mixed settings (its restored schedule kept the old lr while
    data.max_length changed) and config.yaml claimed the new values for the whole run."""
    from rlhf.recipes.sft import SFTConfig, train

    def cfg(out, *extra):
        return load_config(SFTConfig, None, _sft_cfg_args(tiny_llama, instruction_data, out, "train.save_every=2",
                                                          "train.lr=1e-3", *extra))

    out = tmp_path / "run"
    crash_run(train, cfg(out), step=3)
    saved = (out / "config.yaml").read_bytes()
    with pytest.raises(RunDirError, match=r"settings differ from .*config.yaml: data.max_length: 64 -> 48; "
                                          r"train.lr: 0.001 -> 0.002\. .*train.resume_changed_config=true"):
        train(cfg(out, "train.lr=2e-3", "data.max_length=48"))
    assert (out / "config.yaml").read_bytes() == saved and not (out / "resume_overrides.jsonl").exists()

    # Safe keys: more steps, other logging; resumed, and the change is recorded.
    (out / "final.tmp-999999999").mkdir()  # crash debris of a dead process: removed on resume
    (out / ".metrics.jsonl.tmp-999999999").write_text("torn")
    train(cfg(out, "train.max_steps=5", "train.log_every=2"))
    assert not (out / "final.tmp-999999999").exists() and not (out / ".metrics.jsonl.tmp-999999999").exists()
    rec = [json.loads(x) for x in (out / "resume_overrides.jsonl").read_text().splitlines()]
    assert len(rec) == 1 and rec[0]["override"] is False and rec[0]["resumed_from"].endswith("checkpoint-2")
    assert [(c["key"], c["old"], c["new"], c["safe"]) for c in rec[0]["changes"]] == [
        ("train.log_every", 1, 2, True), ("train.max_steps", 4, 5, True)]

    # The expert override: accepted and recorded with what changed.
    out2 = tmp_path / "run2"
    crash_run(train, cfg(out2), step=3)
    train(cfg(out2, "train.lr=2e-3", "train.resume_changed_config=true"))
    rec = [json.loads(x) for x in (out2 / "resume_overrides.jsonl").read_text().splitlines()]
    assert rec[0]["override"] is True
    assert [(c["key"], c["safe"]) for c in rec[0]["changes"]] == [("train.lr", False),
                                                                   ("train.resume_changed_config", True)]


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize("name", ["../escape", "../..", "/tmp/abs", "a/b", "..", ".", "", "a\\b", "~x"])
def test_pipeline_stage_names_cannot_escape_the_run_folder(tmp_path, name):
    """Before: `name: ../..` or an absolute path made output_dir/<name> point anywhere."""
    spec = {"output_dir": str(tmp_path / "p"), "stages": [{"name": name, "type": "report"}]}
    with pytest.raises(PipelineError, match=r"stages\[1\]: name: the stage name .* cannot be a folder name"):
        load_pipeline(spec)
    assert check_path_component("sft-2_b.v1", "x") == "sft-2_b.v1"


# --------------------------------------------------------------------------- OS errors, debris, outputs


def test_an_unusable_output_folder_is_one_line_naming_the_path(tiny_llama, instruction_data, tmp_path, capsys):
    """output_dir below a regular file (the same path as a read-only or missing mount would
    take): exit 1, one line with the path and the cause. Before: a raw traceback."""
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    rc = cli.main(["sft", *_sft_cfg_args(tiny_llama, instruction_data, out)])
    err = _error_lines(capsys)
    assert rc == 1 and len(err) == 1, err
    assert f"{tmp_path / 'file'}" in err[0] and "Not a directory [ENOTDIR]" in err[0], err


def test_a_full_disk_while_publishing_final_leaves_nothing_half_written(tiny_llama, instruction_data, tmp_path,
                                                                         capsys, monkeypatch):
    """ENOSPC while final/ is flushed (an OSError without a file name, as write() and fsync()
    raise it): exit 1, one line naming final/, no final/, no temporary folder, no summary.json;
    the end checkpoint stays for the rerun. Before: a traceback without the path."""
    real = run_mod.fsync_tree

    def full(path):
        if Path(path).name.startswith("final.tmp-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path)

    monkeypatch.setattr(run_mod, "fsync_tree", full)
    out = tmp_path / "run"
    rc = cli.main(["sft", *_sft_cfg_args(tiny_llama, instruction_data, out)])
    err = _error_lines(capsys)
    assert rc == 1 and len(err) == 1, err
    assert f"{out / 'final'}: No space left on device [ENOSPC]" in err[0], err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-4", "config.yaml", "metrics.jsonl"]


def test_remove_debris_takes_this_runs_temporary_names_of_dead_processes_only(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    debris = [f"final.tmp-{dead}", f".final.tmp-{dead}.tmp-{dead}", f".metrics.jsonl.tmp-{dead}",
              f"final.old-{dead}", "checkpoint-6.tmp", "config.yaml.tmp", f".summary.json.tmp-{os.getpid()}"]
    keep = ["final", "checkpoint-4", "metrics.jsonl", "final.tmp-1", "notes.tmp", "x.tmp-abc"]  # pid 1 lives
    for n in debris + keep:
        (tmp_path / n).mkdir() if "final" in n and "json" not in n else (tmp_path / n).write_text("x")
    assert remove_debris(tmp_path) == sorted(debris)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_generate_refuses_an_existing_output_before_loading_anything(tmp_path, monkeypatch, capsys):
    """Before: the model was loaded and every prompt sampled, then the output refused."""
    import rlhf.models.load as load_mod

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(load_mod, "load_tokenizer", no_load)
    monkeypatch.setattr(load_mod, "load_causal_lm", no_load)
    existing = tmp_path / "out.jsonl"
    existing.write_text("keep\n")
    rc = cli.main(["generate", "--model", str(tmp_path), "--prompt", "hi", "--output", str(existing)])
    assert rc == 1 and "exists; not overwriting it" in capsys.readouterr().err
    assert existing.read_text() == "keep\n"
    rc = cli.main(["generate", "--model", str(tmp_path), "--prompt", "hi", "--output", str(tmp_path / "no" / "o")])
    assert rc == 1 and "does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------- fsync


def _record_fsyncs(monkeypatch) -> list[tuple[str, str]]:
    """Events in order: ("fsync", path) for every os.fsync, ("rename", target) for every rename."""
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, Path.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(self, target):
        events.append(("rename", str(Path(target).resolve())))
        return real_rename(self, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "rename", rename)
    return events


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name file descriptors")
def test_published_folders_and_checkpoints_are_flushed_before_the_rename(tmp_path, monkeypatch):
    """Every file and folder of final/ (and of a checkpoint) is fsynced before the rename that
    publishes it, and the parent folder after it. Before: no fsync at all."""
    root = tmp_path.resolve()
    events = _record_fsyncs(monkeypatch)
    with atomic_dir(root / "final") as t:
        (t / "model.safetensors").write_bytes(b"w")
        (t / "sub").mkdir()
        (t / "sub" / "a.json").write_text("{}")
    tmp = str(t.resolve())
    i = events.index(("rename", str(root / "final")))
    before = {p for kind, p in events[:i] if kind == "fsync"}
    assert {f"{tmp}/model.safetensors", f"{tmp}/sub/a.json", f"{tmp}/sub", tmp} <= before
    assert ("fsync", str(root)) in events[i:]
    write_json_atomic(root / "summary.json", {"a": 1})
    assert events[-1] == ("fsync", str(root))  # the rename of summary.json reached the folder

    events.clear()
    tr, model, data = _toy(tmp_path)
    tr.save_checkpoint(1)
    ck = root / "toy" / "checkpoint-1"
    i = events.index(("rename", str(ck)))
    synced = {p for kind, p in events[:i] if kind == "fsync"}
    assert {f"{ck}.tmp/{n}" for n in ("trainable.safetensors", "optimizer.pt", "scheduler.pt",
                                      "rng_0.safetensors", "trainer_state.json")} <= synced
    assert ("fsync", str(root / "toy")) in events[i:]


def test_check_finite_is_exact_where_its_fast_sum_overflows():
    """The fast path sums the tensor; finite values whose sum overflows (3e38 x 10 in float32)
    must still pass, and one inf among them must still be found at its index."""
    from rlhf.train.guards import check_finite
    big = torch.full((10,), 3e38)
    check_finite(big, "big")
    big[7] = float("inf")
    with pytest.raises(NonFiniteError, match=r"big: 1 of 10 values are not finite \(first at index 7: inf\)"):
        check_finite(big, "big")


def test_publish_model_refuses_a_folder_with_nan_weights(tmp_path):
    """The rounds recipes copy an inner run's final/ to their own: a NaN there is not published
    and the existing final/ stays. Before: copied as is."""
    from safetensors.torch import save_file

    from rlhf.train.run import publish_model
    src, dst = tmp_path / "round-2" / "final", tmp_path / "final"
    src.mkdir(parents=True)
    dst.mkdir()
    save_file({"a": torch.zeros(3), "b": torch.tensor([0.0, float("nan")])}, str(src / "model.safetensors"))
    (dst / "model.safetensors").write_bytes(b"old")
    with pytest.raises(NonFiniteError, match=r"model.safetensors: tensor b: 1 of 2 values are not finite"):
        publish_model(src, dst)
    assert (dst / "model.safetensors").read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == \
        ["final", "round-2"]
