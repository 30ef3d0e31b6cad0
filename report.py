"""Write the report page of a training run: report.html in its output directory (reporting.py says what it shows).

    python report.py output/demo                  # writes output/demo/report.html

train.py writes the page itself at the end of training and of --test-only; this script writes it for any run,
an older or an unfinished one included, saying on the page what that run did not record. A folder that is not a
run, or a metrics.jsonl line that is not a record, is one `error:` line and exit status 2.
"""

import argparse
import sys
from pathlib import Path

import reporting


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a training run's report.html (reporting.py)")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="train.py's --output-dir of a run")
    args = parser.parse_args(argv)
    try:
        path = reporting.write_report(Path(args.run_dir))
    except reporting.RecordsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {args.run_dir}: cannot write {reporting.REPORT_FILE} ({e.strerror or e})", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
