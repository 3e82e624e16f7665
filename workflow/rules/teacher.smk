rule teacher:
    conda:
        "../../envs/cmt.yaml"
    input:
        data=DATA,
    output:
        model=result(jobs.TEACHER, "model.safetensors"),
        meta=result(jobs.TEACHER, "meta.json"),
        record=result(jobs.TEACHER, "run.json"),
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
        record=result(jobs.FEATNET, "run.json"),
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
