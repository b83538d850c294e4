"""The stages and chains of wsseg: what the command line runs.

    data          the dataset, its split and crop tags → a `Run` every stage takes
    segmenter     train, fine-tune, evaluate and load a segmenter (tasks i and ii)
    weak          train the single-stage weakly supervised model on crop tags (task ii)
    pseudo_masks  the single-stage model (and task i's segmenter) → N2 pseudo masks (task ii)
    chain         task i / ii / all, with `done.json` per finished stage
    seeds         task i vs ii over split seeds, mean ± std
    study         the arms asked (i, semi, ii, oracle) over split seeds, at one precision: study.json/.md

Only the command line imports this package; everything here builds on `core`, `models`,
`pseudo_labels` and `datasets` below it.
"""
