"""The stages and chains of wsseg: what the command line runs.

    config             the run configuration's schema (dataclasses); config_files: YAML, overrides, retired keys
    data               the dataset, its split and crop tags → a `Run` every stage takes
    config_checks      the config against itself, the dataset and its weights files, before training
    data_check         `wsseg check-data`: every problem of a dataset, reported
    segmenter          train and fine-tune a segmenter (tasks i and ii, semi, oracle)
    evaluation         score a segmenter on the test tiles with the full report; load one
    weak               train the single-stage weakly supervised model on crop tags (task ii)
    pseudo_masks       calibration → `MaskPlan` → N2 pseudo masks (task ii); pseudo_inference
                       predicts their crops, pseudo_quality measures them
    chain              the stages of task i / semi / ii / oracle, with `done.json` per finished stage
    tasks              one task or one zoom-out step in a run folder (`wsseg train`, `wsseg zoomout`)
    seeds              task i vs ii over split seeds, mean ± std
    study              the arms asked (i, semi, ii, oracle) over split seeds, at one precision: study.json/.md
    comparison_report  the arms compared on one split; seed_reports: over split seeds and studies
    sweep              `wsseg sweep` (planned by sweep_plan)
    predict            `wsseg predict` (its options and inputs checked by predict_plan)
    release, publish   trained models loaded from anywhere; written as release folders

Only the command line imports this package; everything here builds on `core`, `models`,
`pseudo_labels` and `datasets` below it.
"""
