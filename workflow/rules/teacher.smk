TEACHER_JOB = "{tp}" + jobs.TEACHER
POST_TEACHER_JOB = "{tp}" + jobs.POST_TEACHER


rule teacher:
    """The config's teacher, or a teacher variant's (ablations.teachers) below its prefix t-<name>/."""
    conda:
        "../../envs/cmt.yaml"
    input:
        data=DATA,
    output:
        model=result(TEACHER_JOB, names.WEIGHTS),
        meta=result(TEACHER_JOB, names.META),
        record=result(TEACHER_JOB, names.RECORD),
    params:
        cfg=teacher_params(jobs.TEACHER),
        out=subpath(output.model, parent=True),
        work=f"{WORK}/{TEACHER_JOB}",
    threads: threads_of("teacher")
    resources:
        **resources_of("teacher"),
    log:
        f"{RESULTS}/logs/{TEACHER_JOB}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{TEACHER_JOB}.tsv"
    shell:
        f"{training('teacher')}"
        " --out {params.out} --work {params.work} > {log} 2>&1"


use rule teacher as post_teacher with:
    """The teacher post-training reads when posttrain.teacher sets one (ECD's autoguided teacher, docs/latent.md 8.2)."""
    output:
        model=result(POST_TEACHER_JOB, names.WEIGHTS),
        meta=result(POST_TEACHER_JOB, names.META),
        record=result(POST_TEACHER_JOB, names.RECORD),
    params:
        cfg=teacher_params(jobs.POST_TEACHER),
        out=subpath(output.model, parent=True),
        work=f"{WORK}/{POST_TEACHER_JOB}",
    log:
        f"{RESULTS}/logs/{POST_TEACHER_JOB}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{POST_TEACHER_JOB}.tsv"


rule featnet:
    conda:
        "../../envs/cmt.yaml"
    input:
        data=IMAGES,
    output:
        net=FEATNET,
        record=result(jobs.FEATNET, names.RECORD),
    params:
        cfg=subtree("featnet", "seed", "compute", data=IMAGE_DATA),
    threads: threads_of("featnet")
    resources:
        **resources_of("featnet"),
    log:
        f"{RESULTS}/logs/featnet.log",
    benchmark:
        f"{RESULTS}/benchmarks/featnet.tsv"
    shell:
        f"{training('featnet')}"
        " --out {output.net} > {log} 2>&1"
