"""The real HH-RLHF harmless-base test split (../shared/data, see its README)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rlhf.data import DataConfig, encode_records, load_records

HH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
needs_hh = pytest.mark.skipif(not HH.is_file(), reason=f"real HH-RLHF data not found at {HH} "
                              "(it lives beside the project, in ../shared/data; a fresh clone has none)")


@needs_hh
def test_hh_pairs_and_skips_add_up_to_every_line():
    recs, report = load_records(DataConfig(train=str(HH)), "preference")
    assert len(recs) + report.skipped_rows == 2312 == report.rows_read
    assert all(r.prompt.endswith("\n\nAssistant:") for r in recs)
    assert all(r.chosen.strip() and r.rejected.strip() for r in recs)

    # Independent check of the skipped rows: read the file naively and find the rows whose
    # dialogues, after the last "\n\nAssistant:" they share, leave a blank reply.
    lines = gzip.open(HH, "rt").read().splitlines()
    blank = []
    for n, line in enumerate(lines, 1):
        d = json.loads(line)
        c, r = d["chosen"], d["rejected"]
        k = 0
        while k < min(len(c), len(r)) and c[k] == r[k]:
            k += 1
        cut = c[:k].rfind("\n\nAssistant:") + len("\n\nAssistant:")
        if not c[cut:].strip() or not r[cut:].strip():
            blank.append(n)
    assert report.counts == {"empty completion": len(blank)}
    assert [row for _, row in report.examples["empty completion"]] == blank[:5]
    # every kept pair re-assembles into the original dialogues
    by_row = {r.origin[1]: r for r in recs}
    for n in (1, 500, 2312):
        d = json.loads(lines[n - 1])
        assert by_row[n].prompt + by_row[n].chosen == d["chosen"]
        assert by_row[n].prompt + by_row[n].rejected == d["rejected"]


@needs_hh
def test_hh_tokenizes_with_an_exact_boundary(make_tok):
    """Every HH pair encodes (unknown words map to <unk>) with completion masks that start
    exactly after the shared prompt tokens."""
    recs, _ = load_records(DataConfig(train=str(HH), max_samples=200), "preference")
    cfg = DataConfig(max_length=64)
    out = encode_records(recs, make_tok(), cfg)
    assert len(out) == 200
    for e in out:
        for side in ("chosen", "rejected"):
            ids, mask = e[f"{side}_input_ids"], e[f"{side}_completion_mask"]
            n_prompt = mask.index(1)
            assert len(ids) <= 64 and mask[0] == 0 and all(mask[n_prompt:])
        assert e["chosen_input_ids"][:e["chosen_completion_mask"].index(1)] == \
            e["rejected_input_ids"][:e["rejected_completion_mask"].index(1)]
