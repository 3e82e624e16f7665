rule posttrain:
    conda:
        "../../envs/cmt.yaml"
    input:
        teacher=rules.teacher.output.model,
        featnet=rules.featnet.output.net,
        init=init_checkpoint,
    output:
        model=f"{RESULTS}/post/{{method}}-{{init}}/model.safetensors",
        record=f"{RESULTS}/post/{{method}}-{{init}}/run.json",
    params:
        cfg=posttrain_params,
        out=subpath(output.model, parent=True),
        work=f"{WORK}/post/{{method}}-{{init}}",
        teacher=subpath(input.teacher, parent=True),
        init_arg=init_arg,
    threads: 1
    resources:
        gpu=0,
        runtime=120,
        mem_mb=4000,
    log:
        f"{RESULTS}/logs/posttrain-{{method}}-{{init}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/posttrain-{{method}}-{{init}}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} ${{CMT_LAUNCH:-python}} -m cmt posttrain --params {params.cfg:q} --method {wildcards.method}"
        " --init {wildcards.init}"
        " {params.init_arg} --teacher {params.teacher} --featnet {input.featnet}"
        " --out {params.out} --work {params.work} > {log} 2>&1"
