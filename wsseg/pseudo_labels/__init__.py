"""Pure tensor and array code for pseudo labels: PAMR, dense CRF, thresholds and the
self-supervised loss, the fusion of two models under the tag veto, and crop → tile masks.
Nothing here reads files or runs a training loop."""
