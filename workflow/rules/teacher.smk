rule teacher:
    conda:
        "../../envs/cmt.yaml"
    input:
        data=DATA,
    output:
        model=result(jobs.TEACHER, jobs.WEIGHTS),
        meta=result(jobs.TEACHER, jobs.META),
        record=result(jobs.TEACHER, jobs.RECORD),
    params:
        cfg=subtree("teacher", "network", "precond", "data", "seed", *TRAINING, job=jobs.teacher_tags()),
        out=subpath(output.model, parent=True),
        work=f"{WORK}/{jobs.TEACHER}",
    threads: threads_of("teacher")
    resources:
        **resources_of("teacher"),
    log:
        f"{RESULTS}/logs/teacher.log",
    benchmark:
        f"{RESULTS}/benchmarks/teacher.tsv"
    shell:
        f"{training('teacher')}"
        " --out {params.out} --work {params.work} > {log} 2>&1"


rule featnet:
    conda:
        "../../envs/cmt.yaml"
    input:
        data=DATA,
    output:
        net=FEATNET,
        record=result(jobs.FEATNET, jobs.RECORD),
    params:
        cfg=subtree("featnet", "data", "seed", "compute"),
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
