"""SAHM trainer: exact checkpoint resume, input checks, evaluation output, and a fixed-batch overfit."""

from __future__ import annotations

import json

import pytest
import torch

from comcoco.sahm.metrics import iou_scores, mask_intersection_union
from comcoco.sahm.synthetic import SyntheticRemovalDataset
from comcoco.sahm.text import train_tokenizer
from comcoco.sahm.train import Trainer, TrainError


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data_and_tokenizer(tmp_path_factory):
    ds = SyntheticRemovalDataset(16, 64, seed=0)
    tok = train_tokenizer(ds.expressions() * 4, tmp_path_factory.mktemp("tok"), vocab_size=200)
    return ds, tok


def _params(tr: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tr.generator.state_dict().items()}


def test_resume_equals_uninterrupted_run(tmp_path, data_and_tokenizer):
    ds, tok = data_and_tokenizer
    a = Trainer("tiny", tok, seed=3)
    batches = [a.collate([ds[i] for i in range(j * 2, j * 2 + 2)]) for j in range(3)]
    logs_a = [a.train_step(b) for b in batches]

    b = Trainer("tiny", tok, seed=3)
    for bt in batches[:2]:
        b.train_step(bt)
    ckpt = b.save(tmp_path / "ck" / "checkpoint.pt")
    c = Trainer.resume(ckpt, tok)
    assert c.step == 2
    log_c = c.train_step(batches[2])
    assert log_c["total"] == pytest.approx(logs_a[2]["total"], rel=1e-6, abs=1e-6)
    pa, pc = _params(a), _params(c)
    assert pa.keys() == pc.keys()
    worst = max(float((pa[k].float() - pc[k].float()).abs().max()) for k in pa)
    assert worst < 1e-6
    # and training really moved the weights
    fresh = _params(Trainer("tiny", tok, seed=3))
    assert max(float((pa[k].float() - fresh[k].float()).abs().max()) for k in pa) > 1e-4


def test_checkpoint_errors(tmp_path, data_and_tokenizer):
    _, tok = data_and_tokenizer
    with pytest.raises(TrainError, match="not found"):
        Trainer.resume(tmp_path / "none.pt", tok)
    bad = tmp_path / "bad.pt"
    torch.save({"hello": 1}, bad)
    with pytest.raises(TrainError, match="bad.pt"):
        Trainer.resume(bad, tok)
    old = tmp_path / "old.pt"  # a checkpoint from before a config field existed
    tr = Trainer("tiny", tok, seed=0)
    state = tr.state_dict()
    del state["config"]["lambda_dice"]
    torch.save(state, old)
    with pytest.raises(TrainError, match=r"old.pt: SAHM config lacks \['lambda_dice'\]"):
        Trainer.resume(old, tok)
    with pytest.raises(TrainError, match="lacks"):
        tr.load(old)


def test_collate_rejects_bad_items(data_and_tokenizer):
    ds, tok = data_and_tokenizer
    tr = Trainer("tiny", tok, seed=0)
    item = dict(ds[0])
    del item["mask"]
    with pytest.raises(TrainError, match="sample 0.*mask"):
        tr.collate([item])
    odd = dict(ds[0], image=torch.zeros(3, 50, 64))
    with pytest.raises(TrainError, match="multiple of 32"):
        tr.collate([odd])


def test_fit_logs_and_evaluate_reports(tmp_path, data_and_tokenizer):
    ds, tok = data_and_tokenizer
    tr = Trainer("tiny", tok, seed=1)
    log = tr.fit(ds, max_steps=2, batch_size=4, out_dir=tmp_path / "run")
    assert [r["step"] for r in log] == [1, 2]
    lines = (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    metrics = tr.evaluate(torch.utils.data.Subset(ds, range(4)), batch_size=2)
    assert 0.0 <= metrics["iou_mean"]["value"] <= 1.0 and metrics["ssim"]["n"] == 4
    assert metrics["fid"]["value"] is None
    assert 0.0 <= metrics["tagging_accuracy"]["value"] <= 1.0 and metrics["tagging_accuracy"]["n"] > 0


@pytest.mark.slow
def test_tiny_config_overfits_a_fixed_batch(data_and_tokenizer):
    ds, tok = data_and_tokenizer
    tr = Trainer("tiny", tok, seed=0)
    batch = tr.collate([ds[i] for i in range(4)])
    logs = [tr.train_step(batch) for _ in range(50)]
    g = tr.generator.eval()
    with torch.no_grad():
        out = g(batch["image"], batch["input_ids"], batch["attention_mask"], batch["tags"])
    inter, union = mask_intersection_union(out.mask_logits > 0, batch["mask"] > 0.5)
    iou = float(iou_scores(inter, union).mean())
    assert iou > 0.5, iou
    assert logs[-1]["rec"] < 0.7 * logs[0]["rec"], (logs[0]["rec"], logs[-1]["rec"])
    assert logs[-1]["seg"] < logs[0]["seg"] and logs[-1]["crf"] < logs[0]["crf"]
