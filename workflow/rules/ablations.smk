# The paper's ablations (config/ablations.yaml): CMT variants and trajectory sets, post-training
# method x init, budget splits; every job's axes are in its path, every (teacher, solver, NFE)
# trajectory set comes from the one `trajectories` rule and is shared.


rule ab_midtrain:
    conda:
        "../../envs/cmt.yaml"
    input:
        teacher=rules.teacher.output.model,
        featnet=rules.featnet.output.net,
        traj=ab_traj_input,
    output:
        model=f"{AB_ROOT}/mid/{{variant}}/{{tset}}/s{{seed}}/model.safetensors",
        record=f"{AB_ROOT}/mid/{{variant}}/{{tset}}/s{{seed}}/run.json",
    params:
        cfg=ab_midtrain_params,
        out=subpath(output.model, parent=True),
        work=f"{WORK}/ab/mid/{{variant}}/{{tset}}/s{{seed}}",
        teacher=subpath(input.teacher, parent=True),
        traj_arg=ab_traj_arg,
    threads: 1
    resources:
        gpu=0,
        runtime=120,
        mem_mb=4000,
    log:
        f"{AB_ROOT}/logs/mid-{{variant}}-{{tset}}-s{{seed}}.log",
    benchmark:
        f"{AB_ROOT}/benchmarks/mid-{{variant}}-{{tset}}-s{{seed}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} ${{CMT_LAUNCH:-python}} -m cmt midtrain --params {params.cfg:q}"
        " --teacher {params.teacher} {params.traj_arg} --featnet {input.featnet}"
        " --out {params.out} --work {params.work} > {log} 2>&1"


rule ab_posttrain:
    conda:
        "../../envs/cmt.yaml"
    input:
        teacher=rules.teacher.output.model,
        featnet=rules.featnet.output.net,
        init=ab_init_checkpoint,
    output:
        model=f"{AB_ROOT}/post/{{method}}-{{init}}/{{variant}}/it{{iters}}/s{{seed}}/model.safetensors",
        record=f"{AB_ROOT}/post/{{method}}-{{init}}/{{variant}}/it{{iters}}/s{{seed}}/run.json",
    params:
        cfg=ab_posttrain_params,
        out=subpath(output.model, parent=True),
        work=f"{WORK}/ab/post/{{method}}-{{init}}/{{variant}}/it{{iters}}/s{{seed}}",
        teacher=subpath(input.teacher, parent=True),
        init_arg=ab_init_arg,
    threads: 1
    resources:
        gpu=0,
        runtime=120,
        mem_mb=4000,
    log:
        f"{AB_ROOT}/logs/post-{{method}}-{{init}}-{{variant}}-it{{iters}}-s{{seed}}.log",
    benchmark:
        f"{AB_ROOT}/benchmarks/post-{{method}}-{{init}}-{{variant}}-it{{iters}}-s{{seed}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} ${{CMT_LAUNCH:-python}} -m cmt posttrain --params {params.cfg:q}"
        " --method {wildcards.method} --init {wildcards.init} {params.init_arg} --teacher {params.teacher}"
        " --featnet {input.featnet} --out {params.out} --work {params.work} > {log} 2>&1"


rule ab_evaluate:
    conda:
        "../../envs/cmt.yaml"
    input:
        model=f"{AB_ROOT}/{{path}}/model.safetensors",
        featnet=rules.featnet.output.net,
    output:
        scores=f"{AB_ROOT}/eval/{{path}}/scores.json",
        record=f"{AB_ROOT}/eval/{{path}}/run.json",
    params:
        cfg=subtree("evaluate", "precond", "data", "seed", "device", sample=config["teacher"]["sample"]),
        out=subpath(output.scores, parent=True),
        model=subpath(input.model, parent=True),
    threads: 1
    resources:
        gpu=0,
        runtime=30,
        mem_mb=4000,
    log:
        f"{AB_ROOT}/logs/eval-{{path}}.log",
    shell:
        "OMP_NUM_THREADS={threads} ${{CMT_LAUNCH:-python}} -m cmt evaluate --params {params.cfg:q}"
        " --model {params.model} --featnet {input.featnet} --label {wildcards.path:q} --out {params.out} > {log} 2>&1"


rule ab_ingest:
    """The ablation sweep's records into the MLflow store (serial, like `ingest`)."""
    localrule: True
    conda:
        "../../envs/cmt.yaml"
    input:
        records=ab_records,
    output:
        done=f"{AB_ROOT}/mlflow-ingested.json",
    params:
        db=MLFLOW_DB,
        experiment=config["name"],
        artifacts=f"{RESULTS}/mlartifacts",
        groups=lambda wildcards: json.dumps(record_tables(config, AB_ROOT), sort_keys=True),
    log:
        f"{AB_ROOT}/logs/ingest.log",
    shell:
        "MLFLOW_DISABLE_TELEMETRY=true ${{CMT_LAUNCH:-python}} -m cmt ingest {input.records} --db {params.db}"
        " --experiment {params.experiment} --artifacts {params.artifacts} --groups {params.groups:q}"
        " --done {output.done} > {log} 2>&1"


rule ab_report:
    localrule: True
    conda:
        "../../envs/cmt.yaml"
    input:
        rules.ab_ingest.output.done,
    output:
        tables=expand(f"{RESULTS}/tables/{{name}}.{{ext}}", name=AB_TABLES, ext=("md", "csv")),
        plot=f"{RESULTS}/tables/fd_vs_images.png",
    params:
        db=MLFLOW_DB,
        experiment=config["name"],
        out=subpath(output.plot, parent=True),
    log:
        f"{AB_ROOT}/logs/report.log",
    shell:
        "MLFLOW_DISABLE_TELEMETRY=true ${{CMT_LAUNCH:-python}} -m cmt report-ablations --db {params.db}"
        " --experiment {params.experiment} --out {params.out} > {log} 2>&1"
