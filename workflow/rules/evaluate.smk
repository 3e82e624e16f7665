rule fid_reference:
    """FID reference statistics of the full training set (or the published file of evaluate.fid.reference)."""
    conda:
        "../../envs/cmt.yaml"
    input:
        data=IMAGES,
    output:
        FID_REF,
    params:
        cfg=subtree(*DEVICE, data=IMAGE_DATA, evaluate={"fid": config["evaluate"]["fid"]}),
        work=f"{WORK}/fid-ref",
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    log:
        f"{RESULTS}/logs/fid-reference.log",
    shell:
        "OMP_NUM_THREADS={threads} python -m cmt fid-reference --params {params.cfg:q}"
        " --out {output} --work {params.work} > {log} 2>&1"


rule evaluate:
    """1- and 2-step sampling (the teacher: its own sampler), FD/KID/FID and grids of one trained job."""
    conda:
        "../../envs/cmt.yaml"
    input:
        model=result("{job}", names.WEIGHTS),
        featnet=FEATNET_INPUT,
        fid_ref=[FID_REF] if "fid" in config["evaluate"]["metrics"] else [],
        data=DATA,
    output:
        scores=result(jobs.eval_path("{job}"), "scores.json"),
        record=result(jobs.eval_path("{job}"), names.RECORD),
    params:
        cfg=subtree("evaluate", "precond", "data", "seed", *DEVICE, teacher={"sample": config["teacher"]["sample"]}),
        out=subpath(output.scores, parent=True),
        model=subpath(input.model, parent=True),
        scoring=lambda wildcards, input: f"{optional('featnet', input.featnet)} {optional('fid-ref', input.fid_ref)}",
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    log:
        f"{RESULTS}/logs/{jobs.eval_path('{job}')}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{jobs.eval_path('{job}')}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} python -m cmt evaluate --params {params.cfg:q}"
        " --model {params.model} {params.scoring} --label {wildcards.job:q} --out {params.out} > {log} 2>&1"


rule evaluate_teacher_alone:
    """The config's teacher sampled with another solver and step count (a sweep's teacher_samplers), or on the noise
    draws of a seed's FD curves (a study's paired reference): an evaluation-only job."""
    conda:
        "../../envs/cmt.yaml"
    input:
        model=result(jobs.TEACHER, names.WEIGHTS),
        featnet=FEATNET_INPUT,
        fid_ref=[FID_REF] if "fid" in config["evaluate"]["metrics"] else [],
        data=DATA,
    output:
        scores=result(jobs.eval_path("{teval}"), "scores.json"),
        record=result(jobs.eval_path("{teval}"), names.RECORD),
    params:
        cfg=teacher_evaluation_params,
        out=subpath(output.scores, parent=True),
        model=subpath(input.model, parent=True),
        scoring=lambda wildcards, input: f"{optional('featnet', input.featnet)} {optional('fid-ref', input.fid_ref)}",
    wildcard_constraints:
        teval=jobs.TEACHER_EVALUATION,
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    log:
        f"{RESULTS}/logs/{jobs.eval_path('{teval}')}.log",
    shell:
        "OMP_NUM_THREADS={threads} python -m cmt evaluate --params {params.cfg:q}"
        " --model {params.model} {params.scoring} --label {wildcards.teval:q} --out {params.out} > {log} 2>&1"
