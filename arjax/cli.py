"""Command-line entry points: a user error (bad flag, config key, file, directory, class id) prints one
`error: ...` line to stderr and exits 2, without a traceback (ARJAX_TRACEBACK=1 shows it)."""
from __future__ import annotations

import argparse
import os
import sys

USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


def fail(message) -> None:
  """Prints `error: message` as one line to stderr and exits 2."""
  print("error: " + " ".join(str(message).split()), file=sys.stderr)
  sys.exit(2)


def describe(e: BaseException) -> str:
  """The informative message in an exception chain: libraries re-raise user errors wrapped in ones that hold a
  formatted traceback or the exception object itself, so the first message that is neither is used."""
  chain = [e]
  while (chain[-1].__cause__ or chain[-1].__context__) is not None:
    chain.append(chain[-1].__cause__ or chain[-1].__context__)
  for x in chain:
    text = x.args[0] if len(x.args) == 1 else str(x)
    if not isinstance(text, BaseException) and "Traceback" not in str(text):
      return str(text)
  return str(chain[-1])


def is_user_error(e: BaseException) -> bool:
  """ValueError / FileNotFoundError / KeyError, or an unreadable or missing checkpoint directory."""
  ckpt = sys.modules.get("arjax.train.checkpoint")  # loaded whenever a CheckpointError can have been raised
  return isinstance(e, USER_ERRORS + ((ckpt.CheckpointError,) if ckpt else ()))


def run_cli(main_fn, *args):
  """main_fn(*args), turning a user error into one `error: ...` line and exit status 2."""
  try:
    return main_fn(*args)
  except Exception as e:  # pylint: disable=broad-except
    if not is_user_error(e) or os.environ.get("ARJAX_TRACEBACK"):
      raise
    fail(describe(e))


def run_absl(main_fn):
  """absl's app.run(main_fn) with flag-parsing errors (unknown --config.key, missing config file) and user
  errors raised by main_fn reported as one `error: ...` line, exit status 2."""
  from absl import app, flags

  def parse(argv):
    try:
      args = flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError) as e:  # config_flags: an unknown --config.key is an AttributeError
      fail(f"bad --config override, {describe(e)}" if isinstance(e, (AttributeError, KeyError)) else describe(e))
    config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
    try:
      getattr(config, "keys", None)  # config_flags defers a failed config load to the first access
    except OSError as e:
      fail(describe(e.__cause__ or e))
    return args

  app.run(lambda argv: run_cli(main_fn, argv), flags_parser=parse)


class ArgumentParser(argparse.ArgumentParser):
  """argparse with its usage errors as one `error: ...` line (exit status 2, as argparse's own)."""

  def error(self, message):
    fail(f"{self.prog}: {message}")
