rule fid_reference:
    """FID reference statistics of the full training set (or the published file of evaluate.fid.reference)."""
    conda:
        "../../envs/cmt.yaml"
    input:
        data=IMAGES,
    output:
        REFERENCE_STATS["fid"],
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


rule fd_dinov2_reference:
    """FD_DINOv2 reference statistics of the full training set (or the published file of evaluate.fd_dinov2.reference)."""
    conda:
        "../../envs/cmt.yaml"
    input:
        data=IMAGES,
    output:
        REFERENCE_STATS["fd_dinov2"],
    params:
        cfg=subtree(*DEVICE, data=IMAGE_DATA, evaluate={"fd_dinov2": config["evaluate"]["fd_dinov2"]}),
        work=f"{WORK}/fd-dinov2-ref",
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    log:
        f"{RESULTS}/logs/fd-dinov2-reference.log",
    shell:
        "OMP_NUM_THREADS={threads} python -m cmt fid-reference --metric fd_dinov2 --params {params.cfg:q}"
        " --out {output} --work {params.work} > {log} 2>&1"


rule evaluate:
    """1- and 2-step sampling (the teacher: its own sampler), FD/KID and the detectors' distances (FID, FD_DINOv2) over
    the seed ranges, and grids of one trained job."""
    conda:
        "../../envs/cmt.yaml"
    input:
        model=result("{job}", names.WEIGHTS),
        featnet=FEATNET_INPUT,
        references=list(SCORED_REFERENCES.values()),
        data=DATA,
    output:
        scores=result(jobs.eval_path("{job}"), "scores.json"),
        record=result(jobs.eval_path("{job}"), names.RECORD),
    params:
        cfg=subtree("evaluate", "precond", "data", "seed", *DEVICE, teacher={"sample": config["teacher"]["sample"]}),
        out=subpath(output.scores, parent=True),
        model=subpath(input.model, parent=True),
        scoring=scoring,
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
        references=list(SCORED_REFERENCES.values()),
        data=DATA,
    output:
        scores=result(jobs.eval_path("{teval}"), "scores.json"),
        record=result(jobs.eval_path("{teval}"), names.RECORD),
    params:
        cfg=teacher_evaluation_params,
        out=subpath(output.scores, parent=True),
        model=subpath(input.model, parent=True),
        scoring=scoring,
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
