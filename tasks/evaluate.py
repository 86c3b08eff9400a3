"""Stage `evaluate`: the base, fine-tuned and pruned models side by side on the held-out split
(made once by token_clean, never trained on: an overlap with the training records is
refused), a fairness probe of each model (COMPAS questions; the group estimated from three
weak proxies, the true gap alongside), each model's numbers logged against its registered
version (MLflow logged-model metrics; the stage's run has the evaluated logged models as its
model inputs), and the gate that moves the registry alias `champion`.

Run as `python -m tasks.evaluate` (the cmd of its DVC stage).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from crediflow.data.schema import ID
from crediflow.errors import InputError
from crediflow.evaluate import (
    BASE,
    FINETUNED,
    PRUNED,
    Decision,
    EvaluateConfig,
    Scores,
    check_disjoint,
    decide,
    generation_speed,
    parameter_count,
    perplexity,
    prompts_of,
    size_on_disk,
)
from crediflow.fairness import FairnessConfig
from crediflow.fairness.probe import compas_probe, probe_fairness
from crediflow.finetune.config import FinetuneConfig
from crediflow.models.causal_lm import load_causal_lm, model_folder
from crediflow.models.precision import describe, detect_device, resolve_precision
from crediflow.models.sft import sft_from_table
from crediflow.models.token_loss import mean_label_loss
from crediflow.models.training import pad_id
from tasks.catalog import Catalog
from tasks.config import stage_config
from tasks.io import write_json
from tasks.lineage import mlflow_module
from tasks.plots import model_bars, model_table_csv
from tasks.stage import stage_main
from tasks.tracking import log_model_inputs, stage_run

log = logging.getLogger("crediflow.evaluate")
CHAMPION = "champion"
# the model each role's registered version is named in (the stage that registered it)
REGISTERED_BY = {FINETUNED: "finetune", PRUNED: "prune"}
BARS = (("perplexity", "held-out perplexity"), ("tokens_per_second", "generation tokens/s"),
        ("params_millions", "parameters (M)"), ("size_mb", "size on disk (MB)"),
        ("dp_calibrated", "DP gap, calibrated"), ("dp_true", "DP gap, true groups"))
NUMERIC = ("heldout_loss", "perplexity", "tokens_per_second", "speedup_vs_base", "params",
           "size_bytes", "yes_share", "dp_raw", "dp_calibrated", "dp_true", "eod_raw",
           "eod_calibrated", "eod_true")


def _file_md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def _registered(catalog: Catalog) -> dict[str, dict]:
    """The registered version of the fine-tuned and the pruned model, from their stages'
    reports."""
    out = {}
    for role, stage in REGISTERED_BY.items():
        path = catalog.reports(stage) / "metrics.json"
        if not path.is_file():
            raise InputError(f"no report of the {stage} stage: run it first", file=str(path))
        registered = json.loads(path.read_text()).get("registered")
        if not isinstance(registered, dict) or "version" not in registered:
            raise InputError(f"the {stage} stage's report names no registered model version",
                             file=str(path), field="registered")
        out[role] = registered
    return out


def _heldout(catalog: Catalog) -> tuple[Any, str]:
    """The held-out records, checked against every training record; and their file's md5."""
    path = catalog.path("heldout")
    heldout_table, train_table = catalog.read("heldout"), catalog.read("token_cleaned")
    heldout = sft_from_table(heldout_table)
    check_disjoint(heldout_table.column(ID).to_pylist(), heldout,
                   train_table.column(ID).to_pylist(), sft_from_table(train_table),
                   file=str(path))
    return heldout, _file_md5(path)


def run() -> dict:
    """Measure the three models, log them, and apply the promotion gate."""
    config = stage_config(EvaluateConfig)
    train_config = stage_config(FinetuneConfig)
    device = detect_device("cpu")
    precision = resolve_precision(config.precision, device, stage="evaluate")
    catalog = Catalog()
    registered = _registered(catalog)
    heldout, heldout_md5 = _heldout(catalog)
    folders = {BASE: model_folder(train_config.model),
               FINETUNED: Path(catalog.folder("finetuned")),
               PRUNED: Path(catalog.folder("pruned"))}
    models, tokenizers = {}, {}
    for role in (BASE, FINETUNED, PRUNED):
        source = train_config.model if role == BASE else str(folders[role])
        models[role], tokenizers[role] = load_causal_lm(source)
    tokenizer = tokenizers[BASE]
    rows: dict[str, dict[str, Any]] = {}
    for role, model in models.items():
        loss = mean_label_loss(model, heldout, batch_size=config.batch_size, precision=precision)
        size = size_on_disk(folders[role])
        params = parameter_count(model)
        rows[role] = {"heldout_loss": loss, "perplexity": perplexity(loss), "params": params,
                      "params_millions": params / 1e6, "size_bytes": size,
                      "size_mb": None if size is None else size / 2**20}
    speeds = generation_speed(models, prompts_of(heldout, config.prompts),
                              max_new_tokens=config.max_new_tokens, repeats=config.repeats,
                              pad_id=pad_id(tokenizer))
    for role, speed in speeds.items():
        rows[role] |= {"tokens_per_second": speed.tokens_per_second,
                       "generation_seconds": speed.seconds}
    for role in (FINETUNED, PRUNED):
        rows[role]["speedup_vs_base"] = (rows[role]["tokens_per_second"]
                                         / rows[BASE]["tokens_per_second"])
    fairness = _fairness(models, tokenizers, rows, config)
    decision = decide({r: Scores(v["perplexity"], v["tokens_per_second"], v.get("dp_calibrated"))
                       for r, v in rows.items()}, config)
    reports = catalog.reports("evaluate")
    model_bars(rows, BARS, reports / "models.png",
               title=f"Held-out split ({len(heldout)} records)")
    model_table_csv(rows, [key for key, _ in BARS], reports / "models.csv")
    promotion = _publish(registered, rows, decision, heldout_md5, reports / "models.png")
    metrics = {"models": rows, "fairness": fairness, "heldout_records": len(heldout),
               "heldout_md5": heldout_md5,
               "gate": {"passed": decision.passed, "reasons": decision.reasons,
                        "champion": decision.champion, **promotion},
               "resolved": describe(device, precision)}
    write_json(reports / "metrics.json", metrics)
    log.info("evaluate: perplexity base %.3f, fine-tuned %.3f, pruned %.3f; tokens/s %.1f, "
             "%.1f, %.1f; champion: %s", *(rows[r]["perplexity"] for r in rows),
             *(rows[r]["tokens_per_second"] for r in rows),
             decision.champion or f"unchanged ({'; '.join(decision.reasons.values())})")
    return metrics


