# The MLflow store has one writer at a time: ingest (main) -> report -> ingest (ablations) -> report_ablations.


rule ingest:
    """Job records of a scope (main: `all`; ablations: `all_ablations`) into the MLflow store."""
    localrule: True
    conda:
        "../../envs/cmt.yaml"
    input:
        records=ingest_records,
    output:
        done=f"{RESULTS}/mlflow-{{scope}}.json",
    params:
        records=lambda wildcards, input: [f for f in input.records if f.endswith(names.RECORD)],
        db=MLFLOW_DB,
        experiment=config["name"],
        artifacts=f"{RESULTS}/mlartifacts",
        root=lambda wildcards, output: os.path.dirname(output.done),
        groups=lambda wildcards: json.dumps(jobs.record_groups(config), sort_keys=True),
    log:
        f"{RESULTS}/logs/ingest-{{scope}}.log",
    shell:
        "MLFLOW_DISABLE_TELEMETRY=true python -m cmt ingest {params.records} --db {params.db}"
        " --experiment {params.experiment} --artifacts {params.artifacts} --root {params.root} --groups {params.groups:q}"
        " --done {output.done} > {log} 2>&1"


rule report:
    """The main comparison (`all`), from the MLflow store."""
    localrule: True
    conda:
        "../../envs/cmt.yaml"
    input:
        f"{RESULTS}/mlflow-main.json",
    output:
        md=f"{RESULTS}/tables/main.md",
        csv=f"{RESULTS}/tables/main.csv",
        plot=f"{RESULTS}/tables/fd_vs_iterations.png",
        cost=f"{RESULTS}/tables/score_vs_device_hours.png",
    params:
        db=MLFLOW_DB,
        experiment=config["name"],
        out=subpath(output.md, parent=True),
    log:
        f"{RESULTS}/logs/report.log",
    shell:
        "MLFLOW_DISABLE_TELEMETRY=true python -m cmt report --db {params.db}"
        " --experiment {params.experiment} --out {params.out} > {log} 2>&1"


rule report_ablations:
    """One table per paper ablation (`all_ablations`), mean +- std over seeds, from the MLflow store."""
    localrule: True
    conda:
        "../../envs/cmt.yaml"
    input:
        f"{RESULTS}/mlflow-ablations.json",
    output:
        tables=expand(f"{RESULTS}/tables/{{name}}.{{ext}}", name=jobs.ABLATION_TABLES, ext=("md", "csv")),
        plot=f"{RESULTS}/tables/fd_vs_images.png",
    params:
        db=MLFLOW_DB,
        experiment=config["name"],
        out=subpath(output.plot, parent=True),
    log:
        f"{RESULTS}/logs/report-ablations.log",
    shell:
        "MLFLOW_DISABLE_TELEMETRY=true python -m cmt report-ablations --db {params.db}"
        " --experiment {params.experiment} --out {params.out} > {log} 2>&1"


rule report_study:
    """A study target's tables (`study`, `study_extras`: config/study.yaml) in tables/<scope>/: the sweep tables its
    jobs feed, mean +- std over seeds, the plateau check, cost to quality and FD bands over seeds."""
    localrule: True
    conda:
        "../../envs/cmt.yaml"
    input:
        f"{RESULTS}/mlflow-{{scope}}.json",
    output:
        tables=directory(f"{RESULTS}/tables/{{scope}}"),
    params:
        db=MLFLOW_DB,
        experiment=config["name"],
        tables=lambda wildcards: ",".join(jobs.sweep_tables(config, wildcards.scope)),
        plateau=lambda wildcards: "{tail} {tolerance}".format(**config[wildcards.scope]["plateau"]),
        thresholds=lambda wildcards: " ".join(str(f) for f in config[wildcards.scope]["thresholds"]),
    wildcard_constraints:
        scope="|".join(jobs.STUDIES),  # report_ablations writes ablations
    log:
        f"{RESULTS}/logs/report-{{scope}}.log",
    shell:
        "(MLFLOW_DISABLE_TELEMETRY=true python -m cmt report-ablations --db {params.db} --experiment {params.experiment}"
        " --scope {wildcards.scope} --tables {params.tables} --out {output.tables}"
        " && MLFLOW_DISABLE_TELEMETRY=true python -m cmt report-study --db {params.db} --experiment {params.experiment}"
        " --scope {wildcards.scope} --plateau {params.plateau} --thresholds {params.thresholds} --out {output.tables})"
        " > {log} 2>&1"
