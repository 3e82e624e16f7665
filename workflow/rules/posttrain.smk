POST_JOB = "{tp}" + jobs.POST_PATH


rule posttrain:
    """ECT, ECD or MeanFlow from random, diffusion or CMT weights (cmt/workflow/jobs.py)."""
    conda:
        "../../envs/cmt.yaml"
    input:
        teacher=post_teacher_model,
        featnet=FEATNET_INPUT,
        init=init_model,
        data=DATA,
    output:
        model=result(POST_JOB, names.WEIGHTS),
        record=result(POST_JOB, names.RECORD),
    params:
        cfg=posttrain_params,
        out=subpath(output.model, parent=True),
        work=f"{WORK}/{POST_JOB}",
        teacher=subpath(input.teacher, parent=True),
        init=lambda wildcards, input: f"--init-dir {os.path.dirname(input.init)}" if input.init else "",
        featnet=lambda wildcards, input: optional("featnet", input.featnet),
    threads: threads_of("posttrain")
    resources:
        **resources_of("posttrain"),
    log:
        f"{RESULTS}/logs/{POST_JOB}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{POST_JOB}.tsv"
    shell:
        f"{training('posttrain')}"
        " --method {wildcards.method} --init {wildcards.init} {params.init} --teacher {params.teacher}"
        " {params.featnet} --out {params.out} --work {params.work} > {log} 2>&1"
