rule gradient_bias:
    """ECT's expected gradient against the oracle objective's on Gaussian data, from three inits (config section
    gradient_bias; cmt/stages/gradient_bias.py)."""
    conda:
        "../../envs/cmt.yaml"
    output:
        record=result(jobs.EXPERIMENTS["gradient_bias"], names.RECORD),
        table=result(jobs.EXPERIMENTS["gradient_bias"], "gradient_bias.csv"),
    params:
        cfg=subtree("gradient_bias", "network", "precond", "seed", posttrain={"ect": config["posttrain"]["ect"]},
                    teacher={"train": config["teacher"]["train"]}),
        out=subpath(output.record, parent=True),
    threads: threads_of("posttrain")
    resources:
        **resources_of("posttrain"),
    log:
        f"{RESULTS}/logs/gradient-bias.log",
    shell:
        "OMP_NUM_THREADS={threads} python -m cmt gradient-bias --params {params.cfg:q} --out {params.out} > {log} 2>&1"


MEANFLOW_INIT, MEANFLOW_POST = jobs.meanflow_lineage(config)  # the jobs the meanflow_targets experiment reads


rule meanflow_targets:
    """MeanFlow targets of the flow-map CMT student and of MeanFlow from it (the main run's seed) against the
    teacher's trajectories (config section meanflow_targets; cmt/stages/meanflow_targets.py)."""
    conda:
        "../../envs/cmt.yaml"
    input:
        teacher=result(jobs.TEACHER, names.WEIGHTS),
        traj=result(jobs.traj_path(*jobs.default_set(config)), names.TRAJ_INDEX),
        init=result(MEANFLOW_INIT, names.WEIGHTS),
        post=result(MEANFLOW_POST, names.WEIGHTS),
    output:
        record=result(jobs.EXPERIMENTS["meanflow_targets"], names.RECORD),
        table=result(jobs.EXPERIMENTS["meanflow_targets"], "meanflow_targets.csv"),
    params:
        cfg=subtree("meanflow_targets", *DEVICE),
        out=subpath(output.record, parent=True),
        teacher=subpath(input.teacher, parent=True),
        traj=subpath(input.traj, parent=True),
        init=subpath(input.init, parent=True),
        post=subpath(input.post, parent=True),
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    log:
        f"{RESULTS}/logs/meanflow-targets.log",
    shell:
        "OMP_NUM_THREADS={threads} python -m cmt meanflow-targets --params {params.cfg:q} --teacher {params.teacher}"
        " --traj {params.traj} --models cmt-flowmap={params.init:q} meanflow-from-cmt={params.post:q}"
        " --out {params.out} > {log} 2>&1"


rule publish_findings:
    """A study target's tables and plots, its experiments' too, copied into docs/findings/<name>/<scope>/ with the
    commits its job records name, for docs/findings.md (cmt/report/findings.py)."""
    localrule: True
    input:
        tables=f"{RESULTS}/tables/{{scope}}",
        experiments=lambda wildcards: [
            result(path, names.RECORD) for path in jobs.experiment_paths(config, wildcards.scope)
        ],
    output:
        directory(f"docs/findings/{config['name']}/{{scope}}"),
    params:
        experiments=lambda wildcards, input: [os.path.dirname(record) for record in input.experiments],
        records=lambda wildcards: jobs.record_folders(config, wildcards.scope),
        results=lambda wildcards, input: os.path.dirname(os.path.dirname(input.tables)),  # results/<name>
    wildcard_constraints:
        scope="|".join(jobs.STUDIES),
    conda:
        "../../envs/cmt.yaml"
    log:
        f"{RESULTS}/logs/findings-{{scope}}.log",
    shell:
        "python -m cmt findings {input.tables} --experiments {params.experiments} --results {params.results}"
        " --records {params.records} --out {output} > {log} 2>&1"


rule findings:
    """Both study targets published into docs/findings/<name>/<scope>/ (naming that folder publishes one)."""
    input:
        expand(rules.publish_findings.output, scope=jobs.STUDIES),