def _fairness(models: dict[str, Any], tokenizers: dict[str, Any], rows: dict[str, dict],
              config: EvaluateConfig) -> dict:
    """The fairness probe on every model (COMPAS questions, groups known to the estimator
    only through three noised proxies): gaps into `rows`, the full estimates returned."""
    if config.fairness_rows == 0:
        return {}
    probe = compas_probe(config.fairness_rows, config.fairness_proxy_noise)
    # the report says when T cannot calibrate; the stage goes on with the raw estimate
    settings = FairnessConfig(on_singular="raw")
    out = {"rows": len(probe.labels), "proxy_noise": config.fairness_proxy_noise,
           "decision": config.fairness_decision, "groups": list(probe.group_names)}
    for role, model in models.items():
        decisions, estimate = probe_fairness(model, tokenizers[role], probe,
                                             rule=config.fairness_decision, config=settings,
                                             batch_size=config.batch_size)
        gaps = {f"{gap}_{kind}": value for kind, part in
                (("raw", estimate.raw), ("calibrated", estimate.calibrated),
                 ("true", estimate.true)) if part is not None
                for gap, value in part.to_dict().items() if gap in ("dp", "eod")}
        rows[role] |= {"yes_share": float(decisions.mean()), **gaps}
        out[role] = estimate.to_dict()
    return out


def _publish(registered: dict[str, dict], rows: dict[str, dict], decision: Decision,
             heldout_md5: str, chart: Path) -> dict:
    """Log each registered model's numbers against its version (logged-model metrics on the
    held-out dataset), record the evaluated logged models as the run's model inputs, tag the
    versions with the gate's verdict, move `champion`."""
    mlflow = mlflow_module()
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    client = mlflow.MlflowClient()
    heldout = MetaDataset(resolve_dataset_source(str(Catalog().path("heldout"))),
                          name="heldout", digest=heldout_md5)
    numeric = NUMERIC
    versions = {role: client.get_model_version(reg["name"], str(reg["version"]))
                for role, reg in registered.items()}
    model_ids = {role: reg.get("model_id") or versions[role].model_id
                 for role, reg in registered.items()}
    with stage_run("evaluate") as run:
        log_model_inputs(run.info.run_id, [m for m in model_ids.values() if m])
        mlflow.log_input(heldout, context="evaluation")
        mlflow.log_artifact(str(chart), artifact_path="evaluate")
        mlflow.log_metrics({f"{role}.{k}": float(v) for role, row in rows.items()
                            for k, v in row.items() if k in numeric and v is not None})
        for role, reg in registered.items():
            version = versions[role]
            values = {k: float(v) for k, v in rows[role].items() if k in numeric and v is not None}
            model_id = model_ids[role]
            if model_id:
                mlflow.log_metrics(values, run_id=run.info.run_id, model_id=model_id,
                                   dataset=heldout)
            for key, value in (("gate.passed", str(decision.passed.get(role, False)).lower()),
                               ("gate.reason", decision.reasons.get(role, "")),
                               ("evaluate.heldout_md5", heldout_md5)):
                client.set_model_version_tag(reg["name"], version.version, key, value)
    name = registered[decision.champion or FINETUNED]["name"]
    if decision.champion is not None:
        version = str(registered[decision.champion]["version"])
        client.set_registered_model_alias(name, CHAMPION, version)
        return {"registered_model": name, "champion_version": int(version), "changed": True}
    try:
        kept = client.get_model_version_by_alias(name, CHAMPION).version
    except Exception:  # noqa: BLE001 - MLflow raises its own error when the alias is unset
        kept = None
    return {"registered_model": name, "champion_version": None if kept is None else int(kept),
            "changed": False}


if __name__ == "__main__":
    stage_main(run)
