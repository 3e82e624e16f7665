rule trajectories:
    conda:
        "../../envs/cmt.yaml"
    input:
        teacher=rules.teacher.output.model,
    output:
        index=f"{RESULTS}/traj/{{solver}}-nfe{{nfe}}/index.json",
        shards=shard_files(f"{RESULTS}/traj/{{solver}}-nfe{{nfe}}"),
    params:
        cfg=trajectory_params,
        out=subpath(output.index, parent=True),
        teacher=subpath(input.teacher, parent=True),
    threads: 2
    priority: 10  # on the critical path to ECT-from-CMT: schedule before independent runs
    resources:
        gpu=0,
        runtime=60,
        mem_mb=4000,
    log:
        f"{RESULTS}/logs/trajectories-{{solver}}-nfe{{nfe}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/trajectories-{{solver}}-nfe{{nfe}}.tsv"
    shell:
        "${{CMT_LAUNCH:-python}} -m cmt trajectories --params {params.cfg:q} --teacher {params.teacher} --out {params.out} > {log} 2>&1"
