MID_JOB = "{tp}" + jobs.mid_path("{variant}", "{solver}", "{nfe}", "{seed}")


rule midtrain:
    """CMT: one variant of the midtrain settings on one trajectory set and seed (cmt/workflow/jobs.py)."""
    conda:
        "../../envs/cmt.yaml"
    input:
        teacher=rules.teacher.output.model,
        featnet=FEATNET_INPUT,
        traj=stored_trajectories,
        data=midtrain_data,
    output:
        model=result(MID_JOB, names.WEIGHTS),
        record=result(MID_JOB, names.RECORD),
    params:
        cfg=midtrain_params,
        out=subpath(output.model, parent=True),
        work=f"{WORK}/{MID_JOB}",
        teacher=subpath(input.teacher, parent=True),
        traj=lambda wildcards, input: f"--traj {os.path.dirname(input.traj)}" if input.traj else "",
        featnet=lambda wildcards, input: shown_with(input),  # its scoring, decoding and loss inputs
    threads: threads_of("midtrain")
    priority: 10  # on the critical path to ECT-from-CMT: schedule before independent runs
    resources:
        **resources_of("midtrain"),
    log:
        f"{RESULTS}/logs/{MID_JOB}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{MID_JOB}.tsv"
    shell:
        f"{training('midtrain')}"
        " --teacher {params.teacher} {params.traj} {params.featnet}"
        " --out {params.out} --work {params.work} > {log} 2>&1"
