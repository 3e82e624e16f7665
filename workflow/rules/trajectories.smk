TRAJ_SET = "{tp}" + jobs.traj_path("{solver}", "{nfe}")


rule trajectories:
    conda:
        "../../envs/cmt.yaml"
    input:
        teacher=rules.teacher.output.model,
        data=DATA,
    output:
        index=result(TRAJ_SET, names.TRAJ_INDEX),
        shards=shard_files(f"{RESULTS}/{TRAJ_SET}"),
    params:
        cfg=trajectory_params,
        out=subpath(output.index, parent=True),
        teacher=subpath(input.teacher, parent=True),
    threads: threads_of("trajectories")
    priority: 10  # on the critical path to ECT-from-CMT: schedule before independent runs
    resources:
        **resources_of("trajectories"),
    log:
        f"{RESULTS}/logs/{TRAJ_SET}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{TRAJ_SET}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} python -m cmt trajectories --params {params.cfg:q}"
        " --teacher {params.teacher} --out {params.out} > {log} 2>&1"
