"""`make run` of the ci study on a model whose evaluation is constant on purpose: a random Llama with a zero
lm_head gives uniform next-token distributions whatever its layers are, so every calibration set and every
method scores the same (perplexity = vocabulary size, the same task answers, KL 0). The run must finish,
write its report and claim no difference anywhere."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import duckdb
import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("pipeline")]
REPO = Path(__file__).resolve().parents[1]


def _flat_llama(out: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from calib_assets.models.loading import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_make_run_finishes_and_reports_a_study_whose_scores_never_vary(tmp_path):
    study = yaml.safe_load((REPO / "studies" / "ci.yaml").read_text())
    study.update(name="ci-constant", description="The ci study on a model with a zero lm_head (constant scores).",
                 models=[{"kind": "local", "name": "flat-llama", "path": str(_flat_llama(tmp_path / "flat-llama"))}])
    study_file = tmp_path / "ci-constant.yaml"
    study_file.write_text(yaml.safe_dump(study))
    root = tmp_path / "artifacts"
    completed = subprocess.run(
        ["make", "--no-print-directory", "run", f"STUDY={study_file}", f"CALIB_ASSETS_ROOT={root}",
         f"DAGSTER_HOME={tmp_path / 'dagster_home'}"],
        cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "MAKEFLAGS": ""})
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    assert (root / "report" / "index.html").is_file() and "Report:" in completed.stdout

    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as connection:
        vocabulary = connection.sql("select distinct value from eval_results where metric = 'perplexity' "
                                    "and eval_dataset like '%heldout'").fetchall()
        spread = connection.sql("select * from mart_spread").df()
        decomposition = connection.sql("select * from mart_variance").df()
        headline = connection.sql("select * from mart_averages").df()
        statuses = {row[0] for row in connection.sql("select distinct status from dbt_build_results").fetchall()}
    assert len(vocabulary) == 1  # uniform predictions: the same perplexity for every checkpoint
    assert statuses == {"success", "pass"}
    assert not spread["sets_differ"].any() and (spread["range_value"] == 0).all()
    assert (decomposition["ss_total"] == 0).all() and decomposition["between_share"].isna().all()
    assert headline["best_calib"].isna().all()
    assert re.search(r"no difference\s+no difference", completed.stdout)
