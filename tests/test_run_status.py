"""run_status reads a run folder's log, config and files, including a log cut short by a kill."""

from __future__ import annotations

import json

import numpy as np

from ebm_fast.run_status import cli_main, format_summaries, run_summary


def test_summary_of_a_run_folder(tmp_path, capsys):
    rng = np.random.default_rng()
    run = tmp_path / "pos32"
    (run / "samples").mkdir(parents=True)
    (run / "ckpt").mkdir()
    (run / "ckpt" / "last.pt").write_bytes(b"x")
    (run / "samples" / "neg_000200.png").write_bytes(b"x")
    (run / "samples" / "neg_000400.png").write_bytes(b"x")
    (run / "config.json").write_text(json.dumps({"iterations": 1000}))
    acc = rng.uniform(0, 1, 30)
    lines = [json.dumps({"step": 10 * (i + 1), "e_pos": -0.1, "e_neg": 0.2, "it_per_s": 2.0, "cond_acc": float(a),
                        "cond_loss": 0.5, "e_wrong": 0.25 + i})
             for i, a in enumerate(acc)]
    (run / "log.jsonl").write_text("\n".join(lines) + '\n{"step": 31')  # the last line was cut by a kill
    s = run_summary(run, window=10)
    assert s["step"] == 300 and s["iterations"] == 1000 and not s["finished"] and s["checkpoint"] and not s["model"]
    assert abs(s["cond_acc"] - acc[-10:].mean()) < 1e-12 and s["e_neg"] == 0.2 and s["it_per_s"] == 2.0
    assert s["cond_loss"] == 0.5 and s["e_wrong"] == 0.25 + 24.5
    assert s["last_samples"].endswith("neg_000400.png")
    assert "300/1000" in format_summaries([s])
    assert abs(s["neg_pinned"] - 0.4) < 1e-12  # alpha defaults to the loss's 1.0: 0.2 * 2 * 1.0
    assert "!" not in format_summaries([s]).splitlines()[2]

    (run / "log.jsonl").write_text("\n".join(lines) + "\n" + json.dumps({"final": True, "step": 300}) + "\n")
    assert run_summary(run)["finished"]
    assert cli_main([str(run), str(tmp_path / "missing")]) == 0
    assert "pos32" in capsys.readouterr().out
    assert cli_main([str(tmp_path / "missing")]) == 2


def test_negatives_at_the_regularisers_optimum_are_flagged(tmp_path):
    rng = np.random.default_rng()
    alpha = float(rng.uniform(0.05, 2.0))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"iterations": 100, "alpha": alpha}))
    e_neg = 1 / (2 * alpha) * rng.uniform(0.95, 1.0, 10)  # what the loss's optimum gives
    (run / "log.jsonl").write_text("\n".join(json.dumps({"step": i, "e_pos": -0.3, "e_neg": float(e)})
                                             for i, e in enumerate(e_neg)))
    s = run_summary(run)
    assert abs(s["neg_pinned"] - 2 * alpha * e_neg.mean()) < 1e-9 and s["neg_pinned"] > 0.9
    assert "!" in format_summaries([s]).splitlines()[2]
    (run / "config.json").write_text(json.dumps({"iterations": 100, "alpha": 0.0}))
    assert run_summary(run)["neg_pinned"] is None
