# A regular package, not a namespace one: otherwise any installed top-level `benchmarks` package
# would win over this folder in `from benchmarks.common import ...`.
