MLFLOW_DB = f"{RESULTS}/mlflow.db"


rule ingest:
    """The single writer of the MLflow store: jobs only write run.json / metrics.jsonl files."""
    conda:
        "../../envs/cmt.yaml"
    localrule: True
    input:
        records=[rules.teacher.output.record, rules.featnet.output.record, rules.midtrain.output.record]
        + expand(f"{RESULTS}/post/{{model}}/run.json", model=POST_MODELS)
        + expand(f"{RESULTS}/eval/{{model}}/run.json", model=EVAL_MODELS),
    output:
        done=f"{RESULTS}/mlflow-ingested.json",
    params:
        db=MLFLOW_DB,
        experiment=config["name"],
        artifacts=f"{RESULTS}/mlartifacts",
    log:
        f"{RESULTS}/logs/ingest.log",
    shell:
        "MLFLOW_DISABLE_TELEMETRY=true ${{CMT_LAUNCH:-python}} -m cmt ingest {input.records} --db {params.db}"
        " --experiment {params.experiment} --artifacts {params.artifacts} --done {output.done} > {log} 2>&1"


rule report:
    conda:
        "../../envs/cmt.yaml"
    localrule: True
    input:
        rules.ingest.output.done,
    output:
        md=f"{RESULTS}/tables/main.md",
        csv=f"{RESULTS}/tables/main.csv",
        plot=f"{RESULTS}/tables/fd_vs_iterations.png",
    params:
        db=MLFLOW_DB,
        experiment=config["name"],
        out=subpath(output.md, parent=True),
    log:
        f"{RESULTS}/logs/report.log",
    shell:
        "MLFLOW_DISABLE_TELEMETRY=true ${{CMT_LAUNCH:-python}} -m cmt report --db {params.db} --experiment {params.experiment}"
        " --out {params.out} > {log} 2>&1"
