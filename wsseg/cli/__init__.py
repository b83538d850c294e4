"""Command line: `wsseg train | study | sweep | eval | check-data | publish | predict | export | weights | synth |
zoomout`
(`run_training.py` is `wsseg train`).

Exit codes: 0 done; 1 `wsseg check-data` found problems in the data; 2 bad input (a config, a file,
an option, a checkpoint), reported as one `error: ...` line naming it, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from wsseg.cli.data import _check_data, _synth, _weights
from wsseg.cli.parser import add_train_args, build_parser
from wsseg.cli.trained_models import _eval, _export, _predict, _publish
from wsseg.cli.training import _study, _sweep, _train, _zoomout
from wsseg.core.checkpoint import CheckpointError
from wsseg.core.run_lock import RunFolderInUse
from wsseg.datasets.base import DataProblemsError, printable

# Bad input, whichever subcommand meets it: ConfigError, DatasetError (DataProblemsError),
# PredictError and RasterError are ValueErrors, DownloadError a CheckpointError; OSError covers
# files that cannot be read or written; RunFolderInUse a second run in a folder in use, and a
# FloatingPointError (NonFiniteLoss) a loss that went NaN. Anything else is a bug and keeps its traceback.
KNOWN_ERRORS = (ValueError, OSError, ImportError, CheckpointError, RunFolderInUse, FloatingPointError)


def report_error(err: BaseException) -> int:
    """One `error: ...` line on stderr (several problems of the data each on a line of their own
    above it), ending with its fix where the error knows one (`DatasetError.fix`), and exit code 2."""
    if isinstance(err, DataProblemsError) and len(err.problems) > 1:
        for problem in err.problems:
            print(f"  {problem.line()}", file=sys.stderr)
        hint = f"; {err.hint}" if err.hint else ""
        print(f"error: {len(err.problems)} problems in the data, listed above{hint}", file=sys.stderr)
    else:
        fix = getattr(err, "fix", "")
        print(f"error: {printable(err)}{f'; fix: {fix}' if fix else ''}", file=sys.stderr)
    return 2


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_training.py", description=__doc__)
    add_train_args(parser)
    try:
        return _train(parser.parse_args(argv))
    except KNOWN_ERRORS as err:
        return report_error(err)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"train": _train, "study": _study, "sweep": _sweep, "eval": _eval, "check-data": _check_data,
               "publish": _publish, "synth": _synth, "predict": _predict, "export": _export,
               "weights": _weights, "zoomout": _zoomout}[args.command]
    try:
        from wsseg.core.progress import progress_enabled

        progress_enabled()  # a wrong $WSSEG_PROGRESS is one error line now, not a traceback mid-run
        return handler(args)
    except KNOWN_ERRORS as err:
        return report_error(err)
